"""Where things live (crossholder.paths): the environment overrides and their temporary form."""

from __future__ import annotations

import os

from crossholder import paths


def test_environment_sets_and_restores(tmp_path, monkeypatch):
    monkeypatch.setenv("CROSSHOLDER_RESULTS", "/somewhere")
    monkeypatch.delenv("CROSSHOLDER_SCRATCH", raising=False)
    with paths.environment(CROSSHOLDER_RESULTS=tmp_path / "r", CROSSHOLDER_SCRATCH=tmp_path / "s"):
        assert paths.results_dir() == tmp_path / "r" and paths.scratch_dir() == tmp_path / "s"
    assert os.environ["CROSSHOLDER_RESULTS"] == "/somewhere" and "CROSSHOLDER_SCRATCH" not in os.environ
    try:
        with paths.environment(CROSSHOLDER_RESULTS=None):
            assert "CROSSHOLDER_RESULTS" not in os.environ
            raise RuntimeError("inside")
    except RuntimeError:
        pass
    assert os.environ["CROSSHOLDER_RESULTS"] == "/somewhere", "restored after an exception too"


def test_results_honour_the_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("CROSSHOLDER_ROOT", str(tmp_path))
    monkeypatch.delenv("CROSSHOLDER_RESULTS", raising=False)
    assert paths.results_dir() == tmp_path / "results"
    monkeypatch.setenv("CROSSHOLDER_RESULTS", str(tmp_path / "elsewhere"))
    assert paths.results_dir() == tmp_path / "elsewhere"
