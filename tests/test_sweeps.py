"""The ε sweeps (crossholder.sweeps): monotone, subsets of from-scratch runs, units, the strongest curve and its frontier steps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from crossholder import attacks, evaluation, sweeps
from oracles import linear_model

F64 = torch.float64


def test_sweep_is_monotone_and_a_subset_of_from_scratch(linear_case):
    lin, x, y, dist = linear_case
    eps = [0.0, 0.05, 0.1, 0.15, 0.2, 0.3]
    out = sweeps.sweep(lin, x, y, eps, loss="ce", steps=10, restarts=2, seed=3)
    robust_sweep = [out["fooled_at"] > k for k in range(len(eps))]
    for k in range(1, len(eps)):
        assert (robust_sweep[k] <= robust_sweep[k - 1]).all(), "monotone by construction"
    for k, e in enumerate(eps):
        scratch = attacks.pgd(lin, x, y, e, loss="ce", steps=10, restarts=2, seed=3) if e > 0 else None
        robust_scratch = (~scratch.success).numpy() if scratch is not None else np.ones(len(x), bool)
        assert (robust_sweep[k] <= robust_scratch).all(), "every sweep-robust point is scratch-robust"
    naive = 10 * 2 * len(x) * (len(eps) - 1)
    assert out["grad_evals"] < naive


def test_curve_frame_and_worst_cases():
    per = evaluation.pd.DataFrame({"fooled_at_ce": [0, 2, 3, 3, -1], "fooled_at_cw": [1, 1, 3, 2, -1]})
    curve = sweeps.curve_from_sweeps(per, [0.0, 1.0, 2.0], [0.0, 0.3, 0.6], defense="d")
    assert set(curve["attack"]) == set(sweeps.PAPER_ATTACKS), "no strong attack rows without their columns"
    at1 = curve[curve["eps"] == 1.0].set_index("attack")["robust"]
    assert at1["pgd-ce"] == 3 and at1["pgd-cw"] == 2 and at1["worst-min"] == 2 and at1["worst-per-example"] == 2
    at2 = curve[curve["eps"] == 2.0].set_index("attack")["robust"]
    assert at2["pgd-ce"] == 2 and at2["pgd-cw"] == 1 and at2["worst-min"] == 1 and at2["worst-per-example"] == 1
    assert (curve["ci_low"] <= curve["accuracy"]).all() and (curve["accuracy"] <= curve["ci_high"]).all()


def test_eps_units():
    assert sweeps.to_pixel(5.0, "mnist") == pytest.approx(5.0 * 0.3081)
    assert sweeps.to_pixel([1.0], "fashion_mnist") == [pytest.approx(0.3530)]
    assert sweeps.to_pixel(2.0, "mnist", "pixel") == 2.0
    with pytest.raises(ValueError, match="eps_unit='std'"):
        sweeps.to_pixel(1.0, "mnist", "std")
    with pytest.raises(ValueError, match="increasing"):
        sweeps.robustness_curve(linear_model(), torch.rand(2, 20, dtype=F64), torch.tensor([0, 1]), [2.0, 1.0])


def test_fooled_at_from_norm():
    eps = [0.0, 0.1, 0.2, 0.3]
    got = sweeps.fooled_at_from_norm(np.array([0.0, 0.05, 0.1, 0.1 * (1 + 5e-6), 0.1001, 0.3, 0.31, math.inf]), eps)
    assert got.tolist() == [-1, 1, 1, 1, 2, 3, 4, 4]


def test_strongest_is_robust_only_where_every_attack_is(multiclass):
    """strong_sweep on the linear 10-class model: the strongest robust set at each ε is the intersection
    of every attack's (the paper's PGD included), and every image with d > ε is robust (soundness)."""
    lin, x, y, d = multiclass
    grid = [0.0] + [float(q) for q in np.quantile(d.numpy(), [0.2, 0.4, 0.6, 0.8])]
    pgd_out = {loss: sweeps.sweep(lin, x, y, grid, loss=loss, steps=10, restarts=1) for loss in attacks.LOSSES}
    prior = np.minimum(pgd_out["ce"]["min_norm"], pgd_out["cw"]["min_norm"])
    out = sweeps.strong_sweep(lin, x, y, grid, prior_norm=prior)
    per = evaluation.pd.DataFrame({"index": range(len(x)), "fooled_at_ce": pgd_out["ce"]["fooled_at"],
                                   "fooled_at_cw": pgd_out["cw"]["fooled_at"],
                                   **{f"fooled_at_{k}": v["fooled_at"] for k, v in out.items()}})
    for k, e in enumerate(grid):
        strongest = sweeps.robust_at(per, k, "strongest")
        every = np.ones(len(x), bool)
        for attack in ("pgd-ce", "pgd-cw", "apgd-ce", "apgd-t", "fab", "fab-t"):
            every &= sweeps.robust_at(per, k, attack)
        assert (strongest == every).all()
        assert strongest[d.numpy() > e * (1 + 1e-5)].all() if e > 0 else strongest.all()
        # the minimum-norm attack alone settles every image at 1.05 d
    assert (out["fab"]["min_norm"] <= d.numpy() * 1.05).all()
    ran = np.isfinite(out["fab_t"]["min_norm"])
    assert ran.any() and (out["fab_t"]["min_norm"][ran] >= d.numpy()[ran] * (1 - 1e-6)).all()
    assert (out["fab_t"]["min_norm"][ran] <= d.numpy()[ran] * 1.05).all()
    assert out["apgd_t"]["grad_evals"] > 0 and out["apgd_ce"]["grad_evals"] > 0 and out["fab_t"]["grad_evals"] > 0
    v2 = sweeps.strong_sweep(lin, x, y, grid, prior_norm=prior, fab_targets=0)
    assert "fab_t" not in v2 and (out["strongest"]["min_norm"] <= v2["strongest"]["min_norm"]).all()
    with pytest.raises(ValueError, match="fab_targets=-1 must be an integer >= 0"):
        sweeps.strong_sweep(lin, x, y, grid, fab_targets=-1)


def test_apgd_t_runs_at_the_frontier_and_again_below_each_new_witness(monkeypatch):
    """strong_sweep's APGD-T schedule, with the attacks replaced by fakes: an image is attacked at the
    largest grid ε strictly below its smallest witness norm, again below each witness APGD-T finds, and
    never again after a failure; clean errors and images settled at the smallest ε are never attacked."""
    eps = [0.0, 1.0, 2.0, 3.0, 4.0]
    n = 5
    x, y = torch.rand(n, 4), torch.zeros(n, dtype=torch.int64)
    model = nn.Sequential(nn.Linear(4, 10)).eval()
    calls = []
    # image 0: prior witness at 3.5 -> attacked at 3 (APGD-T finds 2.5) -> at 2 (fails)
    # image 1: no witness anywhere -> attacked at 4 only (fails)
    # image 2: prior witness at 0.5 -> nothing below it on the grid (eps 0 is never attacked)
    # image 3: clean error (norm 0) -> never attacked
    # image 4: prior witness exactly at 2 (within tolerance) -> attacked at 1 (fails)
    prior = np.array([3.5, math.inf, 0.5, 0.0, 2.0 * (1 + 5e-6)])
    t_found = {(0, 3.0): 2.5}

    def fake_apgd(model, x, y, e, loss, active, **k):
        act = active.cpu().numpy()
        calls.append((e, tuple(np.flatnonzero(act))))
        succ = torch.zeros(n, dtype=torch.bool)
        norm = torch.full((n,), math.inf)
        for i in np.flatnonzero(act):
            if (i, e) in t_found:
                succ[i], norm[i] = True, t_found[(i, e)]
        return attacks.AttackResult(x_adv=x, success=succ, norm=norm, grad_evals=int(act.sum()), forward_evals=0)

    def nothing_sweep(*a, **k):
        return {"min_norm": np.full(n, math.inf), "fooled_at": np.full(n, len(eps)), "grad_evals": 0}

    def nothing_fab(model, x, y, **k):
        return attacks.AttackResult(x_adv=x, success=torch.zeros(n, dtype=torch.bool),
                                    norm=torch.full((n,), math.inf), grad_evals=0, forward_evals=0)

    monkeypatch.setattr(sweeps.attacks_mod, "apgd", fake_apgd)
    monkeypatch.setattr(sweeps.attacks_mod, "fab", nothing_fab)
    monkeypatch.setattr(sweeps, "sweep", nothing_sweep)
    out = sweeps.strong_sweep(model, x, y, eps, prior_norm=prior)
    assert sorted(calls) == sorted([(3.0, (0,)), (4.0, (1,)), (1.0, (4,)), (2.0, (0,))])
    assert out["apgd_t"]["min_norm"][0] == 2.5 and out["apgd_t"]["fooled_at"][0] == 3
    assert out["strongest"]["fooled_at"].tolist() == [3, 5, 1, -1, 2]


def test_fab_t_step_lowers_frontiers_and_apgd_t_runs_only_below_them(monkeypatch):
    """fab_t_step with fakes: FAB-T runs only on images still robust at some positive grid ε; APGD-T runs
    again only where FAB-T lowered the first fooled grid ε, at the new frontier."""
    eps = [0.0, 1.0, 2.0, 3.0, 4.0]
    n = 4
    x, y = torch.rand(n, 4), torch.zeros(n, dtype=torch.int64)
    model = nn.Sequential(nn.Linear(4, 10)).eval()
    # image 0: v2 best 3.5 (fooled at 4), FAB-T finds 2.5 -> APGD-T at 2
    # image 1: v2 best 0.5 (fooled at every positive eps) -> FAB-T does not run
    # image 2: v2 best 3.5, FAB-T finds 3.25 (same first fooled eps) -> no APGD-T
    # image 3: clean error -> nothing
    best = np.array([3.5, 0.5, 3.5, 0.0])
    v2 = {k: {"min_norm": best.copy(), "grad_evals": 0} for k in ("apgd_ce", "fab", "strongest")}
    v2["apgd_t"] = {"min_norm": np.array([math.inf, math.inf, math.inf, 0.0]), "grad_evals": 7}
    fab_calls, apgd_calls = [], []

    def fake_fab(model, x, y, targets, active, **k):
        fab_calls.append((targets, tuple(np.flatnonzero(active.numpy()))))
        norm = torch.tensor([2.5, math.inf, 3.25, math.inf])
        return attacks.AttackResult(x_adv=x, success=torch.isfinite(norm), norm=norm, grad_evals=5, forward_evals=0)

    def fake_apgd(model, x, y, e, loss, active, **k):
        apgd_calls.append((e, tuple(np.flatnonzero(active.numpy()))))
        return attacks.AttackResult(x_adv=x, success=torch.zeros(n, dtype=torch.bool), norm=torch.full((n,), math.inf),
                                    grad_evals=3, forward_evals=0)

    monkeypatch.setattr(sweeps.attacks_mod, "fab", fake_fab)
    monkeypatch.setattr(sweeps.attacks_mod, "apgd", fake_apgd)
    out = sweeps.fab_t_step(model, x, y, eps, v2, targets=9, channels_last=False)
    assert fab_calls == [(9, (0, 2))] and apgd_calls == [(2.0, (0,))]
    assert out["fab_t"]["min_norm"].tolist() == [2.5, math.inf, 3.25, 0.0]
    assert out["strongest"]["fooled_at"].tolist() == [3, 1, 4, -1]
    assert out["apgd_t"]["grad_evals"] == 10 and out["fab_t"]["grad_evals"] == 5
    with pytest.raises(ValueError, match="targets=0 must be an integer >= 1"):
        sweeps.fab_t_step(model, x, y, eps, v2, targets=0)
    with pytest.raises(ValueError, match="v2 lacks"):
        sweeps.fab_t_step(model, x, y, eps, {"fab": v2["fab"]})
