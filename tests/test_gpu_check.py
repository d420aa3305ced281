"""The lent-GPU script (issue 32, item 2) at smoke on the CPU: what CI can run of it on every change."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from crossholder import gpu_check, paths

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tmp_results(tmp_path, monkeypatch):
    monkeypatch.setenv("CROSSHOLDER_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("CROSSHOLDER_FIGURES", str(tmp_path / "figures"))
    monkeypatch.setenv("CROSSHOLDER_SCRATCH", str(tmp_path / "scratch"))
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))
    # the registered models (their checkpoints are named relative to the checkout)
    (tmp_path / "results").mkdir()
    shutil.copy(ROOT / "results" / "models.json", tmp_path / "results" / "models.json")
    return tmp_path


def test_the_script_runs_at_smoke_on_cpu(tmp_results, capsys):
    """`make gpu-check DEVICE=cpu`: every computing notebook at smoke, each unit, the agreement; one report."""
    gpu_check.main(["--device", "cpu"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    summary = json.loads(last)                                   # the last line is the JSON summary
    assert summary["ok"] and summary["scale"] == "smoke"
    path = tmp_results / "results" / "variants" / "smoke" / "gpu" / "cpu.json"   # ignored, never committed
    report = json.loads(path.read_text())
    assert [r["name"] for r in report["notebooks"]] == list(gpu_check.NOTEBOOKS)
    assert all(r["ok"] and r["seconds"] > 0 for r in report["notebooks"])
    assert report["device"]["torch"] and report["device"]["device"] == "cpu"
    units = report["units"]
    assert units["train_epoch"]["epochs_done"] == 1 and units["train_epoch"]["examples"] == 512
    assert units["strongest"]["images_done"] == gpu_check.SCALES["smoke"]["eval_n"]
    assert units["hv_star"]["images"] == 64 and units["hv_star"]["median_norm"] > 0
    # the CPU against itself: the same code path, so exactly equal
    agree = report["agreement"]
    assert agree["logits"]["max_abs_diff"] == 0 and agree["hvp"]["max_abs_diff"] == 0
    assert agree["pgd"]["outcomes_differ"] == 0 and agree["pgd"]["fooled_cpu"] > 0
    assert report["provenance"]["file"].endswith("gpu/cpu.json")
    # the units ran in a temporary folder: nothing of them is cached or registered here
    assert not list((tmp_results / "results").glob("mnist/models/*.pt"))
    assert paths.results_dir() == tmp_results / "results"


def test_an_unusable_device_or_scale_fails_clearly(tmp_results):
    if not __import__("torch").cuda.is_available():
        with pytest.raises(SystemExit, match="device='cuda'.*sees no CUDA GPU"):
            gpu_check.main(["--device", "cuda", "--no-notebooks"])
    with pytest.raises(ValueError, match="scale='huge'"):
        gpu_check.measure_units("cpu", "huge")
    with pytest.raises(ValueError, match="budget_s=0"):
        gpu_check.measure_units("cpu", "smoke", budget_s=0)
    assert [p.name for p in (tmp_results / "results").iterdir()] == ["models.json"], "nothing written"
