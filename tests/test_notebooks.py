"""Every notebook: parameter names (papermill.inspect_notebook), a clean smoke run, a bad value fails clearly.

The smoke runs execute the computing path of each notebook at the ``smoke`` profile into a
temporary results directory, so the committed results are never touched. nbval (run by
`make test` on the executed, committed notebooks) checks the other half: that the committed
outputs are reproduced from the committed results.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pandas as pd
import papermill as pm
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
COMMON = {"profile", "device", "seed", "progress"}
EXPECTED = {
    "01_hessian_norm_estimation": COMMON | {"method", "iters", "step", "lanczos_iters", "exact_n", "n_images"},
    "02_training": COMMON | {"dataset", "defense", "lam1", "lam2", "eps", "epochs", "mode", "classes", "compiled"},
    "03_hyperparameter_selection": COMMON | {"dataset", "grid", "address"},
    "04_robustness": COMMON | {"dataset", "protocol", "n_examples", "steps", "restarts", "eps_max", "eps_step", "sanity_n",
                                "autoattack_n"},
    # analysis notebooks: they compute nothing, only show tables generated from results/ (crossholder.reports)
    "05_fast_cross_holder": {"results_root"},
    "06_runner_up_or_all_classes": {"results_root"},
    "07_results_in_detail": {"results_root"},
    "08_seeds": {"results_root"},
    "09_curvature_regularizers": {"results_root"},
    "10_theorem_2": {"results_root"},
}
ANALYSES = {name for name, params in EXPECTED.items() if params == {"results_root"}}
COMPUTING = [p for p in NOTEBOOKS if p.stem not in ANALYSES]
MAKES_FIGURES = {"01_hessian_norm_estimation", "02_training", "04_robustness"}
BAD = {  # one bad value per notebook, and the message it must produce
    "01_hessian_norm_estimation": ({"method": "newton"}, "method='newton'"),
    "02_training": ({"defense": "dropout"}, "defense='dropout'"),
    "03_hyperparameter_selection": ({"dataset": "svhn"}, "dataset='svhn'"),
    "04_robustness": ({"dataset": "cifar10"}, "dataset='cifar10'"),
    **{name: ({"profile": "smoke"}, "unknown parameter 'profile'") for name in ("05_fast_cross_holder",
                                                                                "06_runner_up_or_all_classes",
                                                                                "07_results_in_detail", "08_seeds",
                                                                                "09_curvature_regularizers",
                                                                                "10_theorem_2")},
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


@pytest.mark.parametrize("nb", COMPUTING, ids=lambda p: p.stem)
def test_smoke_run(nb, smoke_env):
    out = smoke_env / nb.name
    pm.execute_notebook(str(nb), str(out), parameters={"profile": "smoke", "progress": False},
                        kernel_name="crossholder",
                        cwd=str(smoke_env), progress_bar=False)
    assert any((smoke_env / "results").rglob("*.csv")), "every notebook writes results"
    if nb.stem in MAKES_FIGURES:  # a smoke run is a variant: its figures go to figures/variants/smoke/
        figs = smoke_env / "figures" / "variants" / "smoke"
        assert any(figs.glob("*.png")) and any(figs.glob("*.pdf"))
        assert not any((smoke_env / "figures").glob("*.png")), "a variant never draws the canonical figures"
    assert not any((ROOT / "results").rglob(f"*{smoke_env.name}*"))
    if nb.stem == "04_robustness":   # the default protocol, "strongest": APGD, FAB, AutoAttack agreement, masking
        rob = smoke_env / "results" / "variants" / "smoke" / "mnist" / "robustness"   # the smoke profile's caches
        assert any(rob.glob("agreement-*.csv")) and any(rob.glob("masking-*.csv"))
        summaries = smoke_env / "results" / "variants" / "smoke" / "mnist"
        assert (summaries / "paired.csv").exists()
        curves = pd.read_csv(summaries / "robustness.csv")
        assert {"strongest", "apgd-ce", "apgd-t", "fab", "fab-t"} <= set(curves["attack"])


def test_smoke_run_of_the_legacy_protocol(smoke_env):
    """Notebook 04 with protocol="paper-v1" (the paper's PGD alone at Madry et al.'s step, AutoAttack
    beside it); the default protocol, "strongest", is what test_smoke_run executes."""
    nb = ROOT / "notebooks" / "04_robustness.ipynb"
    pm.execute_notebook(str(nb), str(smoke_env / nb.name),
                        parameters={"profile": "smoke", "protocol": "paper-v1", "progress": False},
                        kernel_name="crossholder", cwd=str(smoke_env), progress_bar=False)
    rob = smoke_env / "results" / "variants" / "smoke" / "mnist" / "robustness"
    assert any(rob.glob("autoattack-*.csv")) and not any(rob.glob("masking-*.csv"))
    summaries = smoke_env / "results" / "variants" / "smoke-protocol=paper-v1" / "mnist"
    curves = pd.read_csv(summaries / "robustness.csv")
    assert set(curves["attack"]) == {"pgd-ce", "pgd-cw", "worst-min", "worst-per-example"}


def test_zero_is_a_value_the_training_notebook_runs_with(smoke_env):
    """Issue 32, item 2: `-p lam2 0` printed {'mode': 'fast'} and reused the λ2 = 0.5 checkpoint."""
    nb = ROOT / "notebooks" / "02_training.ipynb"
    pm.execute_notebook(str(nb), str(smoke_env / nb.name), parameters={"profile": "smoke", "lam2": 0, "progress": False},
                        kernel_name="crossholder", cwd=str(smoke_env), progress_bar=False)
    cache = smoke_env / "results" / "variants" / "smoke" / "mnist"       # store.cache_dir("smoke")
    sides = list((cache / "models").glob("cross_holder-*.json"))
    assert len(sides) == 1
    import json
    rec = json.loads(sides[0].read_text())
    assert rec["hyperparameters"]["lam2"] == 0.0, "the run asked for: lam2 = 0"
    log = pd.read_csv(cache / "training" / f"cross_holder-{rec['run_id']}.csv")
    assert (log["hess_term"] == 0).all()


@pytest.mark.parametrize("name", ["01_hessian_norm_estimation", "02_training"])
def test_a_smoke_run_in_the_checkout_leaves_the_tree_unchanged(name, tmp_path, monkeypatch, git_status):
    """Issue 32, item 5: notebook 02 at smoke put its checkpoint and log in results/mnist/models/ and
    training/, notebook 01 its tables in results/mnist/hessian/, untracked beside the committed caches.
    Here nothing is redirected (the user's setting): the smoke profile's caches and summaries go to
    results/variants/smoke/ (store.cache_dir) and its figures to figures/variants/smoke/, both ignored."""
    for var in ("CROSSHOLDER_RESULTS", "CROSSHOLDER_FIGURES", "CROSSHOLDER_ROOT", "CROSSHOLDER_SCRATCH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))
    before = git_status()
    nb = ROOT / "notebooks" / f"{name}.ipynb"
    pm.execute_notebook(str(nb), str(tmp_path / nb.name), parameters={"profile": "smoke", "progress": False},
                        kernel_name="crossholder", cwd=str(ROOT / "notebooks"), progress_bar=False)
    assert git_status() == before
    cache = ROOT / "results" / "variants" / "smoke" / "mnist"
    assert any(cache.rglob("*.csv")), "the smoke run wrote its caches under results/variants/smoke/"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_bad_parameter_fails_clearly(nb, smoke_env):
    params, message = BAD[nb.stem]
    base = {} if nb.stem in ANALYSES else {"profile": "smoke"}
    with pytest.raises(pm.PapermillExecutionError) as err:
        pm.execute_notebook(str(nb), str(smoke_env / nb.name), parameters={**base, **params},
                            kernel_name="crossholder", cwd=str(smoke_env), progress_bar=False)
    assert message in str(err.value)


@pytest.mark.parametrize("nb", COMPUTING, ids=lambda p: p.stem)
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
    """README.md's result tables are generated from results/ (crossholder.reports), never typed."""
    from crossholder import reports

    readme = (ROOT / "README.md").read_text()
    assert reports.render(readme) == readme, "README.md is stale: run .venv/bin/python -m crossholder.reports"
    assert len(readme.encode()) <= 18_000, "the README is the front door: at most 18 KB (analyses go to notebooks)"


# ---------------------------------------------------------------- sources, parameters, variants (issue 20)
def _parameters_cell(script: Path) -> dict:
    """The literal defaults of the tagged parameters cell of a paired py:percent script."""
    import ast

    import jupytext

    cell = next(c for c in jupytext.read(script).cells if "parameters" in c.metadata.get("tags", []))
    return {n.target.id: ast.literal_eval(n.value) for n in ast.parse(cell.source).body
            if isinstance(n, ast.AnnAssign)}


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_matches_its_paired_script(nb):
    """notebooks/NN_*.py (jupytext py:percent) is the source: the committed .ipynb's cells must be its
    cells (`jupytext --sync` after editing either outside JupyterLab), and the pairing is declared."""
    import jupytext
    import nbformat

    script = nb.with_suffix(".py")
    assert script.exists(), f"{script.name} is missing: jupytext --set-formats ipynb,py:percent {nb}"
    ipynb = nbformat.read(nb, as_version=4)
    assert ipynb.metadata.get("jupytext", {}).get("formats") == "ipynb,py:percent"
    cells = [(c.cell_type, c.source, c.metadata.get("tags") or []) for c in ipynb.cells]
    source = [(c.cell_type, c.source, c.metadata.get("tags") or []) for c in jupytext.read(script).cells]
    assert cells == source, f"{nb.name} differs from {script.name}: run `.venv/bin/jupytext --sync {script}`"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_source_notebook_has_no_injected_parameters_and_stable_ids(nb):
    """Issue 20, item 1: a value changed in the tagged parameters cell in JupyterLab must take effect, so a
    committed source notebook carries no papermill `injected-parameters` cell (executed parameter sets live
    in notebooks/runs/); cell ids are the stable ones `notebooks.strip` writes."""
    import nbformat

    ipynb = nbformat.read(nb, as_version=4)
    assert not [c for c in ipynb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert sum("parameters" in c.metadata.get("tags", []) for c in ipynb.cells) == 1
    assert [c.get("id") for c in ipynb.cells] == [f"cell-{i}" for i in range(len(ipynb.cells))]


@pytest.mark.parametrize("nb", [p for p in COMPUTING if p.stem != "02_training"], ids=lambda p: p.stem)
def test_canonical_run_is_the_parameters_cell(nb):
    """notebooks.CANONICAL (what the committed results stand on) equals the defaults in the notebook,
    so only a changed value makes a run a variant; a changed value always does."""
    from crossholder import notebooks

    defaults = _parameters_cell(nb.with_suffix(".py"))
    canon = notebooks.CANONICAL[nb.stem]
    assert defaults["profile"] == "cpu"
    assert {k: v for k, v in defaults.items() if k not in notebooks.NEUTRAL and k != "profile"} == canon
    assert notebooks.variant(nb.stem, defaults) == ""
    assert notebooks.variant(nb.stem, {**defaults, "profile": "smoke"}) == "smoke"
    assert notebooks.variant(nb.stem, {**defaults, "seed": 7}) == "cpu-seed=7"
    assert notebooks.variant(nb.stem, {**defaults, "device": "cuda", "progress": False}) == ""


def _digests(*folders: Path) -> dict[str, str]:
    import hashlib

    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for f in folders for p in sorted(f.rglob("*"))
            if p.is_file()}


def test_exploring_never_clobbers_committed_results(tmp_path, monkeypatch):
    """Issue 20, item 2: notebook 02 at `smoke` against a copy of the committed results and figures leaves
    every committed file byte-identical (its registration, figure and summaries go to the smoke variant),
    and notebook 04 at `cpu` still runs on the committed models afterwards, rewriting the same bytes."""
    import shutil

    results, figures = tmp_path / "results", tmp_path / "figures"
    shutil.copytree(ROOT / "results", results, ignore=shutil.ignore_patterns("partial", "scratch", ".make"))
    shutil.copytree(ROOT / "figures", figures)
    monkeypatch.setenv("CROSSHOLDER_RESULTS", str(results))
    monkeypatch.setenv("CROSSHOLDER_FIGURES", str(figures))
    monkeypatch.setenv("CROSSHOLDER_SCRATCH", str(tmp_path / "scratch"))
    before = _digests(results, figures)
    nb = ROOT / "notebooks" / "02_training.ipynb"
    pm.execute_notebook(str(nb), str(tmp_path / "02.ipynb"), parameters={"profile": "smoke", "progress": False},
                        kernel_name="crossholder", cwd=str(tmp_path), progress_bar=False)
    after = _digests(results, figures)
    changed = sorted(k for k, v in before.items() if after.get(k) != v)
    assert not changed, f"a smoke run changed committed files: {changed}"
    assert (results / "variants" / "smoke" / "models.json").exists()
    assert (figures / "variants" / "smoke" / "training_mnist_cross_holder.png").exists()
    nb4 = ROOT / "notebooks" / "04_robustness.ipynb"
    pm.execute_notebook(str(nb4), str(tmp_path / "04.ipynb"), parameters={"progress": False},
                        kernel_name="crossholder", cwd=str(tmp_path), progress_bar=False)
    after4 = _digests(results, figures)
    changed = sorted(k for k, v in before.items() if after4.get(k) != v)
    assert not changed, f"re-running notebook 04 on unchanged results changed files: {changed}"


def test_verdicts_gain_the_seed_column_and_agreement_names_mixed_sweeps(tmp_path):
    """The verdict table gains "k of m" seeds (strongest rows of claims-seeds.csv) once a seed study
    exists, and no column before; the agreement table names the sweep's code version only when the
    models' versions differ."""
    import json

    import pandas as pd

    from crossholder import reports

    ds = tmp_path / "results" / "mnist"
    (ds / "robustness").mkdir(parents=True)
    pd.DataFrame([{"claim": "M6", "statement": "Worst case: A above B", "attack": "strongest", "evidence": "",
                   "supported": True, "beyond_ci": True}]).to_csv(ds / "claims.csv", index=False)
    assert reports.verdicts_table(tmp_path).splitlines()[0] == "| claim | the paper says | the paper's PGD | strongest |"
    pd.DataFrame([
        {"claim": "M6", "statement": "Worst case: A above B", "attack": "worst-per-example", "seeds": 3,
         "supported_in": 3, "clear_for_in": 3, "clear_against_in": 0, "per_seed": "0: yes*, 1: yes*, 2: yes*"},
        {"claim": "M6", "statement": "Worst case: A above B", "attack": "strongest", "seeds": 3,
         "supported_in": 2, "clear_for_in": 1, "clear_against_in": 0, "per_seed": "0: yes*, 1: no, 2: yes"},
    ]).to_csv(ds / "claims-seeds.csv", index=False)
    v = reports.verdicts_table(tmp_path).splitlines()
    assert v[0] == "| claim | the paper says | the paper's PGD | strongest | holds in (seeds) |"
    assert v[2] == "| M6 | Worst case: A above B | not evaluated | **yes**, beyond CIs | 2 of 3 |"
    assert v[3] == "| Fashion-MNIST | not evaluated yet | | | |"

    (tmp_path / "results" / "models.json").write_text(json.dumps(
        {"mnist/cross_holder": {"run_id": "aaa"}, "mnist/adversarial": {"run_id": "bbb"}}))
    for name, defense, rid, code in (("agreement-1", "cross_holder", "aaa", 3), ("agreement-2", "adversarial", "bbb", 3)):
        pd.DataFrame([{"defense": defense, "eps": 5.0, "n": 200, "robust": 90, "missed": 3}]).to_csv(
            ds / "robustness" / f"{name}.csv", index=False)
        (ds / "robustness" / f"{name}.json").write_text(json.dumps(
            {"profile": "cpu", "params": {"code": code, "n": 200, "models": {defense: rid}}}))
    a = reports.agreement_table(tmp_path).splitlines()
    assert a[0] == "| data set | defense | n | ε = 5 |"
    assert a[2] == "| MNIST | Cross-Hölder | 200 | **90 / 3** |"
    (ds / "robustness" / "agreement-2.json").write_text(json.dumps(
        {"profile": "cpu", "params": {"code": 2, "n": 200, "models": {"adversarial": "bbb"}}}))
    a = reports.agreement_table(tmp_path).splitlines()
    assert a[0] == "| data set | defense | n | sweep | ε = 5 |"
    assert a[2:4] == ["| MNIST | Cross-Hölder | 200 | v3 | **90 / 3** |",
                      "| MNIST | PGD adversarial training | 200 | v2 | **90 / 3** |"]


def test_verdicts_and_paired_tables_put_the_two_protocols_side_by_side(tmp_path):
    """The README's verdict table has one row per claim with the paper's PGD and strongest side by side;
    the paired table prints Δ = A − B in points and the McNemar p-value from paired.csv."""
    import pandas as pd

    from crossholder import reports

    ds = tmp_path / "results" / "mnist"
    ds.mkdir(parents=True)
    pd.DataFrame([
        {"claim": "M6", "statement": "Worst case: A above B", "attack": "worst-min", "evidence": "", "supported": True, "beyond_ci": True},
        {"claim": "M6", "statement": "Worst case: A above B", "attack": "worst-per-example", "evidence": "", "supported": True, "beyond_ci": False},
        {"claim": "M6", "statement": "Worst case: A above B", "attack": "strongest", "evidence": "", "supported": False, "beyond_ci": True},
        {"claim": "M1", "statement": "PGD-CE: |x| ok", "attack": "pgd-ce", "evidence": "", "supported": None, "beyond_ci": None},
    ]).to_csv(ds / "claims.csv", index=False)
    pd.DataFrame([
        {"dataset": "mnist", "a": "cross_holder", "b": "cross_lipschitz", "attack": "worst-per-example", "eps": 5.0,
         "n": 200, "a_robust": 150, "b_robust": 120, "only_a": 40, "only_b": 10, "p_value": 0.0001},
        {"dataset": "mnist", "a": "cross_holder", "b": "cross_lipschitz", "attack": "strongest", "eps": 5.0,
         "n": 200, "a_robust": 100, "b_robust": 101, "only_a": 5, "only_b": 6, "p_value": 1.0},
    ]).to_csv(ds / "paired.csv", index=False)
    v = reports.verdicts_table(tmp_path).splitlines()
    assert v[2] == "| M6 | Worst case: A above B | **yes**, within CIs | **no**, beyond CIs |"
    assert v[3] == "| M1 | PGD-CE: \\|x\\| ok | not evaluated | not evaluated |"   # strongest ran, not for M1
    assert v[4].startswith("| Fashion-MNIST | not evaluated yet")
    legacy = pd.read_csv(ds / "claims.csv")
    legacy[legacy["attack"] != "strongest"].to_csv(ds / "claims.csv", index=False)
    assert reports.verdicts_table(tmp_path).splitlines()[2].endswith("| **yes**, within CIs | not run yet |")
    p = reports.paired_table(tmp_path).splitlines()
    assert p[0] == "| data set | Cross-Hölder vs | judged on | n | ε = 5 |"
    assert p[2:4] == ["| MNIST | Cross-Lipschitz | the paper's PGD | 200 | +15.0 (< 0.001) |",
                      "| MNIST | Cross-Lipschitz | strongest | 200 | -0.5 (1.00) |"]
    assert p[4].startswith("| Fashion-MNIST | not evaluated yet")
    assert reports.paired_strongest_table(tmp_path).splitlines()[2] == "| MNIST | Cross-Lipschitz | strongest | 200 | -0.5 (1.00) |"
    with pytest.raises(ValueError, match="judged_on=.*'pgd-ce'"):
        reports.paired_table(tmp_path, judged_on=("pgd-ce",))


def test_masking_table_reads_the_newest_table_of_each_registered_model(tmp_path):
    import json

    import pandas as pd

    from crossholder import reports

    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "models.json").write_text(json.dumps({"mnist/cross_holder": {"run_id": "aaa"}}))
    rob = tmp_path / "results" / "mnist" / "robustness"
    rob.mkdir(parents=True)

    def table(name, code, rid, square):
        rows = [("pgd-ce", 40, 0, 0), ("pgd-cw", 41, 0, 0), ("strongest", 50, 8, 0), ("square", *square)]
        pd.DataFrame([{"defense": "cross_holder", "attack": a, "eps_index": 10, "n": 200, "fooled": f,
                       "beyond_pgd": bp, "beyond_strongest": bs} for a, f, bp, bs in rows]).to_csv(rob / f"{name}.csv", index=False)
        (rob / f"{name}.json").write_text(json.dumps({"profile": "cpu", "params": {"code": code, "eps": 5.0,
                                                                                   "models": {"cross_holder": rid}}}))

    table("masking-old", "2", "aaa", (30, 0, 0))
    table("masking-new", "3", "aaa", (30, 2, 0))
    table("masking-other", "9", "zzz", (30, 0, 5))          # not the registered model
    lines = reports.masking_table(tmp_path).splitlines()
    assert len(lines) == 3
    assert lines[2] == ("| MNIST | Cross-Hölder | 5 | 200 | 42 | – / – / – / – / 8 | 30 (2, 0) | "
                        "PGD's gradients partly blind: Square fools 2 PGD misses (the other gradient attacks find them) |")
    table("masking-newest", "4", "aaa", (30, 3, 1))
    assert reports.masking_table(tmp_path).splitlines()[2].endswith(
        "| 30 (3, 1) | **masking**: Square fools 1 that no gradient attack does |")
    table("masking-newest", "4", "aaa", (30, 0, 0))
    assert reports.masking_table(tmp_path).splitlines()[2].endswith(
        "no sign of masking: Square finds nothing beyond PGD; the stronger attacks fool 4.0% more of the images |")


def test_seed_checks_table_finds_each_seed_models_newest_check(tmp_path):
    """Every model of seeds.json gets its newest cpu-profile AutoAttack agreement (highest code version,
    then largest n, then the last file name) and its Square column; a model no table checked says so
    instead of borrowing a row; bold marks more than 1% of n missed and any Square find beyond strongest."""
    import json

    import pandas as pd

    from crossholder import reports

    rob = tmp_path / "results" / "mnist" / "robustness"
    rob.mkdir(parents=True)
    (tmp_path / "results" / "mnist" / "seeds.json").write_text(json.dumps({"params": {"models": {
        "cross_holder/0": "aaa", "cross_holder/1": "bbb", "none/1": "ccc", "new_defense/0": "ddd"}}}))

    def agreement(name, defense, rid, code, n, rows, profile="cpu"):
        pd.DataFrame([{"defense": defense, "eps": e, "n": n, "robust": r, "missed": m}
                      for e, r, m in rows]).to_csv(rob / f"{name}.csv", index=False)
        (rob / f"{name}.json").write_text(json.dumps({"profile": profile, "params": {
            "code": code, "n": n, "models": {defense: rid}}}))

    def masking(name, rid, beyond_pgd, beyond_strongest):
        pd.DataFrame([{"defense": "cross_holder", "attack": "square", "eps_index": 10, "n": 100, "fooled": 30,
                       "beyond_pgd": beyond_pgd, "beyond_strongest": beyond_strongest}]).to_csv(
            rob / f"{name}.csv", index=False)
        (rob / f"{name}.json").write_text(json.dumps({"profile": "cpu", "params": {
            "code": 3, "eps": 5.0, "models": {"cross_holder": rid}}}))

    agreement("agreement-1", "cross_holder", "aaa", 3, 200, [(5.0, 90, 3)])
    agreement("agreement-2", "cross_holder", "bbb", 3, 100, [(5.0, 50, 1), (6.0, 20, 0)])   # 1 of 100: not bold
    agreement("agreement-3", "cross_holder", "bbb", 2, 200, [(5.0, 99, 9), (6.0, 40, 9)])   # an older sweep
    agreement("agreement-4", "cross_holder", "bbb", 3, 50, [(5.0, 25, 7), (6.0, 10, 7)])    # fewer images
    agreement("agreement-5", "none", "ccc", 3, 100, [(5.0, 10, 0)], profile="smoke")        # another profile
    masking("masking-1", "bbb", 2, 0)
    table = reports.seed_checks_table(tmp_path).splitlines()
    assert table == [
        "| data set | defense | seed | n | ε = 5 | ε = 6 | Square beyond strongest |",
        "|---|---|---|---|---|---|---|",
        "| MNIST | none | 1 |  | not checked |  | not run |",
        "| MNIST | Cross-Hölder | 0 | 200 | **90 / 3** |  | not run |",
        "| MNIST | Cross-Hölder | 1 | 100 | 50 / 1 | 20 / 0 | 0 of 100 at ε = 5 |",
        "| Fashion-MNIST | not computed yet (`make seeds`) | | | | | |",
    ]
    masking("masking-2", "bbb", 2, 1)                                                        # Square finds more
    assert reports.seed_checks_table(tmp_path).splitlines()[4].endswith("| **1 of 100 at ε = 5** |")
    for f in rob.glob("agreement-*"):
        f.unlink()
    assert reports.seed_checks_table(tmp_path).startswith("(no model of the seed study checked by AutoAttack yet")


def test_robustness_table_says_what_each_row_is_judged_on(tmp_path):
    import pandas as pd

    from crossholder import reports

    ds = tmp_path / "results" / "mnist"
    ds.mkdir(parents=True)
    rows = [{"defense": "cross_holder", "attack": a, "eps": e, "n": 1000, "accuracy": acc}
            for e in reports.HEADLINE_EPS for a, acc in (("strongest", 0.5), ("worst-per-example", 0.6),
                                                          ("worst-min", 0.7))]
    pd.DataFrame(rows).to_csv(ds / "robustness.csv", index=False)
    lines = reports.robustness_table(tmp_path).splitlines()
    assert lines[2] == "| MNIST | Cross-Hölder | 1000 | strongest (PGD) | " + " | ".join(["50.0 (60.0)"] * 5) + " |"
    pd.DataFrame([r for r in rows if r["attack"] != "strongest"]).to_csv(ds / "robustness.csv", index=False)
    assert reports.robustness_table(tmp_path).splitlines()[2] == \
        "| MNIST | Cross-Hölder | 1000 | PGD per example (worst-min) | " + " | ".join(["60.0 (70.0)"] * 5) + " |"


def test_every_committed_notebook_is_executed_and_checked():
    """Issue 33, item 7 (nbval #81): a cleared checked cell must fail, never be skipped."""
    from crossholder import notebooks

    committed = NOTEBOOKS + sorted((ROOT / "notebooks" / "runs").glob("*.ipynb"))
    assert len(committed) >= 17
    assert {str(p): notebooks.unchecked(p) for p in committed if notebooks.unchecked(p)} == {}


def test_a_cleared_checked_cell_fails_the_notebook_list(tmp_path):
    import json
    import sys

    nb = json.loads((ROOT / "notebooks" / "07_results_in_detail.ipynb").read_text())
    checked = [c for c in nb["cells"] if "NBVAL_CHECK_OUTPUT" in "".join(c.get("source", []))]
    checked[-1]["outputs"], checked[-1]["execution_count"] = [], None
    bad = tmp_path / "07_results_in_detail.ipynb"
    bad.write_text(json.dumps(nb))
    out = subprocess.run([sys.executable, "-m", "crossholder.notebooks", "executed", str(bad)],
                         capture_output=True, text=True)
    assert out.returncode == 1 and "was never executed (a checked cell: NBVAL_CHECK_OUTPUT)" in out.stderr


def test_strip_coalesces_a_split_stream(tmp_path):
    """Issue 32, item 3: a printed table whose last newline arrived as a separate stream output."""
    import json

    from crossholder import notebooks

    src = ROOT / "notebooks" / "03_hyperparameter_selection.ipynb"
    nb = json.loads(src.read_text())
    cell = next(c for c in nb["cells"] if any(o.get("output_type") == "stream" for o in c.get("outputs", [])))
    i = next(k for k, o in enumerate(cell["outputs"]) if o.get("output_type") == "stream")
    text = "".join(cell["outputs"][i]["text"])
    assert text.endswith("\n") and len(text) > 1
    name = cell["outputs"][i]["name"]
    cell["outputs"][i:i + 1] = [{"name": name, "output_type": "stream", "text": [text[:-1]]},
                                {"name": name, "output_type": "stream", "text": ["\n"]}]
    split = tmp_path / src.name
    split.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    assert split.read_bytes() != src.read_bytes()
    notebooks.strip(split)
    assert split.read_bytes() == src.read_bytes(), "strip restores the bytes of the unsplit run"
