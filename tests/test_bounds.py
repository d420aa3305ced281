"""Theorem 2 measured (crossholder.bounds): the global curvature bound against exact float64 Hessians,
its exactness where the bound is attained, the radius against closed forms and verified attacks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from crossholder import attacks, bounds
from crossholder.models import Standardize

torch.set_default_dtype(torch.float32)


def _exact_norm(model: nn.Module, x: torch.Tensor, t: int, j: int) -> float:
    """‖H_{f_t - f_j}(x)‖₂ of one example from its full float64 Hessian (torch.func)."""
    shape = x.shape

    def margin(flat: torch.Tensor) -> torch.Tensor:
        out = model(flat.reshape((1,) + tuple(shape)))[0]
        return out[t] - out[j]

    H = torch.func.hessian(margin)(x.reshape(-1).double())
    return float(torch.linalg.eigvalsh(0.5 * (H + H.T)).abs().max())


def _mlp(act: type[nn.Module], seed: int, d: int = 5, hidden=(7, 6), k: int = 3, **act_kw) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    w = d
    for h in hidden:
        layers += [nn.Linear(w, h), act(**act_kw)]
        w = h
    layers.append(nn.Linear(w, k))
    return nn.Sequential(*layers).double().eval()


def _cnn(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(Standardize(0.2, 0.5), nn.Conv2d(1, 3, 3), nn.SiLU(), nn.Conv2d(3, 4, 3, stride=2),
                         nn.Tanh(), nn.Flatten(), nn.Linear(4, 5), nn.Softplus(beta=2.0),
                         nn.Linear(5, 4)).double().eval()


# ---------------------------------------------------------------- the constants
@pytest.mark.parametrize("module", [nn.SiLU(), nn.Softplus(), nn.Softplus(beta=3.0), nn.Tanh(), nn.Sigmoid()],
                         ids=lambda m: repr(m))
def test_activation_constants_are_the_suprema(module):
    """sup |σ'| and sup |σ''| on a fine float64 grid: never above the constants, and within 1e-6 of them."""
    x = torch.linspace(-40, 40, 800_001, dtype=torch.float64, requires_grad=True)
    (d1,) = torch.autograd.grad(module(x).sum(), x, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), x)
    g, h = bounds.activation_bounds(module)
    for grid_max, const in ((d1.abs().max().item(), g), (d2.abs().max().item(), h)):
        assert grid_max <= const and const - grid_max < 1e-6, (grid_max, const)


def test_spectral_norm_is_the_largest_singular_value_of_the_explicit_matrix():
    torch.manual_seed(0)
    cases = [(nn.Linear(9, 4), (9,)), (nn.Linear(4, 9), (4,)), (nn.Conv2d(2, 3, 3), (2, 6, 6)),
             (nn.Conv2d(3, 2, 3, stride=2), (3, 7, 7)), (nn.Conv2d(1, 4, 2, padding=1), (1, 5, 5))]
    for layer, shape in cases:
        layer = layer.double()
        lin = bounds._linear_part(layer)
        n = math.prod(shape)
        W = lin(torch.eye(n, dtype=torch.float64).reshape((n,) + shape)).reshape(n, -1).T   # (n_out, n_in)
        exact = float(torch.linalg.matrix_norm(W.detach(), 2))
        with torch.no_grad():
            out_shape = tuple(layer(torch.zeros((1,) + shape, dtype=torch.float64)).shape[1:])
        got = bounds.spectral_norm(lin, shape, out_shape, batch=5)
        assert exact <= got <= exact * (1 + 1e-8), (layer, exact, got)


# ---------------------------------------------------------------- the global bound is sound
@pytest.mark.parametrize("act,kw", [(nn.SiLU, {}), (nn.Softplus, {"beta": 2.0}), (nn.Tanh, {}), (nn.Sigmoid, {})],
                         ids=["silu", "softplus", "tanh", "sigmoid"])
def test_the_bound_is_never_below_the_exact_norm(act, kw):
    """At random points and at points found by curvature ascent, for every pair (t, j)."""
    for seed in range(3):
        model = _mlp(act, seed, **kw)
        Kb = bounds.curvature_bounds(model)
        assert Kb.shape == (3, 3) and (Kb.diagonal() == 0).all()
        gen = torch.Generator().manual_seed(seed)
        xs = torch.randn(6, 5, generator=gen, dtype=torch.float64) * 2
        for t in range(3):
            for j in range(3):
                if t == j:
                    continue
                T = torch.full((len(xs),), t)
                k_hat, gam = bounds._ball_curvature(model, xs, T, j, torch.full((len(xs),), 3.0, dtype=torch.float64),
                                                    steps=30, restarts=2, step=0.2, seed=seed, gamma0=None)
                for x in list(xs) + list(xs + gam):
                    assert _exact_norm(model, x, t, j) <= Kb[t, j]
                assert (k_hat <= Kb[t, j]).all()


def test_the_bound_is_sound_on_a_small_cnn():
    model = _cnn(0)
    Kb = bounds.curvature_bounds(model, (1, 6, 6))
    gen = torch.Generator().manual_seed(1)
    for x in torch.rand(5, 1, 6, 6, generator=gen, dtype=torch.float64):
        for t, j in ((0, 1), (2, 3), (3, 0)):
            assert _exact_norm(model, x, t, j) <= Kb[t, j]


def test_the_bound_is_exact_where_it_is_attained():
    """One hidden SiLU layer with W1 = a·I and no bias: at x = 0 every σ''(z_k) = 1/2, so
    H = a² diag(u/2), u = W2ᵀ(e_t - e_j): ‖H‖ = a² max|u| / 2, which is the bound (sup|σ''| = 1/2,
    ‖W1‖ = a, ‖u‖_∞ exact). Also hidden width 1, where H = σ''(z) u w wᵀ."""
    torch.manual_seed(0)
    a, d = 1.7, 4
    first = nn.Linear(d, d, bias=False)
    first.weight.data = a * torch.eye(d)
    model = nn.Sequential(first, nn.SiLU(), nn.Linear(d, 3)).double().eval()
    Kb = bounds.curvature_bounds(model)
    x0 = torch.zeros(d, dtype=torch.float64)
    for t, j in ((0, 1), (1, 2), (2, 0)):
        exact = _exact_norm(model, x0, t, j)
        assert exact == pytest.approx(float(Kb[t, j]), rel=1e-8)
    narrow = nn.Sequential(nn.Linear(d, 1), nn.SiLU(), nn.Linear(1, 2)).double().eval()
    w, b = narrow[0].weight.data[0], narrow[0].bias.data[0]
    x_star = -b * w / (w @ w)                                  # z = w·x + b = 0, where |σ''| peaks
    assert _exact_norm(narrow, x_star, 0, 1) == pytest.approx(float(bounds.curvature_bounds(narrow)[0, 1]), rel=1e-8)


def test_the_bound_equals_its_formula_computed_from_explicit_matrices():
    """An independent implementation of the bound (dense matrices, SVD, numpy) on a deep network that mixes
    activations with different sup|σ'| (Sigmoid 1/4, Tanh 1, Softplus(β=3) 1), an eval-mode batch norm and
    two merged Linears: curvature_bounds computes exactly that formula (module docstring)."""
    import numpy as np

    torch.manual_seed(3)
    bn = nn.BatchNorm1d(6)
    bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 1.5)
    model = nn.Sequential(nn.Linear(4, 6), bn, nn.Sigmoid(), nn.Linear(6, 5), nn.Linear(5, 7), nn.Tanh(),
                          nn.Linear(7, 6), nn.Softplus(beta=3.0), nn.Linear(6, 3)).double().eval()
    w = lambda m: m.weight.detach().numpy()  # noqa: E731
    scale = np.diag((bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().numpy())
    W = [scale @ w(model[0]), w(model[4]) @ w(model[3]), w(model[6]), w(model[8])]
    A = [np.abs(scale) @ np.abs(w(model[0])), np.abs(w(model[4])) @ np.abs(w(model[3])), np.abs(w(model[6])),
         np.abs(w(model[8]))]                                  # the elementwise bound's |W|: product of |pieces|
    acts = [bounds.activation_bounds(m) for m in (model[2], model[5], model[7])]
    norms = [np.linalg.svd(m, compute_uv=False)[0] for m in W]
    got = bounds.curvature_bounds(model).numpy()
    for t in range(3):
        for j in range(3):
            if t == j:
                continue
            c = np.zeros(3)
            c[t], c[j] = 1.0, -1.0
            u = W[3].T @ c                                      # u_2 = W_4ᵀ c
            inf = {2: np.abs(u).max()}
            r = np.abs(u)
            for k in (2, 1):                                    # r_{k-1} = |W_k|ᵀ (g_k r_k)
                r = A[k].T @ (acts[k][0] * r)
                inf[k - 1] = r.max()
            total = 0.0
            for k in range(3):
                jac = norms[0] * np.prod([acts[i - 1][0] * norms[i] for i in range(1, k + 1)])
                l2 = np.linalg.norm(u) * np.prod([acts[i][0] * norms[i] for i in range(k + 1, 3)])
                total += acts[k][1] * jac ** 2 * min(inf[k], l2)
            assert got[t, j] == pytest.approx(total, rel=1e-8), (t, j)


def test_softplus_with_a_negative_beta_is_refused():
    with pytest.raises(ValueError, match="beta"):
        bounds.curvature_bound(nn.Sequential(nn.Linear(3, 3), nn.Softplus(beta=-2.0), nn.Linear(3, 2)))


# ---------------------------------------------------------------- the radius
class _Quadratic(nn.Module):
    """Logits (q(x), 0) with q(x) = a + bᵀx + (κ/2)‖x‖²: the margin's Hessian is κ·I everywhere."""

    def __init__(self, a: float, b: torch.Tensor, kappa: float) -> None:
        super().__init__()
        self.a, self.b, self.kappa = a, nn.Parameter(b, requires_grad=False), kappa

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        q = self.a + flat @ self.b + 0.5 * self.kappa * (flat * flat).sum(1)
        return torch.stack([q, torch.zeros_like(q)], 1)


@pytest.mark.filterwarnings("ignore::crossholder.guards.ZeroCurvatureWarning")   # no activation modules
@pytest.mark.parametrize("kappa", [0.5, 3.0, -2.0])
def test_the_radius_of_a_quadratic_margin_is_the_closed_form(kappa):
    gen = torch.Generator().manual_seed(0)
    b = torch.randn(6, generator=gen, dtype=torch.float64)
    model = _Quadratic(4.0, b, kappa).double().eval()
    x = torch.rand(5, 6, generator=gen, dtype=torch.float64) * 0.3
    f = 4.0 + x @ b + 0.5 * kappa * (x * x).sum(1)
    G = (b + kappa * x).norm(dim=1)
    k = abs(kappa)
    closed = (-G + torch.sqrt(G * G + 2 * k * f)) / k            # the root of (k/2) r² + G r - f = 0
    assert (f > 0).all()
    for curvature in ("point", "ball"):
        res = bounds.theorem2_radius(model, x, curvature=curvature, steps=3)
        assert torch.allclose(res.radius, closed, rtol=1e-7), (curvature, res.radius, closed)
        assert torch.allclose(res.K[:, 1], torch.full((5,), k, dtype=torch.float64), rtol=1e-7)
        assert not res.certified and (res.pred == 0).all()
    res = bounds.theorem2_radius(model, x, curvature="global", K_global=torch.tensor([[0.0, k], [k, 0.0]]))
    assert res.certified and torch.allclose(res.radius, closed, rtol=1e-9)
    with pytest.raises(ValueError, match="K_global"):
        bounds.theorem2_radius(model, x, curvature="global", K_global=torch.zeros(3, 3))


def test_the_global_radius_is_below_every_verified_witness():
    """A small SiLU network trained on a separable problem in [0, 1]^d: PGD's verified witnesses are
    never shorter than the certified radius; and global <= ball <= point on every image."""
    torch.manual_seed(0)
    d = 8
    x = torch.rand(512, d)
    y = (x[:, :4].sum(1) > x[:, 4:].sum(1)).long() + (x[:, 0] > 0.8).long()
    model = nn.Sequential(nn.Linear(d, 16), nn.SiLU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(200):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    xs = x[:40]
    Kb = bounds.curvature_bounds(model)
    glob = bounds.theorem2_radius(model, xs, curvature="global", K_global=Kb)
    ball = bounds.theorem2_radius(model, xs, curvature="ball", steps=5)
    point = bounds.theorem2_radius(model, xs, curvature="point")
    assert (glob.radius > 0).any()
    assert (glob.radius <= ball.radius + 1e-6).all() and (ball.radius <= point.radius + 1e-6).all()
    pred = model(xs).argmax(1)
    for eps in (0.05, 0.1, 0.2, 0.4, 0.8):
        adv = attacks.pgd(model, xs, pred, eps, steps=40, restarts=2, seed=0)
        hit = adv.success & (adv.norm > 0)
        assert (adv.norm[hit].double() >= glob.radius[hit]).all(), eps


@pytest.mark.filterwarnings("ignore::crossholder.guards.ZeroCurvatureWarning")
def test_the_paper_cnn_bound_runs_and_names_what_it_cannot_bound():
    from crossholder.models import paper_cnn

    model = paper_cnn("mnist").eval()
    with pytest.raises(ValueError, match="input_shape"):
        bounds.curvature_bounds(model)
    relu = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"model\[1\] is ReLU.*second derivative"):
        bounds.curvature_bound(relu)
    pool = nn.Sequential(nn.Conv2d(1, 2, 3), nn.SiLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match=r"model\[2\] is MaxPool2d"):
        bounds.curvature_bound(pool, (1, 6, 6))
    bn = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.SiLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"model\[1\] \(BatchNorm1d\) is in training mode"):
        bounds.curvature_bound(bn)
    bn.eval()
    assert bounds.curvature_bound(bn) > 0                      # eval-mode batch norm is affine
    with pytest.raises(ValueError, match="model='Module'|an nn.Sequential"):
        bounds.curvature_bound(_Quadratic(1.0, torch.zeros(3), 1.0), (3,))
    with pytest.raises(ValueError, match="curvature='exact'"):
        bounds.theorem2_radius(relu.eval(), torch.rand(2, 4), curvature="exact")
    with pytest.raises(ValueError, match="grid="):
        bounds.theorem2_radius(relu.eval(), torch.rand(2, 4), curvature="ball", grid=(0.5, 0.25))
    with pytest.raises(ValueError, match="non-finite"):
        bounds.theorem2_radius(relu.eval(), torch.tensor([[float("nan"), 0, 0, 0]]), curvature="point")


def test_the_bounds_table_resumes_and_checks_every_certificate(tmp_path, monkeypatch):
    """bounds_tables at smoke: a registered model, its strongest evaluation, then the table in two pieces."""
    import numpy as np
    import pandas as pd

    from crossholder import bounds_tables, evaluation, training

    monkeypatch.setenv("CROSSHOLDER_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("CROSSHOLDER_SCRATCH", str(tmp_path / "scratch"))
    training.train(training.final_config("mnist", "cross_holder", profile="smoke"), progress=False, register=True)
    with pytest.raises(FileNotFoundError, match="strongest evaluation"):
        bounds_tables.evaluate_bounds("mnist", "cross_holder", n=4, chunk=2, profile="smoke", progress=False)
    evaluation.evaluate_registered("mnist", "cross_holder", profile="smoke", progress=False)   # its 32 images
    table, state = bounds_tables.evaluate_bounds("mnist", "cross_holder", n=4, chunk=2, profile="smoke",
                                                 until=2, progress=False)
    assert table is None and state["rows_done"] == 2
    table, side = bounds_tables.evaluate_bounds("mnist", "cross_holder", n=4, chunk=2, profile="smoke",
                                                progress=False)
    assert list(table["index"]) == [0, 1, 2, 3] and side["global_violations"] == 0
    ok = table[table["correct"]]
    assert len(ok) > 0
    assert (ok["radius_global"] <= ok["witness_norm"]).all()
    assert (table["radius_global"] <= table["radius_ball"] + 1e-6).all()
    assert (table["radius_ball"] <= table["radius_point"] + 1e-6).all()
    assert (table["K_global"] >= table["hessian_norm"]).all()
    csv = tmp_path / "results" / "variants" / "smoke" / "mnist" / "bounds" / f"cross_holder-{side['run_id']}.csv"
    assert csv.exists() and not list((tmp_path / "scratch").glob("bounds-*"))
    again, _ = bounds_tables.evaluate_bounds("mnist", "cross_holder", n=4, chunk=2, profile="smoke", progress=False)
    pd.testing.assert_frame_equal(again, table)
    # the guard: a certified radius above a verified witness on a correctly classified image is a bug
    csv.unlink()
    csv.with_suffix(".json").unlink()
    monkeypatch.setattr(bounds_tables, "_chunk_rows", lambda model, x, y, start, K, w: table.iloc[start:start + len(x)]
                        .assign(witness_norm=np.where(table["correct"].iloc[start:start + len(x)], 1e-12, np.inf)))
    with pytest.raises(AssertionError, match="certified radius above a verified witness"):
        bounds_tables.evaluate_bounds("mnist", "cross_holder", n=4, chunk=2, profile="smoke", progress=False)


def test_the_notebook_tables_read_what_is_there(tmp_path):
    """summary_table, accuracy_curves and paired_radii on two hand-made tables (notebook 10's reading)."""
    import json

    import numpy as np
    import pandas as pd

    from crossholder import bounds_tables

    res = tmp_path / "results"
    (res / "mnist" / "bounds").mkdir(parents=True)
    (res / "models.json").write_text(json.dumps({"mnist/cross_holder": {"run_id": "a"},
                                                 "mnist/cross_lipschitz": {"run_id": "b"}}))
    base = {"index": [0, 1, 2, 3], "label": [1, 2, 3, 4], "pred": [1, 2, 3, 5], "correct": [True, True, True, False],
            "hessian_norm": [1.0, 2.0, 4.0, 1.0], "K_global": [100.0, 100.0, 100.0, 100.0], "R_ball": [0.1] * 4}
    a = pd.DataFrame({**base, "radius_global": [0.01, 0.02, 0.03, 0.0], "radius_ball": [0.4, 0.6, 0.2, 0.0],
                      "radius_point": [0.5, 0.9, 0.3, 0.0], "witness_norm": [0.45, 1.0, np.inf, 0.0]})
    b = a.assign(radius_ball=[0.3, 0.7, 0.1, 0.0])
    for name, t in (("cross_holder-a", a), ("cross_lipschitz-b", b)):
        t.to_csv(res / "mnist" / "bounds" / f"{name}.csv", index=False)
        (res / "mnist" / "bounds" / f"{name}.json").write_text(json.dumps({"K_global_max": 100.0}))
    s = bounds_tables.summary_table(tmp_path).set_index(["dataset", "defense"])
    ch = s.loc[("mnist", "cross_holder")]
    assert ch["done"] and ch["correct"] == 3 and ch["median_radius_ball"] == 0.4
    assert ch["median_K_global_over_hessian_norm"] == 50.0          # 100 / (1, 2, 4) -> median 50
    assert ch["radius_point_above_witness"] == 1 and ch["radius_global_above_witness"] == 0
    assert not s.loc[("fashion_mnist", "cross_holder")]["done"]
    cv = bounds_tables.accuracy_curves(a, [0.0, 0.5]).set_index(["eps_pixel", "curve"])["accuracy"]
    assert cv[(0.0, "radius_global")] == 0.75 and cv[(0.5, "radius_ball")] == 0.25
    assert cv[(0.5, "strongest")] == 0.5 and cv[(0.5, "radius_point")] == 0.25
    p = bounds_tables.paired_radii(a, b, "radius_ball")
    assert (p["n"], p["a_larger"], p["b_larger"], p["ties"]) == (3, 2, 1, 0)
    with pytest.raises(ValueError, match="same images"):
        bounds_tables.paired_radii(a, b.iloc[::-1], "radius_ball")
