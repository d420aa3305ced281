"""Tables read the results folder the environment names (``CROSSHOLDER_RESULTS``), never a fixed path."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from crossholder import paths, reports


@pytest.fixture(scope="module")
def committed():
    return {name: fn() for name, fn in reports.TABLES.items()}


@pytest.mark.parametrize("name", sorted(reports.TABLES))
def test_every_table_reads_the_results_folder_of_the_environment(name, committed, tmp_path, monkeypatch):
    """With CROSSHOLDER_RESULTS at an empty folder no table may show the committed numbers."""
    monkeypatch.setenv("CROSSHOLDER_RESULTS", str(tmp_path / "empty"))
    (tmp_path / "empty").mkdir()
    try:
        out = reports.TABLES[name]()
    except (FileNotFoundError, KeyError, ValueError):
        return
    assert out != committed[name], f"{name} rendered the committed results from an empty results folder"


def test_an_edited_copy_is_what_the_tables_show(tmp_path, monkeypatch):
    copy = tmp_path / "results"
    shutil.copytree(paths.results_dir(), copy, ignore=shutil.ignore_patterns("*.pt", "scratch", "variants"))
    curve = pd.read_csv(copy / "mnist" / "robustness.csv")
    row = (curve["defense"] == "cross_holder") & (curve["attack"] == "strongest") & (curve["eps"] == 5.0)
    assert row.sum() == 1
    before = reports.robustness_table()
    curve.loc[row, "accuracy"] = 0.123
    curve.to_csv(copy / "mnist" / "robustness.csv", index=False)
    monkeypatch.setenv("CROSSHOLDER_RESULTS", str(copy))
    after = reports.robustness_table()
    assert "12.3 (" in after and "12.3 (" not in before


def test_an_explicit_project_root_is_read_instead(tmp_path, monkeypatch):
    """The analysis notebooks' results_root: <root>/results, whatever CROSSHOLDER_RESULTS says."""
    copy = tmp_path / "proj" / "results" / "mnist"
    copy.mkdir(parents=True)
    curve = pd.read_csv(paths.results_dir() / "mnist" / "robustness.csv")
    curve.loc[(curve["defense"] == "none") & (curve["attack"] == "strongest") & (curve["eps"] == 2.0),
              "accuracy"] = 0.456
    curve.to_csv(copy / "robustness.csv", index=False)
    monkeypatch.setenv("CROSSHOLDER_RESULTS", str(tmp_path / "elsewhere"))
    table = reports.robustness_table(tmp_path / "proj")
    assert "| MNIST | none |" in table and "45.6 (" in table
