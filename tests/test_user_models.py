"""The library on a user's own model (issue 18): zero-Hessian networks, batch-norm layers, a small model zoo.

Oracles: the input Hessian of the margin ``f_t - f_j`` from ``torch.autograd.functional.hessian``
in float64 (independent of the library's products), its largest |eigenvalue| the operator norm.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from crossholder import attacks, guards, hessian, regularizers

F64 = torch.float64


def _oracle_norm(model, x, t, j):
    """max |λ| of the exact float64 input Hessian of f_t - f_j at each example of x (B, *S)."""
    out = []
    for b in range(x.shape[0]):
        def f(xx):
            z = model(xx.unsqueeze(0))[0]
            return z[t[b]] - z[j[b]]

        H = torch.autograd.functional.hessian(f, x[b], vectorize=True).reshape(x[b].numel(), -1)
        out.append(torch.linalg.eigvalsh((H + H.T) / 2).abs().max())
    return torch.stack(out)


def _pairs(model, x):
    with torch.no_grad():
        z = model(x)
    t = z.argmax(1)
    j = z.scatter(1, t[:, None], -float("inf")).argmax(1)
    return t, j


# ---------------------------------------------------------------- a zero input Hessian (failing input 1)
@pytest.mark.filterwarnings("ignore::crossholder.guards.ZeroCurvatureWarning")
@pytest.mark.parametrize("backend", hessian.BACKENDS)
def test_a_linear_model_has_a_zero_hessian_everywhere(backend):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(784, 10)).eval()
    x, y = torch.rand(4, 784), torch.tensor([0, 1, 2, 3])
    hv = hessian.hvp(m, x, y, "runner_up", torch.randn_like(x), backend=backend)
    assert hv.shape == (4, 784) and bool((hv == 0).all())
    for method in hessian.METHODS:
        r = hessian.operator_norm(m, x, y, "runner_up", method=method, backend=backend)
        assert r.norm.tolist() == [0.0] * 4, method
    assert hessian.hg_norm(m, x, y, "runner_up", backend=backend).tolist() == [0.0] * 4


@pytest.mark.filterwarnings("ignore::crossholder.guards.ZeroCurvatureWarning")
@pytest.mark.parametrize("inner", regularizers.INNER)
def test_regularized_loss_of_a_linear_model_is_ce_plus_the_gradient_term(inner):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(784, 10)).eval()
    x, y = torch.rand(4, 784), torch.tensor([0, 1, 2, 3])
    out = regularizers.regularized_loss(m, x, y, lam1=0.1, lam2=1.0, classes="runner_up", inner=inner, inner_iters=2)
    ce = nn.functional.cross_entropy(m(x), y)
    assert float(out.hess_term) == 0.0
    assert out.loss.item() == pytest.approx((ce + 0.1 * out.grad_term).item(), rel=1e-6)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())


# ---------------------------------------------------------------- piecewise linear (failing input 2)
def test_a_piecewise_linear_model_warns_once_and_its_norm_is_zero():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10)).eval()
    x, y = torch.rand(4, 784), torch.tensor([0, 1, 2, 3])
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        r = hessian.operator_norm(m, x, y, "runner_up", method="power")
        hessian.hvp(m, x, y, "runner_up", torch.randn_like(x))
        regularizers.regularized_loss(m, x, y, lam1=0.1, lam2=1.0, classes="runner_up")
    mine = [x for x in w if issubclass(x.category, guards.ZeroCurvatureWarning)]
    assert len(mine) == 1, "one warning per model"
    assert "ReLU" in str(mine[0].message) and "SiLU" in str(mine[0].message)
    assert r.norm.tolist() == [0.0] * 4
    with warnings.catch_warnings():
        warnings.simplefilter("error", guards.ZeroCurvatureWarning)   # a smooth model: no warning
        smooth = nn.Sequential(nn.Linear(784, 64), nn.SiLU(), nn.Linear(64, 10)).eval()
        assert float(hessian.operator_norm(smooth, x, y, "runner_up", method="power").norm.min()) > 0
        # Cross-Lipschitz (lam2 = 0) on a ReLU model is legitimate: no warning
        regularizers.regularized_loss(nn.Sequential(nn.Linear(784, 10), nn.ReLU()), x, y, lam1=0.1, lam2=0.0)


# ---------------------------------------------------------------- batch norm (failing input 3)
def _bn_mlp():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(20, 32), nn.BatchNorm1d(32), nn.Tanh(), nn.Linear(32, 5)).train()
    with torch.no_grad():
        m[1].running_mean.normal_()
        m[1].running_var.uniform_(0.5, 2.0)
    return m


@pytest.mark.parametrize("backend", ["auto", "reverse", "func"])
def test_batch_norm_in_training_mode_gives_per_example_curvature_and_leaves_the_buffers(backend):
    m = _bn_mlp()
    x = torch.randn(16, 20)
    t, j = torch.zeros(16, dtype=torch.int64), torch.ones(16, dtype=torch.int64)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    a = hessian.operator_norm(m, x, t, j, method="lanczos", iters=20, backend=backend).norm
    x2 = x.clone()
    x2[1:] = torch.randn(15, 20)
    b = hessian.operator_norm(m, x2, t, j, method="lanczos", iters=20, backend=backend).norm
    assert float(a[0]) == pytest.approx(float(b[0]), rel=1e-5), "example 0 must not depend on the other rows"
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items()), "no running statistic moved"
    assert m.training and m[1].training, "the user's modes are restored"
    m.eval()
    ev = hessian.operator_norm(m, x, t, j, method="lanczos", iters=20, backend=backend).norm
    assert float(ev[0]) == pytest.approx(float(a[0]), rel=1e-5), "the running statistics, as in eval mode"
    mm = _bn_mlp().double().eval()
    assert float(a[0]) == pytest.approx(float(_oracle_norm(mm, x[:1].double(), t, j)[0]), rel=1e-4)


def test_a_batch_norm_model_trains_with_cross_holder_end_to_end():
    """The cross-entropy's forward pass trains the running statistics once per step; the curvature terms
    use them (third-order derivatives through the frozen layer work: torch's own kernel stops at two)."""
    m = _bn_mlp()
    x, y = torch.randn(16, 20), torch.randint(0, 5, (16,))
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    n0 = int(m[1].num_batches_tracked)
    for step in range(3):
        out = regularizers.regularized_loss(m, x, y, lam1=0.1, lam2=1.0, classes="runner_up", inner="power",
                                            inner_iters=2)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        assert float(out.hess_term) > 0 and torch.isfinite(out.loss)
        assert int(m[1].num_batches_tracked) - n0 == step + 1, "running statistics advance once per step"
    with torch.no_grad():
        m.train()
        want = nn.functional.cross_entropy(m(x), y)
    m[1].num_batches_tracked -= 1                      # the check's own forward pass advanced them once
    out = regularizers.regularized_loss(m, x, y, lam1=0.1, lam2=1.0, classes="runner_up", inner="power")
    assert float(out.ce) == pytest.approx(float(want), rel=1e-5), "the cross-entropy uses batch statistics"


def test_batch_norm_without_running_statistics_is_refused_by_name():
    m = nn.Sequential(nn.Linear(20, 8), nn.BatchNorm1d(8, track_running_stats=False), nn.Tanh(),
                      nn.Linear(8, 3)).train()
    x = torch.randn(4, 20)
    t, j = torch.zeros(4, dtype=torch.int64), torch.ones(4, dtype=torch.int64)
    with pytest.raises(ValueError, match="BatchNorm1d at '1' keeps no running statistics"):
        hessian.operator_norm(m, x, t, j, method="power")
    with pytest.raises(ValueError, match="BatchNorm1d at '1' keeps no running statistics"):
        regularizers.regularized_loss(m, x, t, lam1=0.1, lam2=1.0, classes="runner_up")


# ---------------------------------------------------------------- a small zoo of user models
def _zoo():
    torch.manual_seed(0)
    return {
        "silu_cnn": (nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.SiLU(), nn.Conv2d(4, 4, 3, stride=2),
                                   nn.SiLU(), nn.Flatten(), nn.Linear(4 * 2 * 2, 10)), (3, 6, 6)),
        "softplus_mlp": (nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.Softplus(), nn.Linear(16, 10)), (1, 3, 4)),
        "layernorm": (nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.LayerNorm(16), nn.GELU(), nn.Linear(16, 10)),
                      (1, 3, 4)),
        "bn_tanh_cnn": (nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Tanh(), nn.Flatten(),
                                      nn.Linear(4 * 4 * 4, 10)), (3, 6, 6)),
    }


@pytest.mark.parametrize("name", list(_zoo()))
def test_zoo_operator_norm_matches_the_float64_oracle_and_pgd_runs(name):
    model, shape = _zoo()[name]
    model = model.double().eval()
    x = torch.rand((3,) + shape, dtype=F64)
    t, j = _pairs(model, x)
    want = _oracle_norm(model, x, t, j)
    got = hessian.operator_norm(model, x, t, j, method="lanczos", iters=min(40, x[0].numel())).norm
    assert torch.allclose(got, want, rtol=1e-6), (got, want)
    assert float(want.min()) > 0
    out = regularizers.regularized_loss(model, x, t, lam1=0.1, lam2=1.0, classes="runner_up", inner="power")
    out.loss.backward()
    r = attacks.pgd(model, x, t, 0.3, steps=3, restarts=1)
    assert r.x_adv.shape == x.shape


def test_zoo_parameter_gradient_of_the_cross_holder_loss_matches_finite_differences():
    """d loss / d θ by autograd against central differences (float64), on the Softplus MLP, with the
    inner loop's direction fixed (inner_iters=0: the loss is then a smooth function of θ)."""
    model, shape = _zoo()["softplus_mlp"]
    model = model.double().eval()
    torch.manual_seed(1)
    x = torch.rand((4,) + shape, dtype=F64)
    y = torch.tensor([0, 1, 2, 3])
    v0 = torch.randn((4, 1) + shape, dtype=F64)

    def loss():
        return regularizers.regularized_loss(model, x, y, lam1=0.3, lam2=1.0, classes="runner_up", v0=v0,
                                             inner="power", inner_iters=0).loss

    w = model[1].weight
    model.zero_grad()
    loss().backward()
    g = w.grad.clone()
    h = 1e-6
    for idx in [(0, 0), (3, 5), (15, 11)]:
        with torch.no_grad():
            w[idx] += h
            up = float(loss())
            w[idx] -= 2 * h
            down = float(loss())
            w[idx] += h
        assert float(g[idx]) == pytest.approx((up - down) / (2 * h), rel=1e-5, abs=1e-8)


@pytest.mark.filterwarnings("ignore::crossholder.guards.ZeroCurvatureWarning")
def test_resnet18_with_silu_and_batch_norm():
    """torchvision's resnet18 (ReLU replaced by SiLU, BatchNorm in training mode: the policy), 3 x 32 x 32,
    batch 2: a couple of products agree with finite differences of the input gradient."""
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    net = tv.models.resnet18(num_classes=10)

    def swap(mod):
        for name, child in mod.named_children():
            if isinstance(child, nn.ReLU):
                setattr(mod, name, nn.SiLU())
            else:
                swap(child)

    swap(net)
    net = net.double().train()
    x = torch.rand(2, 3, 32, 32, dtype=F64)
    t, j = torch.tensor([0, 1]), torch.tensor([1, 2])
    v = torch.randn_like(x)
    before = {k: b.clone() for k, b in net.named_buffers()}
    hv = hessian.hvp(net, x, t, j, v, backend="reverse")
    assert all(torch.equal(before[k], b) for k, b in net.named_buffers())

    def grad_at(xx):
        with guards.frozen_batch_stats(net):
            return hessian.margin_and_grad(net, xx, t, j)[1]

    h = 1e-5
    fd = (grad_at(x + h * v) - grad_at(x - h * v)) / (2 * h)
    assert torch.allclose(hv, fd, rtol=1e-4, atol=1e-6 * float(fd.abs().max()))
    r = hessian.operator_norm(net, x, t, j, method="power", iters=2, backend="reverse")
    assert r.norm.shape == (2,) and bool((r.norm > 0).all())


def test_the_default_backend_picks_itself_and_explicit_is_an_override():
    torch.manual_seed(0)
    paper_like = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.SiLU(), nn.Linear(8, 10)).double().eval()
    other = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.Softplus(), nn.Linear(8, 10)).double().eval()
    x = torch.rand(2, 1, 3, 4, dtype=F64)
    t, j = torch.tensor([0, 1]), torch.tensor([1, 2])
    assert hessian.HVPOperator(paper_like, x, t, j).backend == "explicit"
    assert hessian.HVPOperator(other, x, t, j).backend == "reverse"
    with pytest.raises(ValueError, match="backend='explicit' supports nn.Sequential chains"):
        hessian.hvp(other, x, t, j, torch.randn_like(x), backend="explicit")
    with pytest.raises(ValueError, match="backend='fast'; allowed values: 'auto', 'explicit', 'reverse', 'func'"):
        hessian.operator_norm(other, x, t, j, backend="fast")


def test_guard_review_cases():
    """Restarts, a batch-norm subclass with its own forward, InstanceNorm's running statistics, nesting."""
    m = _bn_mlp()
    x = torch.randn(8, 20)
    t, j = torch.zeros(8, dtype=torch.int64), torch.ones(8, dtype=torch.int64)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    hessian.operator_norm(m, x, t, "runner_up", method="power", iters=3, restarts=2)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())

    class BNAct(nn.BatchNorm1d):                      # batch norm fused with an activation (timm-like)
        def forward(self, x):
            return torch.tanh(super().forward(x))

    fused = nn.Sequential(nn.Linear(20, 8), BNAct(8), nn.Linear(8, 3)).train()
    with pytest.raises(ValueError, match="BNAct at '1' is a batch-norm subclass with a forward of its own"):
        hessian.operator_norm(fused, x, t, j, method="power")

    inorm = nn.Sequential(nn.Conv2d(1, 2, 3), nn.InstanceNorm2d(2, track_running_stats=True), nn.SiLU(),
                          nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).train()
    xi = torch.rand(4, 1, 6, 6)
    buf = {k: v.clone() for k, v in inorm.state_dict().items()}
    hessian.operator_norm(inorm, xi, t[:4], j[:4], method="power", iters=2, backend="reverse")
    assert all(torch.equal(buf[k], v) for k, v in inorm.state_dict().items())

    with guards.frozen_batch_stats(m), guards.frozen_batch_stats(m):
        pass
    assert "forward" not in m[1].__dict__, "the layer's own forward is back after nested blocks"


@pytest.mark.filterwarnings("ignore::crossholder.guards.ZeroCurvatureWarning")
def test_backward_step_and_logits_on_edge_models():
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Linear(784, 10)).eval()
    x, y = torch.rand(4, 784), torch.tensor([0, 1, 2, 3])
    out = regularizers.regularized_loss(lin, x, y, lam1=0.1, lam2=1.0, classes="runner_up", inner="power",
                                        backward_step=True)
    out.loss.backward()
    assert out.next_directions().shape == (4, 1, 784), "a zero Hessian still gives (zero) next directions"
    m = _bn_mlp()
    xb, yb = torch.randn(16, 20), torch.randint(0, 5, (16,))
    out = regularizers.regularized_loss(m, xb, yb, lam1=0.1, lam2=1.0, classes="runner_up", inner="power")
    assert float(nn.functional.cross_entropy(out.logits, yb)) == pytest.approx(float(out.ce), rel=1e-6), \
        "the returned logits are the ones the cross-entropy used"


def test_check_parameters_reads_what_papermill_injected_and_converts_floats():
    from crossholder import notebooks

    decl = {"profile": str, "seed": int, "eps": float}
    ns = {"__annotations__": decl, "profile": "smoke", "seed": 0, "eps": 5,
          "In": ["", "profile: str = 'cpu'", "# Parameters\nprofile = \"smoke\"\neps = 5\n", ""]}
    notebooks.check_parameters(ns)
    assert ns["eps"] == 5.0 and isinstance(ns["eps"], float)
    ns["In"][2] = "# Parameters\nprofile = \"smoke\"\nsed = 3\n"
    with pytest.raises(ValueError, match="unknown parameter 'sed'; this notebook's parameters: eps, profile, seed"):
        notebooks.check_parameters(ns)
    ns["In"][2], ns["later"] = "table = make_table()", 3             # a re-run in the same kernel: fine
    notebooks.check_parameters(ns)
    ns["seed"] = True
    with pytest.raises(TypeError, match="parameter seed=True is a bool; expected int"):
        notebooks.check_parameters(ns)
