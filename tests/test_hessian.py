"""Hessian routines against exact float64 oracles: full Hessians from ``torch.func.hessian``."""

from __future__ import annotations

import itertools

import pytest
import torch

from crossholder import hessian as hs
from crossholder import models

F64 = torch.float64


def exact_hessians(model, x, t, j):
    """Full input Hessians of the margins, (B, d, d), by torch.func.hessian (independent of our code)."""
    out = []
    for b in range(x.shape[0]):
        def f(xx, b=b):
            z = model(xx.reshape((1,) + tuple(x.shape[1:])))[0]
            return z[t[b]] - z[j[b]]
        out.append(torch.func.hessian(f)(x[b].reshape(-1)))
    return torch.stack(out)


def spectral(Hs):
    return torch.linalg.eigvalsh(Hs).abs().amax(dim=1)


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(1)
    m = models.mlp(7, (16, 16), 4).double()
    x = torch.randn(6, 7, dtype=F64)
    t = torch.tensor([0, 1, 2, 3, 0, 1])
    j = torch.tensor([1, 2, 3, 0, 3, 0])
    return m, x, t, j, exact_hessians(m, x, t, j)


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(2)
    m = models.paper_cnn("mnist").double().eval()
    x = torch.rand(2, 1, 28, 28, dtype=F64)
    t = torch.tensor([3, 7])
    with torch.no_grad():
        _, j = hs.resolve_pairs(m(x), t, "runner_up")
    # full 784 x 784 Hessians column by column with autograd's double backward (torch.func.hessian
    # vectorizes all 784 columns at once: gigabytes in float64); full_hessian is itself checked
    # against torch.func.hessian on the small network below
    Hs = torch.stack([hs.full_hessian(m, x[b], t[b], j[b]) for b in range(2)])
    return m, x, t, j, Hs


def test_margin_and_grad(small):
    m, x, t, j, _ = small
    marg, g, jj = hs.margin_and_grad(m, x, t, j)
    z = m(x)
    assert torch.allclose(marg, z[torch.arange(6), t] - z[torch.arange(6), j])
    J = torch.func.jacrev(lambda xx: m(xx))(x)  # (B, K, B, d)
    ref = torch.stack([J[b, t[b], b] - J[b, j[b], b] for b in range(6)])
    assert torch.allclose(g, ref, atol=1e-12) and torch.equal(jj, j)


def test_runner_up_is_second_largest_logit(small):
    m, x, _, _, _ = small
    with torch.no_grad():
        z = m(x)
    t = z.argmax(1)
    _, j = hs.resolve_pairs(z, t, "runner_up")
    assert torch.equal(j, z.topk(2, dim=1).indices[:, 1])


@pytest.mark.parametrize("backend", hs.BACKENDS)
def test_hvp_matches_full_hessian(small, backend):
    m, x, t, j, Hs = small
    v = torch.randn_like(x)
    hv = hs.hvp(m, x, t, j, v, backend=backend)
    assert torch.allclose(hv, torch.einsum("bij,bj->bi", Hs, v), atol=1e-12, rtol=1e-10)
    op = hs.HVPOperator(m, x, t, j, backend=backend)
    assert torch.allclose(op(v), hv, atol=1e-12) and op.count == 1


def test_hvp_matches_finite_differences_on_cnn(cnn):
    """Central differences of the gradient: error O(h^2 |D^3 f|) + O(eps/h); bound 1e-6 relative at h=1e-4."""
    m, x, t, j, _ = cnn
    v = torch.randn_like(x)
    v = v / hs.flat_norm(v).view(-1, 1, 1, 1)
    h = 1e-4
    _, gp, _ = hs.margin_and_grad(m, x + h * v, t, j)
    _, gm, _ = hs.margin_and_grad(m, x - h * v, t, j)
    fd = (gp - gm) / (2 * h)
    hv = hs.hvp(m, x, t, j, v)
    rel = hs.flat_norm(hv - fd) / hs.flat_norm(hv)
    assert rel.max() < 1e-6, rel


def test_hvp_create_graph_differentiable_in_parameters(small):
    m, x, t, j, _ = small
    v = torch.randn_like(x)
    hv = hs.hvp(m, x, t, j, v, create_graph=True)
    hv.norm().backward()
    # every parameter but the last layer's bias (which H does not depend on) gets a gradient
    *inner, last_bias = list(m.parameters())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().max() > 0 for p in inner)
    assert last_bias.grad is None
    m.zero_grad(set_to_none=True)


@pytest.mark.parametrize("method,iters,kw", [("power", 300, {}), ("lanczos", 7, {}),
                                             ("ascent", 300, {"step": 50.0})])
def test_methods_converge_to_exact_spectral_norm_small(small, method, iters, kw):
    m, x, t, j, Hs = small
    exact = spectral(Hs)
    r = hs.operator_norm(m, x, t, j, method=method, iters=iters, **kw)
    rel = (r.norm - exact).abs() / exact
    assert rel.max() <= 1e-6, rel
    assert (r.norm <= exact * (1 + 1e-10)).all(), "every estimate is a lower bound"
    assert torch.allclose(hs.flat_norm(r.v), torch.ones(6, dtype=F64))
    # the direction attains the value it reports
    assert torch.allclose(hs.flat_norm(torch.einsum("bij,bj->bi", Hs, r.v)), r.norm, rtol=1e-6)
    assert r.history.shape[0] == len(r.history_hvps)
    assert (r.history[1:] >= r.history[:-1] - 1e-12).all(), "history is the best so far"


@pytest.mark.parametrize("method,iters,kw", [("lanczos", 40, {}), ("power", 400, {}),
                                             ("ascent", 200, {"step": 1e5})])
def test_methods_converge_on_paper_cnn(cnn, method, iters, kw):
    m, x, t, j, Hs = cnn
    exact = spectral(Hs)
    r = hs.operator_norm(m, x, t, "runner_up", method=method, iters=iters, **kw)
    assert torch.equal(r.j, j)
    rel = (r.norm - exact).abs() / exact
    assert rel.max() <= 1e-6, rel


def test_lanczos_beats_power_at_equal_products(cnn):
    m, x, t, j, Hs = cnn
    exact = spectral(Hs)
    lz = hs.operator_norm(m, x, t, j, method="lanczos", iters=10)
    pw = hs.operator_norm(m, x, t, j, method="power", iters=10)
    assert lz.hvps == pw.hvps == 10
    assert ((exact - lz.norm) / exact).max() < ((exact - pw.norm) / exact).max()


def test_hg_is_a_lower_bound_and_matches_oracle(small, cnn):
    for m, x, t, j, Hs in (small, cnn):
        g = torch.stack([torch.func.grad(lambda xx, b=b: (lambda z: z[t[b]] - z[j[b]])(
            m(xx.reshape((1,) + tuple(x.shape[1:])))[0]))(x[b].reshape(-1)) for b in range(x.shape[0])])
        ghat = g / g.norm(dim=1, keepdim=True)
        ref = torch.einsum("bij,bj->bi", Hs, ghat).norm(dim=1)
        hg = hs.hg_norm(m, x, t, j)
        assert torch.allclose(hg, ref, rtol=1e-10)
        assert (hg <= spectral(Hs) * (1 + 1e-12)).all()


def test_general_pq_ascent_is_lower_bound(small):
    m, x, t, j, Hs = small
    for p, q in [(2.0, 1.0), (3.0, 1.5), (1.5, 3.0)]:
        r = hs.operator_norm(m, x, t, j, p=p, q=q, iters=50, step=10.0)
        assert torch.allclose(hs.flat_norm(r.v, p), torch.ones(6, dtype=F64))
        val = torch.linalg.vector_norm(torch.einsum("bij,bj->bi", Hs, r.v), ord=q, dim=1)
        assert torch.allclose(val, r.norm, rtol=1e-8)


def test_inf_to_one_ascent_against_brute_force():
    """||H||_{inf->1} = max over sign vectors (d <= 12): never exceeded, reached on most cases."""
    hits, n = 0, 25
    S = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=10)), dtype=F64)
    for trial in range(n):
        torch.manual_seed(100 + trial)
        m = models.mlp(10, (12,), 3).double()
        x = torch.randn(1, 10, dtype=F64)
        t, j = torch.tensor([0]), torch.tensor([1])
        H = exact_hessians(m, x, t, j)[0]
        brute = (S @ H).abs().sum(1).max()
        r = hs.operator_norm(m, x, t, j, p=float("inf"), q=1.0, iters=20, step=100.0 / H.abs().max().item(),
                             seed=trial, restarts=8)
        assert r.norm[0] <= brute * (1 + 1e-12)
        assert hs.flat_norm(r.v, float("inf"))[0] == pytest.approx(1.0)
        hits += bool(r.norm[0] >= brute * (1 - 1e-9))
    assert hits >= 0.75 * n, f"reached the brute-force maximum on {hits}/{n}"


def test_restarts_keep_the_best(small):
    m, x, t, j, Hs = small
    one = hs.operator_norm(m, x, t, j, method="power", iters=3, seed=0)
    many = hs.operator_norm(m, x, t, j, method="power", iters=3, seed=0, restarts=4)
    assert (many.norm >= one.norm - 1e-15).all() and many.v.shape == x.shape


def test_float32_and_float64_agree(cnn):
    m, x, t, j, _ = cnn
    r64 = hs.operator_norm(m, x, t, j, method="lanczos", iters=20)
    r32 = hs.operator_norm(m.float(), x.float(), t, j, method="lanczos", iters=20)
    m.double()
    assert r32.norm.dtype == torch.float32 and r64.norm.dtype == F64
    assert torch.allclose(r32.norm.double(), r64.norm, rtol=1e-3)


@pytest.mark.parametrize("kwargs,match", [
    ({"p": 0.5}, "p=0.5 must be >= 1"),
    ({"q": 0.0}, "q=0.0 must be >= 1"),
    ({"iters": 0}, "iters=0 must be an integer >= 1"),
    ({"step": -1.0}, "step=-1.0"),
    ({"method": "newton"}, "method='newton'"),
    ({"method": "power", "p": 1.0}, "spectral norm only"),
    ({"restarts": 0}, "restarts=0"),
])
def test_bad_arguments(small, kwargs, match):
    m, x, t, j, _ = small
    with pytest.raises(ValueError, match=match):
        hs.operator_norm(m, x, t, j, **kwargs)


def test_bad_shapes_and_pairs(small):
    m, x, t, j, _ = small
    with pytest.raises(ValueError, match="v0 has shape"):
        hs.operator_norm(m, x, t, j, v0=torch.randn(3, 7, dtype=F64))
    with pytest.raises(ValueError, match="t must be an int64 tensor of shape"):
        hs.operator_norm(m, x, t[:3], j)
    with pytest.raises(ValueError, match="j equals t"):
        hs.operator_norm(m, x, t, t.clone())
    with pytest.raises(ValueError, match="j='second'"):
        hs.operator_norm(m, x, t, "second")
    with pytest.raises(TypeError, match="dtype"):
        hs.operator_norm(m, x.float(), t, j)
    with pytest.raises(ValueError, match="v has shape"):
        hs.hvp(m, x, t, j, torch.randn(6, 3, dtype=F64))


def test_full_hessian_matches_torch_func(small):
    m, x, t, j, Hs = small
    for b in range(3):
        assert torch.allclose(hs.full_hessian(m, x[b], t[b], j[b], chunk=3), Hs[b], atol=1e-12)


def test_hessian_spectrum_against_torch_func(small):
    m, x, t, j, Hs = small
    ev = hs.hessian_spectrum(m, x, t, j, chunk=3)
    assert ev.shape == (6, 7)
    ref = torch.linalg.eigvalsh(Hs)                                   # ascending, per example
    assert torch.allclose(ev.sort(dim=1).values, ref, atol=1e-10)
    assert bool((ev.abs()[:, :-1] >= ev.abs()[:, 1:]).all())          # largest modulus first
    assert torch.allclose(ev[:, 0].abs(), spectral(Hs), atol=1e-10)


def test_hessian_spectrum_runner_up_and_errors(small):
    m, x, _, _, _ = small
    with torch.no_grad():
        z = m(x)
    t = z.argmax(1)
    j = z.topk(2, dim=1).indices[:, 1]
    assert torch.allclose(hs.hessian_spectrum(m, x, t, "runner_up"), hs.hessian_spectrum(m, x, t, j), atol=0)
    with pytest.raises(ValueError, match="batch dimension"):
        hs.hessian_spectrum(m, x[0], t[:1], j[:1])
    with pytest.raises(ValueError, match="j equals t"):
        hs.hessian_spectrum(m, x, t, t)
