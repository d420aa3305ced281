"""Every notebook: parameter names (papermill.inspect_notebook), a clean smoke run, a bad value fails clearly.

The smoke runs execute the computing path of each notebook at the ``smoke`` profile into a
temporary results directory, so the committed results are never touched. nbval (run by
`make test` on the executed, committed notebooks) checks the other half: that the committed
outputs are reproduced from the committed results.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import papermill as pm
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
COMMON = {"profile", "device", "seed"}
EXPECTED = {
    "01_hessian_norm_estimation": COMMON | {"method", "iters", "step", "lanczos_iters", "exact_n", "n_images"},
    "02_training": COMMON | {"dataset", "defense", "lam1", "lam2", "eps", "epochs", "mode", "classes", "compiled"},
    "03_hyperparameter_selection": COMMON | {"dataset", "grid"},
    "04_robustness": COMMON | {"dataset", "protocol", "n_examples", "steps", "restarts", "eps_max", "eps_step", "sanity_n",
                                "autoattack_n"},
}
MAKES_FIGURES = {"01_hessian_norm_estimation", "02_training", "04_robustness"}
BAD = {  # one bad value per notebook, and the message it must produce
    "01_hessian_norm_estimation": ({"method": "newton"}, "method='newton'"),
    "02_training": ({"defense": "dropout"}, "defense='dropout'"),
    "03_hyperparameter_selection": ({"dataset": "svhn"}, "dataset='svhn'"),
    "04_robustness": ({"dataset": "cifar10"}, "dataset='cifar10'"),
}


def test_every_notebook_is_known():
    assert {p.stem for p in NOTEBOOKS} <= set(EXPECTED), "add the new notebook to EXPECTED and BAD"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameter_names(nb):
    params = pm.inspect_notebook(str(nb))
    assert set(params) == EXPECTED[nb.stem]
    for name, spec in params.items():
        assert spec["help"], f"parameter {name} needs a comment"


@pytest.fixture
def smoke_env(tmp_path, monkeypatch):
    monkeypatch.setenv("CROSSHOLDER_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("CROSSHOLDER_FIGURES", str(tmp_path / "figures"))
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))
    return tmp_path


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_smoke_run(nb, smoke_env):
    out = smoke_env / nb.name
    pm.execute_notebook(str(nb), str(out), parameters={"profile": "smoke"}, kernel_name="crossholder",
                        cwd=str(smoke_env), progress_bar=False)
    assert any((smoke_env / "results").rglob("*.csv")), "every notebook writes results"
    if nb.stem in MAKES_FIGURES:
        assert any((smoke_env / "figures").glob("*.png")) and any((smoke_env / "figures").glob("*.pdf"))
    assert not any((ROOT / "results").rglob(f"*{smoke_env.name}*"))


def test_smoke_run_of_the_strongest_protocol(smoke_env):
    """Notebook 04 with protocol="strongest" (APGD, FAB, the AutoAttack agreement, the masking table)."""
    nb = ROOT / "notebooks" / "04_robustness.ipynb"
    pm.execute_notebook(str(nb), str(smoke_env / nb.name), parameters={"profile": "smoke", "protocol": "strongest"},
                        kernel_name="crossholder", cwd=str(smoke_env), progress_bar=False)
    rob = smoke_env / "results" / "mnist" / "robustness"
    assert any(rob.glob("agreement-*.csv")) and any(rob.glob("masking-*.csv"))
    assert (smoke_env / "results" / "mnist" / "paired.csv").exists()
    curves = pd.read_csv(smoke_env / "results" / "mnist" / "robustness.csv")
    assert {"strongest", "apgd-ce", "apgd-t", "fab"} <= set(curves["attack"])


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_bad_parameter_fails_clearly(nb, smoke_env):
    params, message = BAD[nb.stem]
    with pytest.raises(pm.PapermillExecutionError) as err:
        pm.execute_notebook(str(nb), str(smoke_env / nb.name), parameters={"profile": "smoke", **params},
                            kernel_name="crossholder", cwd=str(smoke_env), progress_bar=False)
    assert message in str(err.value)


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_unknown_or_mistyped_parameter_fails_before_any_work(nb, smoke_env):
    """Issue 18, item 5: papermill only warns on an unknown -p name; the notebook itself must fail, naming it
    and listing its parameters, before it computes or writes anything; a value of the wrong type likewise."""
    for params, message in (({"sed": 3}, "unknown parameter 'sed'; this notebook's parameters: "),
                            ({"seed": "three"}, "parameter seed='three' is a str; expected int")):
        with pytest.raises(pm.PapermillExecutionError) as err:
            pm.execute_notebook(str(nb), str(smoke_env / nb.name), parameters={"profile": "smoke", **params},
                                kernel_name="crossholder", cwd=str(smoke_env), progress_bar=False)
        assert message in str(err.value)
        assert not (smoke_env / "results").exists() or not any((smoke_env / "results").rglob("*.*")), \
            "nothing may be computed or written"


def test_readme_tables_match_committed_results():
    """README.md's result tables are generated from results/ (tools/readme_tables.py), never typed."""
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("readme_tables", root / "tools" / "readme_tables.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    readme = (root / "README.md").read_text()
    assert mod.render(readme) == readme, "README.md is stale: run .venv/bin/python tools/readme_tables.py"
