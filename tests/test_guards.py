"""Bad input and gradient contexts: every entry point gives the right answer or a clear error before any work
(issue 33): non-finite pixels, probability outputs, empty batches, no_grad / inference_mode, half precision."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from crossholder import attacks, guards, hessian, models, regularizers, sweeps


@pytest.fixture(scope="module")
def case():
    torch.manual_seed(0)
    m = models.paper_cnn("mnist").eval()
    x = torch.rand(6, 1, 28, 28)
    with torch.no_grad():
        y = m(x).argmax(1)
    return m, x, y


def _entry_points(m, x, y):
    """Every kind of public entry point, called on (m, x, y)."""
    return {
        "attacks.pgd": lambda: attacks.pgd(m, x, y, 1.0, steps=2, restarts=1),
        "attacks.apgd": lambda: attacks.apgd(m, x, y, 1.0, n_iter=2),
        "attacks.fab": lambda: attacks.fab(m, x, y, n_iter=2),
        "attacks.square": lambda: attacks.square(m, x, y, 1.0, queries=2),
        "sweeps.sweep": lambda: sweeps.sweep(m, x, y, [0.0, 1.0], steps=2, restarts=1),
        "sweeps.robustness_curve": lambda: sweeps.robustness_curve(m, x, y, [0.0, 1.0], steps=2, restarts=1,
                                                                   progress=False),
        "hessian.margin_and_grad": lambda: hessian.margin_and_grad(m, x, y, "runner_up"),
        "hessian.operator_norm": lambda: hessian.operator_norm(m, x, y, "runner_up", method="power", iters=2),
        "hessian.hg_norm": lambda: hessian.hg_norm(m, x, y, "runner_up"),
        "regularizers.regularized_loss": lambda: regularizers.regularized_loss(m, x, y, lam1=0.1, lam2=0.1,
                                                                               classes="runner_up", inner="power",
                                                                               inner_iters=1),
        "regularizers.cure_loss": lambda: regularizers.cure_loss(m, x, y, gamma=1.0, h=0.5),
    }


ENTRY_POINTS = sorted(_entry_points(None, None, None))


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_pixels_are_refused(case, entry, value):
    """foolbox #257: one NaN pixel in image 2 of 6 passed the [0, 1] check and counted as robust."""
    m, x, y = case
    bad = x.clone()
    bad[2, 0, 5, 5] = value
    with pytest.raises(ValueError, match=r"non-finite values \(NaN or inf\) in 1 example\(s\), first at index \[2\]"):
        _entry_points(m, bad, y)[entry]()


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_probability_outputs_are_refused(case, entry):
    """foolbox #618, auto-attack #102: a final softmax, confident (one-hot rows) or not, any batch size."""
    m, x, y = case
    confident = nn.Sequential(m, nn.Linear(10, 10), nn.Softmax(dim=1)).eval()
    with torch.no_grad():
        confident[1].weight.copy_(1e4 * torch.eye(10))
        confident[1].bias.zero_()
        assert bool(((confident(x) == 0) | (confident(x) == 1)).all()), "saturated: exactly one-hot rows"
    for model, xb, yb in ((confident, x, y), (nn.Sequential(m, nn.Softmax(dim=1)).eval(), x[:1], y[:1]),
                          (nn.Sequential(m, nn.LogSoftmax(dim=1)).eval(), x, y)):
        with pytest.raises(ValueError, match=r"look like \(log-\)probabilities"):
            _entry_points(model, xb, yb)[entry]()


def test_a_functional_softmax_is_caught_by_its_values_in_a_batch_of_one(case):
    m, x, y = case

    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = m

        def forward(self, z):
            return torch.softmax(self.m(z), dim=1)

    for entry in ("attacks.pgd", "hessian.operator_norm", "regularizers.regularized_loss"):
        with pytest.raises(ValueError, match=r"look like \(log-\)probabilities"):
            _entry_points(Functional().eval(), x[:1], y[:1])[entry]()


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_empty_batches_get_one_clear_refusal(case, entry):
    """auto-attack #81: FAB raised IndexError, robustness_curve a concatenation error."""
    m, x, y = case
    with pytest.raises(ValueError, match=r"x is an empty batch \(shape \(0, 1, 28, 28\)\)"):
        _entry_points(m, x[:0], y[:0])[entry]()


def _differentiating_calls(m, x, y):
    """One call of each kind of entry point that differentiates, its result detached."""
    return {
        "margin_and_grad": hessian.margin_and_grad(m, x, y, "runner_up")[1],
        "operator_norm": hessian.operator_norm(m, x, y, "runner_up", method="power", iters=3, seed=0).norm,
        "regularized_loss": regularizers.regularized_loss(m, x, y, lam1=0.1, lam2=0.1, classes="runner_up",
                                                          inner="power", inner_iters=1,
                                                          v0=torch.ones(6, 1, 1, 28, 28)).loss.detach(),
        "pgd": attacks.pgd(m, x, y, 1.0, steps=3, restarts=1).norm,
    }


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode], ids=["no_grad", "inference_mode"])
def test_gradient_contexts_work_as_outside(case, context):
    """ART #498, advertorch #79: the policy is 'work as outside', also on tensors made in inference mode."""
    m, x, y = case
    outside = _differentiating_calls(m, x, y)
    with context():
        inside = _differentiating_calls(m, x.clone(), y.clone())   # inference tensors under inference_mode
        assert not torch.is_grad_enabled(), "the caller's context is restored"
    for k in outside:
        assert torch.equal(outside[k], inside[k]), k


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_half_precision_is_refused_naming_the_dtype(case, entry, dtype):
    """auto-attack #51: misleading errors deep inside; the policy is float32 or float64 only."""
    m, x, y = case
    half = models.paper_cnn("mnist").eval().to(dtype)
    with pytest.raises(TypeError, match=rf"dtype {dtype}; allowed dtypes: float32, float64"):
        _entry_points(half, x.to(dtype), y)[entry]()
    with pytest.raises(TypeError, match=rf"has dtype {dtype}; allowed dtypes: float32, float64"):
        _entry_points(half, x, y)[entry]()       # float32 images, a half-precision model


def test_valid_inputs_are_untouched_by_the_checks(case):
    """The checks change no number: the same calls on valid input as before the guards."""
    m, x, y = case
    guards.check_inputs(x, y, box=True)
    assert torch.equal(guards.check_logits(m(x).detach()), m(x).detach())


def test_pure_forwards_return_no_graph_under_no_grad(case):
    """The review of issue 33's change: margins (a forward) and margin_and_grad without create_graph
    return plain tensors, as a caller under no_grad expects."""
    m, x, y = case
    with torch.no_grad():
        mg = hessian.margins(m, x, y, "runner_up")
        m2, g, _ = hessian.margin_and_grad(m, x, y, "runner_up")
    assert not mg.requires_grad and not m2.requires_grad and not g.requires_grad
    assert torch.allclose(mg, m2)
