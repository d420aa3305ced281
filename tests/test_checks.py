"""Soundness checks (crossholder.checks): AutoAttack against closed forms, agreement, masking, reused per-model rows."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from crossholder import checks, evaluation, store, sweeps
from oracles import linear_multiclass, strong_frame

F64 = torch.float64


def test_per_model_rows_reuses_unchanged_models_and_computes_the_others(tmp_path, monkeypatch):
    import pandas as pd

    monkeypatch.setenv("CROSSHOLDER_RESULTS", str(tmp_path))
    params = {"n": 10, "steps": 5, "restarts": 1}
    calls = []

    def compute_one(defense):
        calls.append(defense)
        return pd.DataFrame({"defense": [defense], "accuracy": [len(calls) / 10]})

    def table(models):
        return store.cached_table(
            "mnist/robustness/sanity", {"models": models, **params},
            lambda: checks.per_model_rows("sanity", "mnist", models, params, compute_one, seed=0, profile="smoke"),
            seed=0, profile="smoke", code_version=sweeps.EVAL_CODE_VERSION)[0]

    first = table({"none": "a1", "adversarial": "b1"})
    assert calls == ["none", "adversarial"]
    second = table({"none": "a1", "adversarial": "b2"})              # only the changed model is computed
    assert calls == ["none", "adversarial", "adversarial"]
    assert second[second["defense"] == "none"].equals(first[first["defense"] == "none"])
    # other parameters (or another seed) are not a donor
    checks.per_model_rows("sanity", "mnist", {"none": "a1"}, {**params, "steps": 6}, compute_one, seed=0,
                              profile="smoke")
    checks.per_model_rows("sanity", "mnist", {"none": "a1"}, params, compute_one, seed=1, profile="smoke")
    assert calls[-2:] == ["none", "none"]


def test_autoattack_check_matches_the_linear_closed_form_and_reports_the_gap():
    """AutoAttack cannot fool an example farther than ε from every boundary (soundness, checked by the
    ε-ball test inside) and must fool every example clearly nearer (strength): its accuracy lies
    between the exact robust accuracy at ε and at 0.98 ε. The gap column compares our per-example
    worst case, here built from the closed form, with AutoAttack's."""
    pytest.importorskip("pyautoattack")
    lin, x, y, dist = linear_multiclass()
    std = sweeps.data_mod.MEAN_STD["mnist"][1]
    q = np.quantile(dist.numpy(), [0.3, 0.6]) / std                      # two ε (paper units) inside the spread
    eps = [float(q[0]), float(q[1])]
    d = dist.numpy()
    # our sweep's per-example frame as the closed form would give it on the grid eps
    fooled_at = np.where(d <= eps[0] * std, 0, np.where(d <= eps[1] * std, 1, 2))
    per_example = evaluation.pd.DataFrame({"index": range(len(x)), "fooled_at_ce": fooled_at,
                                           "fooled_at_cw": fooled_at})
    t = checks.autoattack_check(lin, x, y, eps, dataset="mnist", defense="linear", per_example=per_example,
                                    eps_grid_used=eps, seed=0)
    assert list(t["eps"]) == eps and list(t["n"]) == [len(x)] * 2
    assert t["eps_pixel"].tolist() == pytest.approx([e * std for e in eps])
    for _, row in t.iterrows():
        ep = row["eps_pixel"]
        exact = float((d > ep).mean())
        assert exact <= row["autoattack"] <= float((d > 0.98 * ep).mean()) + 1e-12
        assert row["ours_worst_per_example"] == pytest.approx(exact)
        assert row["gap"] == pytest.approx(row["ours_worst_per_example"] - row["autoattack"])


def test_autoattack_check_rejects_points_outside_the_ball(monkeypatch):
    pyautoattack = pytest.importorskip("pyautoattack")
    lin, x, y, _ = linear_multiclass(n=4)

    class TooFar:                       # an "attack" that steps outside the ε-ball
        def __init__(self, model, eps, **kw):
            self.eps = eps

        def run_standard_evaluation(self, x, y, batch_size):
            return (x + 2 * self.eps / math.sqrt(x[0].numel())).clamp(0, 1), y

    monkeypatch.setattr(pyautoattack, "AutoAttack", TooFar)
    with pytest.raises(RuntimeError, match="outside the ε-ball"):
        checks.autoattack_check(lin, x, y, [0.1], dataset="mnist", defense="linear")


def test_autoattack_agreement_counts_what_we_call_robust_and_autoattack_fools():
    """Against the closed form: calling every image robust, AutoAttack must fool at least the images
    clearly inside the ball (d < 0.98 ε) and at most those inside it (d <= ε); calling exactly the
    images with d > ε robust, it fools none of them."""
    pytest.importorskip("pyautoattack")
    lin, x, y, d = linear_multiclass(n=16)
    std = sweeps.data_mod.MEAN_STD["mnist"][1]
    e = float(np.quantile(d.numpy(), 0.5)) / std
    grid = [0.0, e]
    all_robust = evaluation.pd.DataFrame({"fooled_at_strongest": [2] * len(x)})
    t = checks.autoattack_agreement(lin, x, y, all_robust, grid, [e], dataset="mnist", defense="lin")
    ep = e * std
    dn = d.numpy()
    assert t.loc[0, "robust"] == len(x) and t.loc[0, "n"] == len(x)
    assert int((dn < 0.98 * ep).sum()) <= t.loc[0, "missed"] <= int((dn <= ep).sum())
    assert t.loc[0, "missed_share"] == pytest.approx(t.loc[0, "missed"] / len(x))
    exact = evaluation.pd.DataFrame({"fooled_at_strongest": np.where(dn <= ep, 1, 2)})
    t = checks.autoattack_agreement(lin, x, y, exact, grid, [e], dataset="mnist", defense="lin")
    assert t.loc[0, "robust"] == int((dn > ep).sum()) and t.loc[0, "missed"] == 0
    with pytest.raises(ValueError, match="not on the grid"):
        checks.autoattack_agreement(lin, x, y, exact, grid, [e / 2], dataset="mnist", defense="lin")


def test_masking_table_counts_each_attack_and_what_it_adds():
    # image 0: both PGD fool; image 1: only FAB; image 2: only APGD-T; image 3: robust to all
    per = strong_frame(ce=[0, 3, 3, 3], cw=[1, 3, 3, 3], fab=[1, 1, 3, 3], apgd_t=[3, 3, 1, 3],
                        strongest=[0, 1, 1, 3])
    t = checks.masking_table(per, 1, defense="d").set_index("attack")
    assert t.loc["pgd-ce", "fooled"] == 1 and t.loc["pgd-ce", "beyond_pgd"] == 0
    assert t.loc["fab", "fooled"] == 2 and t.loc["fab", "beyond_pgd"] == 1
    assert t.loc["apgd-t", "fooled"] == 1 and t.loc["apgd-t", "beyond_pgd"] == 1
    assert t.loc["strongest", "fooled"] == 3 and t.loc["strongest", "beyond_pgd"] == 2
    assert (t["beyond_strongest"] == 0).all()
    sq = checks.masking_table(per, 1, square_fooled=np.array([True, False, False])).set_index("attack")
    assert sq.loc["square", "n"] == 3 and sq.loc["square", "fooled"] == 1 and sq.loc["square", "beyond_strongest"] == 0
    sq = checks.masking_table(per, 2, square_fooled=np.array([False, False, False, True])).set_index("attack")
    assert sq.loc["square", "beyond_strongest"] == 1, "Square fooling a strongest-robust image is what masking looks like"


def test_strong_checks_are_the_tables_notebook_04_reuses(tmp_path, monkeypatch):
    """A background run's one-model agreement and masking tables are found by notebook 04's per_model_rows."""
    pytest.importorskip("pyautoattack")
    monkeypatch.setenv("CROSSHOLDER_RESULTS", str(tmp_path))
    lin, x, y, d = linear_multiclass(n=8)
    std = sweeps.data_mod.MEAN_STD["mnist"][1]
    grid = [0.0, float(np.median(d.numpy())) / std, 2 * float(d.max()) / std]
    per = strong_frame(strongest=[2] * 4).iloc[:0]
    per = evaluation.pd.DataFrame({"fooled_at_strongest": np.where(d.numpy() <= grid[1] * std, 1, 2)})
    agree, mask = checks.strong_checks(lin, x, y, per.assign(**{c: per["fooled_at_strongest"] for c in (
        "fooled_at_ce", "fooled_at_cw", "fooled_at_apgd_ce", "fooled_at_apgd_t", "fooled_at_fab")}),
        dataset="mnist", defense="lin", model_id="m0", eps_list=grid, seed=0, profile="cpu",
        autoattack_eps=[grid[1]], masking_eps=grid[1])
    assert agree.loc[0, "missed"] == 0 and set(mask["attack"]) >= {"square", "strongest"}

    def boom(defense):
        raise AssertionError("must be reused")

    for kind, params, table in (("agreement", {"n": 8, "eps": [grid[1]], "grid": grid}, agree),
                                ("masking", {"n": 8, "eps": grid[1], "grid": grid}, mask)):
        got = checks.per_model_rows(kind, "mnist", {"lin": "m0"}, params, boom, seed=0, profile="cpu",
                                        code_version=sweeps.EVAL_CODE_VERSION)
        evaluation.pd.testing.assert_frame_equal(got.reset_index(drop=True), table.reset_index(drop=True))
