"""PGD against closed-form oracles (linear classifiers), constraints, guards and the ε sweep."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from torch import nn

from crossholder import attacks, checks, claims, evaluation, models, stats, store, sweeps

F64 = torch.float64


def linear_model(d=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(d, 2).double()
    with torch.no_grad():
        lin.weight.copy_(torch.randn(2, d, generator=g, dtype=F64) * 5)
        lin.bias.zero_()
        lin.bias[1] = -0.5 * lin.weight.sum(1).diff()[0]    # the boundary passes through the centre of the box
    return lin.eval()


def distances(lin, x):
    w = lin.weight[1] - lin.weight[0]
    b = lin.bias[1] - lin.bias[0]
    return ((x @ w + b).abs() / w.norm()).detach()


@pytest.fixture(scope="module")
def linear_case():
    lin = linear_model()
    g = torch.Generator().manual_seed(1)
    x = 0.45 + 0.1 * torch.rand(64, 20, generator=g, dtype=F64)
    with torch.no_grad():
        y = lin(x).argmax(1)
    dist = distances(lin, x)
    assert float(dist.max()) < 0.4, "the box must not bind for the closed form to hold"
    return lin, x, y, dist


@pytest.mark.parametrize("loss", attacks.LOSSES)
def test_linear_closed_form(linear_case, loss):
    """Minimal L2 distance to a linear boundary is |w.x + b| / ||w||: found just beyond it, never below.

    "Just beyond" is 5%: with the default step 2.5 ε / steps, an iterate on the sphere turns towards
    the optimal direction at most ~2.5 rad over 50 steps, so a random start on the far side of the
    sphere ends within ~10 degrees of it (cos ≈ 0.985), not closer (measured: 1% fails for such starts).
    """
    lin, x, y, dist = linear_case
    below = above = 0
    for i in range(len(x)):
        r_lo = attacks.pgd(lin, x[i:i + 1], y[i:i + 1], float(dist[i]) * 0.99, loss=loss, steps=50, restarts=3)
        r_hi = attacks.pgd(lin, x[i:i + 1], y[i:i + 1], float(dist[i]) * 1.05, loss=loss, steps=50, restarts=3)
        below += int(r_lo.success[0])
        above += int(r_hi.success[0])
        if r_hi.success[0]:
            assert dist[i] <= r_hi.norm[0] <= dist[i] * 1.05 * (1 + 1e-9)
    assert below == 0 and above == len(x)


@pytest.mark.parametrize("norm", [2, float("inf")])
@pytest.mark.parametrize("loss", attacks.LOSSES)
def test_perturbations_in_ball_and_box_on_cnn(mnist_test, norm, loss):
    torch.manual_seed(0)
    m = models.paper_cnn("mnist").eval()
    x, y = mnist_test[0][:16], mnist_test[1][:16]
    eps = 2.0 if norm == 2 else 0.1
    r = attacks.pgd(m, x, y, eps, norm=norm, loss=loss, steps=5, restarts=2)
    delta = (r.x_adv - x).flatten(1)
    n = torch.linalg.vector_norm(delta, ord=norm, dim=1)
    assert (n <= eps * (1 + 1e-5)).all()
    assert (r.x_adv >= 0).all() and (r.x_adv <= 1).all()
    assert torch.equal(r.x_adv[~r.success], x[~r.success])
    with torch.no_grad():
        assert (m(r.x_adv[r.success]).argmax(1) != y[r.success]).all()
    assert torch.allclose(r.norm[r.success].float(), n[r.success], atol=1e-6)


def test_restarts_keep_the_best_and_only_attack_survivors(linear_case):
    lin, x, y, dist = linear_case
    eps = float(dist.median())
    one = attacks.pgd(lin, x, y, eps, steps=3, restarts=1, seed=5)
    many = attacks.pgd(lin, x, y, eps, steps=3, restarts=4, seed=5)
    assert (many.success >= one.success).all(), "restart 0 is shared: more restarts never lose a success"
    assert torch.equal(many.norm[one.success], one.norm[one.success]), "fooled points are not attacked again"
    assert many.grad_evals <= 4 * 3 * len(x)


def test_model_untouched_and_flags_restored(mnist_test):
    m = models.paper_cnn("mnist").eval()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    flags = [p.requires_grad for p in m.parameters()]
    attacks.pgd(m, mnist_test[0][:8], mnist_test[1][:8], 1.0, steps=3, restarts=1)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert flags == [p.requires_grad for p in m.parameters()]
    assert all(p.grad is None for p in m.parameters())


def test_cw_loss_uses_a_mask_with_negative_logits():
    z = torch.tensor([[-5.0, -1.0, -3.0], [-2.0, -9.0, -4.0]])
    y = torch.tensor([1, 0])
    assert torch.allclose(attacks.attack_loss(z, y, "cw"), torch.tensor([-2.0, -2.0]))
    assert torch.allclose(attacks.attack_loss(z * 10, y, "cw"), torch.tensor([-20.0, -20.0]))


def test_guards():
    m = models.paper_cnn("mnist")
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    with pytest.raises(RuntimeError, match="training mode"):
        attacks.pgd(m.train(), x, y, 1.0)
    with pytest.raises(ValueError, match="probabilities"):
        attacks.pgd(nn.Sequential(m, nn.Softmax(dim=1)).eval(), x, y, 1.0)
    with pytest.raises(ValueError, match="probabilities"):
        attacks.pgd(nn.Sequential(m, nn.LogSoftmax(dim=1)).eval(), x, y, 1.0)

    class NaNGrad(nn.Module):
        def forward(self, x):
            return m(x) * torch.sqrt(x.flatten(1)[:, :1] - 2.0).nan_to_num(0.0) + m(x)

    with pytest.raises(FloatingPointError, match="non-finite"):
        attacks.pgd(NaNGrad().eval(), x, y, 1.0, steps=2, restarts=1)


@pytest.mark.parametrize("kwargs,match", [
    ({"eps": -0.1}, "eps=-0.1"), ({"loss": "hinge"}, "loss='hinge'"), ({"steps": 0}, "steps=0"),
    ({"restarts": 0}, "restarts=0"), ({"norm": 1}, "norm=1"), ({"step_size": -1.0}, "step_size=-1.0"),
])
def test_bad_arguments(kwargs, match):
    m = models.paper_cnn("mnist").eval()
    args = {"eps": 1.0, **kwargs}
    with pytest.raises(ValueError, match=match):
        attacks.pgd(m, torch.rand(2, 1, 28, 28), torch.tensor([0, 1]), **args)


def test_pixels_outside_box_rejected():
    m = models.paper_cnn("mnist").eval()
    with pytest.raises(ValueError, match="outside \\[0, 1\\]"):
        attacks.pgd(m, torch.rand(2, 1, 28, 28) * 300, torch.tensor([0, 1]), 1.0)


def test_verification_catches_a_bad_result(mnist_test):
    m = models.paper_cnn("mnist").eval()
    x, y = mnist_test[0][:4], mnist_test[1][:4]
    fake = attacks.AttackResult(x_adv=(x + 0.5).clamp(0, 1), success=torch.ones(4, dtype=torch.bool),
                                norm=torch.zeros(4), grad_evals=0, forward_evals=0)
    with pytest.raises(attacks.AttackVerificationError):
        attacks.verify_result(m, x, y, fake, 0.1, 2.0)


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


def test_wilson_interval_known_values():
    lo, hi = stats.wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
    lo, hi = stats.wilson_interval(0, 10)
    assert lo == 0 and hi == pytest.approx(0.2775, abs=1e-3)


def test_eps_units():
    assert sweeps.to_pixel(5.0, "mnist") == pytest.approx(5.0 * 0.3081)
    assert sweeps.to_pixel([1.0], "fashion_mnist") == [pytest.approx(0.3530)]
    assert sweeps.to_pixel(2.0, "mnist", "pixel") == 2.0
    with pytest.raises(ValueError, match="eps_unit='std'"):
        sweeps.to_pixel(1.0, "mnist", "std")
    with pytest.raises(ValueError, match="increasing"):
        sweeps.robustness_curve(linear_model(), torch.rand(2, 20, dtype=F64), torch.tensor([0, 1]), [2.0, 1.0])


@pytest.mark.filterwarnings("ignore:APGD-T is not run")
def test_evaluate_model_reuses_whole_chunks_of_a_larger_run(linear_case, tmp_path, monkeypatch):
    lin, x, y, _ = linear_case
    kw = dict(dataset="mnist", defense="lin", eps_list=[0.0, 0.2, 0.4], steps=5, restarts=2, seed=1,
              profile="smoke", model_id="m", chunk=4, progress=False)
    monkeypatch.setenv("CROSSHOLDER_SCRATCH", str(tmp_path / "scratch"))
    monkeypatch.setenv("CROSSHOLDER_RESULTS", str(tmp_path / "fresh"))
    _, fresh6, side6 = evaluation.evaluate_model(lin, x[:6], y[:6], **kw)
    assert "reused_from" not in side6
    monkeypatch.setenv("CROSSHOLDER_RESULTS", str(tmp_path / "donor"))
    _, donor, _ = evaluation.evaluate_model(lin, x[:12], y[:12], **kw)
    _, reused6, side = evaluation.evaluate_model(lin, x[:6], y[:6], reuse_larger_runs=True, **kw)
    assert side["reused_from"]["examples"] == 4, "only the whole chunk [0, 4) is taken; rows 4, 5 are computed"
    assert side["params"]["n"] == 6
    evaluation.pd.testing.assert_frame_equal(reused6, fresh6)
    # labels that do not match the donor's: nothing is reused
    _, _, side_bad = evaluation.evaluate_model(lin, x[:8], 1 - y[:8], reuse_larger_runs=True, **kw)
    assert "reused_from" not in side_bad


@pytest.mark.filterwarnings("ignore:APGD-T is not run")
def test_evaluate_model_until_stops_and_resumes_to_the_same_rows(linear_case, tmp_path, monkeypatch):
    """``until`` cuts a run into pieces: it stops unfinished after the chunks below it (no curve, no
    results file), and the resumed run ends with exactly the rows of one uninterrupted run."""
    lin, x, y, _ = linear_case
    kw = dict(dataset="mnist", defense="lin", eps_list=[0.0, 0.2, 0.4], steps=5, restarts=2, seed=1,
              profile="smoke", model_id="m", chunk=4, progress=False, protocol="paper-v1")
    monkeypatch.setenv("CROSSHOLDER_SCRATCH", str(tmp_path / "scratch"))
    monkeypatch.setenv("CROSSHOLDER_RESULTS", str(tmp_path / "whole"))
    _, whole, _ = evaluation.evaluate_model(lin, x[:12], y[:12], **kw)
    monkeypatch.setenv("CROSSHOLDER_RESULTS", str(tmp_path / "pieces"))
    curve, rows, state = evaluation.evaluate_model(lin, x[:12], y[:12], until=5, **kw)
    assert curve is None and state["done"] == 8 and state["n"] == 12, "chunks [0, 4) and [4, 8) start below 5"
    assert not (tmp_path / "pieces").exists() or not any((tmp_path / "pieces").rglob("*.csv"))
    curve, pieces, _ = evaluation.evaluate_model(lin, x[:12], y[:12], until=100, **kw)
    assert curve is not None
    evaluation.pd.testing.assert_frame_equal(pieces, whole)
    with pytest.raises(ValueError, match="until=0"):
        evaluation.evaluate_model(lin, x[:12], y[:12], until=0, **kw)


def _curves(acc_by_defense: dict[str, list[float]], eps: list[float], n: int = 300) -> "evaluation.pd.DataFrame":
    rows = []
    for d, accs in acc_by_defense.items():
        for e, a in zip(eps, accs):
            lo, hi = stats.wilson_interval(round(a * n), n)
            for att in sweeps.ATTACKS:
                rows.append({"defense": d, "attack": att, "eps": e, "accuracy": a, "ci_low": float(lo),
                             "ci_high": float(hi)})
    return evaluation.pd.DataFrame(rows)


def test_claims_table_verdicts():
    eps = [3.0, 3.5, 4.0, 4.5, 5.0, 5.5, 6.0]
    curves = _curves({"cross_holder": [0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.4],
                      "cross_lipschitz": [0.9, 0.8, 0.72, 0.55, 0.45, 0.35, 0.25],   # clearly below CH after 4
                      "adversarial": [0.95, 0.9, 0.85, 0.72, 0.62, 0.5, 0.41]}, eps)  # ahead, but within the CIs
    t = claims.claims_table(curves, "mnist").set_index(["claim", "attack"])
    assert t.loc[("M1", "pgd-ce"), "supported"] and t.loc[("M1", "pgd-ce"), "beyond_ci"]
    assert t.loc[("M4", "pgd-cw"), "supported"] and t.loc[("M4", "pgd-cw"), "beyond_ci"]
    assert not t.loc[("M3", "pgd-cw"), "supported"] and not t.loc[("M3", "pgd-cw"), "beyond_ci"]
    # at ε = 4 all three are >= 0.7, but Cross-Lipschitz's 0.72 has a lower bound below 0.7 at n = 300
    assert t.loc[("M5", "worst-min"), "supported"] and not t.loc[("M5", "worst-min"), "beyond_ci"]
    # a claim whose range is not in the curves
    t2 = claims.claims_table(curves[curves["eps"] <= 4.0], "mnist").set_index(["claim", "attack"])
    assert t2.loc[("M4", "pgd-cw"), "evidence"] == "not evaluated"


def test_evaluate_registered_run_id_is_the_curve_notebook_04_later_reads(tmp_path, monkeypatch):
    """A curve computed for a finished, not yet registered run (run_id=) is the cache hit of the registered model."""
    from crossholder import evaluation, training

    monkeypatch.setenv("CROSSHOLDER_RESULTS", str(tmp_path))
    cfg = training.make_config("mnist", "none", profile="smoke")
    training.train(cfg, progress=False, register=False)
    with pytest.raises(KeyError):
        evaluation.evaluate_registered("mnist", "none", profile="smoke", progress=False)
    curve, _, side = evaluation.evaluate_registered("mnist", "none", profile="smoke", progress=False, run_id=cfg.run_id)
    assert side["params"]["model"] == cfg.run_id
    training.train(cfg, progress=False, register=True)

    def boom(*a, **k):
        raise AssertionError("must come from the cache")

    monkeypatch.setattr(sweeps, "sweep", boom)          # what evaluate_model computes with
    monkeypatch.setattr(sweeps, "strong_sweep", boom)
    again, _, _ = evaluation.evaluate_registered("mnist", "none", profile="smoke", progress=False)
    assert again.equals(curve)
    with pytest.raises(FileNotFoundError, match="run_id='0000000000'"):
        evaluation.evaluate_registered("mnist", "none", profile="smoke", progress=False, run_id="0000000000")


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


def test_evaluation_cli_says_when_rows_were_reused(monkeypatch, capsys):
    """A run that took its rows from a larger run says so, instead of a bare "done in 0.01 s"."""
    from crossholder import evaluation

    curve = evaluation.pd.DataFrame({"attack": ["worst-per-example"], "eps": [0.0], "accuracy": [1.0]})
    side = {"wall_time_s": 0.01, "files": ["curve.csv"],
            "reused_from": {"examples": 300, "file": "donor-examples.csv", "wall_time_s_share": 12.5}}
    monkeypatch.setattr(evaluation, "evaluate_registered", lambda *a, **k: (curve, None, side))
    evaluation.main(["--dataset", "mnist", "--defense", "none"])
    out = capsys.readouterr().out
    assert "300 examples' rows reused from donor-examples.csv" in out and "12.5 s" in out and "0.01 s here" in out


def test_paired_comparison_counts_and_exact_mcnemar():
    from scipy.stats import binomtest

    # fooled_at: index of the first ε that fooled the image (2 = never, on a 2-point grid); -1 = misclassified
    a = evaluation.pd.DataFrame({"index": [0, 1, 2, 3, 4, 5], "fooled_at_ce": [2, 2, 1, 2, -1, 2],
                                 "fooled_at_cw": [2, 1, 2, 2, -1, 2]})
    b = evaluation.pd.DataFrame({"index": [0, 1, 2, 3, 4, 5], "fooled_at_ce": [2, 2, 2, 0, 2, 2],
                                 "fooled_at_cw": [2, 2, 2, 2, 2, 1]})
    r = claims.paired_comparison(a, b, 1)     # robust at eps[1]: fooled_at > 1 for both losses
    # a robust: 0, 3, 5; b robust: 0, 1, 2, 4
    assert (r["both"], r["only_a"], r["only_b"], r["neither"]) == (1, 2, 3, 0)
    assert r["p_value"] == pytest.approx(binomtest(2, 5).pvalue, abs=1e-12)
    r0 = claims.paired_comparison(a, b, 0)    # eps[0]: a robust 0,1,2,3,5; b robust 0,1,2,4,5
    assert (r0["only_a"], r0["only_b"]) == (1, 1) and r0["p_value"] == 1.0
    rng = np.random.default_rng(0)
    for _ in range(20):                            # exact two-sided McNemar = scipy's binomial test
        n = 60
        fa, fb = rng.integers(-1, 4, n), rng.integers(-1, 4, n)
        A = evaluation.pd.DataFrame({"index": range(n), "fooled_at_ce": fa, "fooled_at_cw": 3})
        B = evaluation.pd.DataFrame({"index": range(n), "fooled_at_ce": fb, "fooled_at_cw": 3})
        r = claims.paired_comparison(A, B, 1)
        d = r["only_a"] + r["only_b"]
        assert r["p_value"] == pytest.approx(binomtest(r["only_a"], d).pvalue if d else 1.0, abs=1e-12)
        assert r["both"] + r["only_a"] + r["only_b"] + r["neither"] == n
    with pytest.raises(ValueError, match="same images"):
        claims.paired_comparison(a, b.iloc[::-1], 1)
    with pytest.raises(ValueError, match="lacks the columns"):
        claims.paired_comparison(a.drop(columns="fooled_at_cw"), b, 1)
    with pytest.raises(ValueError, match="k=-1"):
        claims.paired_comparison(a, b, -1)


def linear_multiclass(d=100, k=10, n=48, seed=0):
    """A 10-class linear classifier (float32, AutoAttack's dtype) on inputs inside [0.45, 0.55]^d, shaped
    ``(n, 1, 10, d / 10)``, where the box does not bind: the minimal L2 perturbation that changes the
    prediction is exactly ``min_{j != y} (f_y - f_j) / ||w_y - w_j||``."""
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(d, k)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(k, d, generator=g) * 20)
        lin.bias.copy_(-(lin.weight @ torch.full((d,), 0.5)))   # every boundary passes near the centre
        x = 0.45 + 0.1 * torch.rand(n, d, generator=g)
        z = lin(x)
        y = z.argmax(1)
        w = lin.weight
        gap = z.gather(1, y[:, None]) - z                                  # (n, k) f_y - f_j >= 0
        wn = (w[y][:, None, :] - w[None, :, :]).norm(dim=2)                # (n, k) ||w_y - w_j||
        dist = torch.where(wn > 0, gap / wn.clamp_min(1e-12), torch.full_like(gap, math.inf)).min(1).values
    assert float(dist.max()) < 0.05, "the box must not bind for the closed form to hold"
    # Square attack needs image-shaped inputs (n, C, H, W)
    return nn.Sequential(nn.Flatten(), lin).eval(), x.view(n, 1, 10, d // 10), y, dist.double()


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


# ---------------------------------------------------------------- the strongest protocol (pyautoattack adapters)
@pytest.fixture(scope="module")
def multiclass():
    pytest.importorskip("pyautoattack")
    return linear_multiclass()


def test_apgd_never_below_the_closed_form_and_apgd_t_always_just_above(multiclass):
    """On a 10-class linear classifier (exact minimal L2 distance d per image): neither APGD loss fools an
    image at 0.99 d (soundness); APGD-T, which aims at each other class in turn, fools every image at
    1.05 d (strength). APGD-CE is not required to: cross-entropy does not aim at the nearest boundary."""
    lin, x, y, d = multiclass
    x, y, d = x[:16], y[:16], d[:16]
    for loss in attacks.APGD_LOSSES:
        lo = [bool(attacks.apgd(lin, x[i:i + 1], y[i:i + 1], float(d[i]) * 0.99, loss=loss, n_iter=50).success[0])
              for i in range(len(x))]
        assert not any(lo), loss
    hi = [attacks.apgd(lin, x[i:i + 1], y[i:i + 1], float(d[i]) * 1.05, loss="dlr-t") for i in range(len(x))]
    assert all(bool(r.success[0]) for r in hi)
    assert all(float(d[i]) <= float(r.norm[0]) <= float(d[i]) * 1.05 * (1 + 1e-5) for i, r in enumerate(hi))


def test_fab_finds_the_closed_form_distance(multiclass):
    lin, x, y, d = multiclass
    r = attacks.fab(lin, x, y)
    assert bool(r.success.all())
    ratio = r.norm.double() / d
    assert float(ratio.min()) >= 1.0 - 1e-6 and float(ratio.max()) <= 1.05
    assert r.grad_evals == len(x) * 100 * 10, "FAB differentiates all 10 logits at each of its 100 iterations"


def test_targeted_fab_finds_the_closed_form_distance_over_its_targets(multiclass):
    """FAB-T: each of the t most likely other classes runs on every image and the smallest witness is kept,
    so the distance lies in [d, 1.05 d] with d the closed-form distance to the nearest boundary (which is
    among the 9 targets), and is never above untargeted FAB's by more than float rounding of the nearest
    boundary's direction. One gradient row per iteration and target."""
    lin, x, y, d = multiclass
    r = attacks.fab(lin, x, y, targets=9)
    assert bool(r.success.all())
    ratio = r.norm.double() / d
    assert float(ratio.min()) >= 1.0 - 1e-6 and float(ratio.max()) <= 1.05
    assert r.grad_evals <= len(x) * 100 * 9
    again = attacks.fab(lin, x, y, targets=9)
    assert torch.equal(again.norm, r.norm), "seeded runs repeat exactly"
    one = attacks.fab(lin, x, y, targets=1)
    assert bool((one.norm >= r.norm - 1e-6).all()), "more targets never find a larger distance"
    with pytest.raises(ValueError, match="targets=10 must be <= K - 1 = 9"):
        attacks.fab(lin, x, y, targets=10)
    with pytest.raises(ValueError, match="targets=-1 must be an integer >= 0"):
        attacks.fab(lin, x, y, targets=-1)


def test_library_witnesses_are_verified_and_outside_points_discarded(multiclass, monkeypatch):
    """A library point just outside the ball (float32 rounding) is pulled back inside and re-verified; one
    clearly outside raises; a correctly classified point is never a witness."""
    lin, x, y, d = multiclass
    eps = float(d.max()) * 2

    def far(m, xs, ys):                     # everything 3 eps away along the gradient of the nearest boundary
        return (xs + 3 * eps * torch.nn.functional.normalize(torch.randn_like(xs).flatten(1), dim=1).view_as(xs)
                ).clamp(0, 1)

    with pytest.raises(attacks.AttackVerificationError, match="outside the eps="):
        attacks._library_attack(lin, x, y, eps, far, active=None, verify=True, seed=0)

    def rounding(m, xs, ys):                # on the boundary's far side, 1e-4 outside the ball: pulled back in
        w = lin[1].weight
        z = lin(xs)
        j = z.scatter(1, ys[:, None], -math.inf).argmax(1)
        u = torch.nn.functional.normalize(w[j] - w[ys], dim=1).view_as(xs)
        return (xs + eps * (1 + 1e-4) * u).clamp(0, 1)

    r = attacks._library_attack(lin, x, y, eps, rounding, active=None, verify=True, seed=0)
    assert bool(r.success.all()) and float(r.norm.max()) <= eps

    def just_past(m, xs, ys):               # 5e-5 outside a ball whose radius is exactly each image's distance
        w = lin[1].weight
        z = lin(xs)
        j = z.scatter(1, ys[:, None], -math.inf).argmax(1)
        u = torch.nn.functional.normalize(w[j] - w[ys], dim=1).view_as(xs)
        return (xs + float(d[0]) * (1 + 5e-5) * u).clamp(0, 1)

    r = attacks._library_attack(lin, x[:1], y[:1], float(d[0]), just_past, active=None, verify=True, seed=0)
    assert not bool(r.success.any()), "pulled back inside the ball it is correctly classified: discarded"
    r = attacks._library_attack(lin, x, y, eps, lambda m, xs, ys: xs.clone(), active=None, verify=True, seed=0)
    assert not bool(r.success.any())


def test_apgd_seeded_repeats_exactly_and_restores_the_global_random_state(multiclass):
    lin, x, y, d = multiclass
    eps = float(np.quantile(d.numpy(), 0.5))
    state = torch.get_rng_state()
    a = attacks.apgd(lin, x, y, eps, loss="ce", seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    b = attacks.apgd(lin, x, y, eps, loss="ce", seed=3)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.success, b.success)


@pytest.mark.parametrize("call, match", [
    (lambda m, x, y: attacks.apgd(m, x, y, -0.1), "eps=-0.1"),
    (lambda m, x, y: attacks.apgd(m, x, y, 0.1, loss="dlr"), "loss='dlr'; allowed values: 'ce', 'dlr-t'"),
    (lambda m, x, y: attacks.apgd(m, x, y, 0.1, loss="dlr-t", targets=10), "targets=10 must be <= K - 1 = 9"),
    (lambda m, x, y: attacks.apgd(m, x, y, 0.1, n_iter=0), "n_iter=0"),
    (lambda m, x, y: attacks.fab(m, x, y, n_iter=1.5), "n_iter=1.5"),
    (lambda m, x, y: attacks.square(m, x, y, -1.0), "eps=-1.0"),
    (lambda m, x, y: sweeps.sweep(m, x, y, [0.0, 0.1], attack="fgsm"), "attack='fgsm'; allowed values"),
    (lambda m, x, y: sweeps.robust_at(evaluation.pd.DataFrame({"fooled_at_ce": [1]}), 0, "apgd"),
     "attack='apgd'; allowed values"),
])
def test_strong_attacks_bad_arguments(multiclass, call, match):
    lin, x, y, _ = multiclass
    with pytest.raises(ValueError, match=re.escape(match)):
        call(lin, x[:2], y[:2])


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


def test_version_3_upgrades_version_2_rows_to_exactly_a_fresh_run(tmp_path, monkeypatch):
    """``strongest`` (code 3) run where ``strongest-v2`` rows exist, in its scratch partial (chunk 0)
    or finished, gives per-example rows identical to a version-3 run from scratch, names the
    version-2 run in its sidecar and counts its cost; FAB-T is applied on top, never recomputing PGD."""
    pytest.importorskip("pyautoattack")
    lin, x, y, d = linear_multiclass(n=16)
    std = sweeps.data_mod.MEAN_STD["mnist"][1]
    grid = [0.0] + [round(float(q) / std, 6) for q in np.quantile(d.numpy(), [0.3, 0.6, 0.9])]
    kw = dict(dataset="mnist", defense="lin", eps_list=grid, steps=3, restarts=1, seed=0, profile="smoke",
              model_id="m", chunk=8, progress=False)

    def run(root, **k):
        monkeypatch.setenv("CROSSHOLDER_RESULTS", str(root / "results"))
        monkeypatch.setenv("CROSSHOLDER_SCRATCH", str(root / "scratch"))
        return evaluation.evaluate_model(lin, x, y, **{**kw, **k})

    _, fresh, side_fresh = run(tmp_path / "fresh")
    assert side_fresh["code"] == "3" and "upgraded_from" not in side_fresh
    assert {"fab-t", "fab", "apgd-t"} <= set(side_fresh["grad_evals_by_attack"])
    assert run(tmp_path / "partial", protocol="strongest-v2", until=8)[0] is None     # one chunk, unfinished
    _, finished_v2, side_v2 = run(tmp_path / "finished", protocol="strongest-v2")
    assert side_v2["code"] == "2" and "min_norm_fab_t" not in finished_v2
    run(tmp_path / "other-chunk", protocol="strongest-v2", chunk=16)
    calls = []
    real_sweep = sweeps.sweep
    monkeypatch.setattr(sweeps, "sweep", lambda *a, **k: calls.append(k.get("loss")) or real_sweep(*a, **k))
    _, from_partial, side_p = run(tmp_path / "partial")
    assert calls.count("ce") == 2 and calls.count("cw") == 1, "only chunk 1 runs PGD (CE, CW) and APGD-CE again"
    calls.clear()
    _, from_finished, side_f = run(tmp_path / "finished")
    assert not calls, "every chunk is upgraded: neither PGD nor APGD-CE runs again"
    calls.clear()
    _, from_other_chunk, side_o = run(tmp_path / "other-chunk")
    assert calls.count("cw") == 2 and "upgraded_from" not in side_o, "rows of another chunk size are not upgraded"
    for got in (from_partial, from_finished, from_other_chunk):   # the same columns, in the same order, bit for bit
        evaluation.pd.testing.assert_frame_equal(got, fresh, check_exact=True)
    assert side_f["upgraded_from"]["run_id"] == side_v2["run_id"] and side_f["upgraded_from"]["chunks"] == [0, 8]
    assert side_p["upgraded_from"]["chunks"] == [0]
    # the sidecar counts this run's own work; with the finished version-2 run's it is a fresh run's
    assert side_f["grad_evals"] + side_f["upgraded_from"]["version2_totals"]["grad_evals"] == side_fresh["grad_evals"]
    assert side_p["grad_evals"] < side_fresh["grad_evals"]
    monkeypatch.setattr(sweeps, "sweep", real_sweep)
    assert run(tmp_path / "resume", until=8)[0] is None
    with pytest.raises(ValueError, match="chunk=16 but .* was computed with chunk=8"):
        run(tmp_path / "resume", chunk=16)


def test_evaluate_model_strongest_rows_and_legacy_protocol(linear_case, tmp_path, monkeypatch):
    """The default protocol adds APGD-CE, APGD-T, FAB and strongest rows (never above any attack's);
    ``paper-v1`` keeps the code-version-1 run identity and its step rule."""
    pytest.importorskip("pyautoattack")
    lin, x, y, _ = linear_case
    monkeypatch.setenv("CROSSHOLDER_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("CROSSHOLDER_SCRATCH", str(tmp_path / "scratch"))
    kw = dict(dataset="mnist", defense="lin", eps_list=[0.0, 0.3, 0.6], steps=5, restarts=1, seed=0,
              profile="smoke", model_id="m", chunk=8, progress=False)
    curve, per, side = evaluation.evaluate_model(lin, x[:16], y[:16], **kw)
    assert set(curve["attack"]) == set(sweeps.ATTACKS)
    acc = curve.pivot_table(index="eps", columns="attack", values="robust")
    for attack in sweeps.ATTACKS:
        assert (acc["strongest"] <= acc[attack]).all(), attack
    assert side["code"] == sweeps.EVAL_CODE_VERSION and side["params"]["step_fraction"] == 0.25
    assert set(side["grad_evals_by_attack"]) <= {"pgd-ce", "pgd-cw", "apgd-ce", "apgd-t", "fab", "fab-t"}
    assert {"pgd-ce", "pgd-cw", "apgd-ce", "fab"} <= set(side["grad_evals_by_attack"])
    steps_seen = []
    real_pgd = sweeps.pgd

    def spy(model, x, y, eps, **k):
        steps_seen.append(k["step_size"] / eps)
        return real_pgd(model, x, y, eps, **k)

    monkeypatch.setattr(sweeps, "pgd", spy)
    legacy, _, side1 = evaluation.evaluate_model(lin, x[:16], y[:16], protocol="paper-v1", **kw)
    assert set(legacy["attack"]) == set(sweeps.PAPER_ATTACKS) and side1["code"] == "1"
    v1_params = {"dataset": "mnist", "defense": "lin", "model": "m", "eps": kw["eps_list"], "steps": 5,
                 "restarts": 1, "n": 16, "eps_unit": "paper", "losses": ["ce", "cw"]}
    assert side1["run_id"] == evaluation.store.run_id({**v1_params, "seed": 0, "profile": "smoke", "code": "1"}), \
        "the legacy run identity is the version-1 one"
    assert steps_seen and all(f == pytest.approx(2.5 / 5) for f in steps_seen), "legacy step: 2.5 eps / steps"
    with pytest.raises(ValueError, match="protocol='fast'; allowed values"):
        evaluation.evaluate_model(lin, x[:16], y[:16], protocol="fast", **kw)


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


def _strong_frame(**cols):
    base = {f"fooled_at_{c}": [3, 3, 3, 3] for c in ("ce", "cw", "apgd_ce", "apgd_t", "fab", "strongest")}
    base.update({f"fooled_at_{k}": v for k, v in cols.items()})
    return evaluation.pd.DataFrame({"index": range(4), **base})


def test_masking_table_counts_each_attack_and_what_it_adds():
    # image 0: both PGD fool; image 1: only FAB; image 2: only APGD-T; image 3: robust to all
    per = _strong_frame(ce=[0, 3, 3, 3], cw=[1, 3, 3, 3], fab=[1, 1, 3, 3], apgd_t=[3, 3, 1, 3],
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


def test_paired_table_under_both_attacks():
    a = _strong_frame(ce=[3, 3, 3, 0], strongest=[3, 3, 1, 0])
    b = _strong_frame(ce=[3, 0, 0, 0], strongest=[3, 0, 0, 0])
    t = claims.paired_table({"cross_holder": a, "cross_lipschitz": b}, [0.0, 1.0, 2.0], dataset="mnist",
                                eps_points=[2.0])
    assert list(t["attack"]) == ["worst-per-example", "strongest"] and list(t["b"]) == ["cross_lipschitz"] * 2
    w, s = t.iloc[0], t.iloc[1]
    assert (w["a_robust"], w["b_robust"], w["only_a"], w["only_b"]) == (3, 1, 2, 0)
    assert (s["a_robust"], s["b_robust"], s["only_a"], s["only_b"]) == (2, 1, 1, 0) and s["p_value"] == 1.0
    with pytest.raises(ValueError, match="attack='apgd'; allowed values"):
        claims.paired_comparison(a, b, 1, "apgd")


def _bn_cnn():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.SiLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
    m.eval()
    m[1].train()                       # one submodule left in training mode
    return m


@pytest.mark.parametrize("call", [
    lambda m, x, y: attacks.pgd(m, x, y, 0.5, steps=2, restarts=1),
    lambda m, x, y: attacks.apgd(m, x, y, 0.5, n_iter=2),
    lambda m, x, y: attacks.fab(m, x, y, n_iter=2),
    lambda m, x, y: sweeps.sweep(m, x, y, [0.0, 0.5], steps=2, restarts=1, channels_last=False),
    lambda m, x, y: sweeps.strong_sweep(m, x, y, [0.0, 0.5], channels_last=False),
    lambda m, x, y: attacks.random_noise_attack(m, x, y, 0.5, queries=2),
], ids=["pgd", "apgd", "fab", "sweep", "strong_sweep", "random_noise"])
def test_a_submodule_in_training_mode_is_refused_before_any_forward_pass(call):
    """Issue 18, item 4: the guard looks at every submodule and runs first; the buffers stay bit-identical."""
    m = _bn_cnn()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x, y = torch.rand(3, 1, 28, 28), torch.tensor([0, 1, 2])
    with pytest.raises(RuntimeError, match=r"submodules in training mode \(1\)"):
        call(m, x, y)
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "a refused call must not move any buffer"


def test_one_hot_logits_are_not_taken_for_probabilities():
    """Issue 18, item 6: exactly one-hot rows (any scale) are valid logits; a real softmax is still refused."""
    class OneHot(nn.Module):
        def __init__(self, scale):
            super().__init__()
            self.scale = scale

        def forward(self, x):
            return self.scale * nn.functional.one_hot(x.flatten(1)[:, :10].argmax(1), 10).float()

    x = torch.rand(4, 1, 28, 28)
    for scale in (1.0, 10.0):
        assert attacks.check_model(OneHot(scale).eval(), x).shape == (4, 10)
    soft = nn.Sequential(nn.Flatten(), nn.Linear(784, 10), nn.Softmax(dim=1)).eval()
    with pytest.raises(ValueError, match="look like \\(log-\\)probabilities"):
        attacks.check_model(soft, x)
    logsoft = nn.Sequential(nn.Flatten(), nn.Linear(784, 10), nn.LogSoftmax(dim=1)).eval()
    with pytest.raises(ValueError, match="look like \\(log-\\)probabilities"):
        attacks.check_model(logsoft, x)


def test_strong_checks_are_the_tables_notebook_04_reuses(tmp_path, monkeypatch):
    """A background run's one-model agreement and masking tables are found by notebook 04's per_model_rows."""
    pytest.importorskip("pyautoattack")
    monkeypatch.setenv("CROSSHOLDER_RESULTS", str(tmp_path))
    lin, x, y, d = linear_multiclass(n=8)
    std = sweeps.data_mod.MEAN_STD["mnist"][1]
    grid = [0.0, float(np.median(d.numpy())) / std, 2 * float(d.max()) / std]
    per = _strong_frame(strongest=[2] * 4).iloc[:0]
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
