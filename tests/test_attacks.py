"""PGD against closed-form oracles (linear classifiers), constraints, guards, and the pyautoattack adapters."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from torch import nn

from crossholder import attacks, evaluation, models, sweeps

F64 = torch.float64


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
