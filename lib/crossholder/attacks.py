"""Projected gradient descent (PGD) attacks, L2 and L∞, with cross-entropy and CW margin losses.

Our own code in plain PyTorch (see the evaluation issue for why the libraries do not fit).

``pgd(model, x, y, eps)`` maximizes the loss over ``{x' : ||x' - x|| <= eps, x' in [0, 1]^d}``:

* ``eps`` is in **pixel units** of [0, 1] images (the paper's standardized units are converted in
  :mod:`crossholder.evaluation`).
* Random start uniform in the ball: L2 direction Gaussian, radius ``eps * U^(1/d)`` (the uniform
  law on the ball; not ``eps * U``, which concentrates near the centre); L∞ uniform in the cube;
  then clamped to [0, 1].
* Losses are per-example and sum-reduced, so each example's step does not depend on the others:
  ``"ce"`` cross-entropy, ``"cw"`` the Carlini-Wagner margin ``max_{j != y} z_j - z_y`` (computed
  with a boolean mask, never ``(1 - onehot) * z``, which breaks when logits are negative).
* Steps: L2 normalized gradient ``x <- x + a * g / ||g||_2``; L∞ signed gradient. Then projection
  onto the ball, then the box. Default step size ``a = eps / 4`` (:data:`DEFAULT_STEP_FRACTION`;
  the paper gives none). Madry et al.'s ``2.5 * eps / steps`` (``eps / 20`` at 50 steps), the default
  up to evaluation code version 1, is too short in L2: with normalized-gradient steps the iterate
  cannot travel to the targeted directions that APGD-T finds. Measured by ``tools/step_size_study.py``
  on the six robust registered models at ε = 3 and 5, 200 images, 50 steps × 10 restarts
  (``results/step-size.csv``): ``eps / 20`` is weaker at 11 of the 12 points and tied at the 12th (by up to 11.5 points
  of robust accuracy); ``eps / 4`` and ``eps / 2`` agree within one image at every point (``eps / 2``
  lower at 4, ``eps / 4`` at 2, tied at 6: no difference), and ``eps / 4`` is the finer of the two.
* Success is checked at **every iterate** (not only the last); a fooled example stops (early
  stopping) and keeps that iterate as its witness. Restarts run only on examples not yet fooled.
* The random stream of restart ``r`` is drawn for the full batch from ``(seed, r)``, so an example's
  trajectory does not depend on which other examples are still active: the same example with the
  same seed follows the same path in a sweep over ε or in a single attack.
* Every returned adversarial example is re-verified on a fresh forward pass (norm ``<= eps (1 +
  1e-5)``, pixels in [0, 1], misclassified); a failure raises :class:`AttackVerificationError`.
* Guards refuse to run silently in an invalid setting: a model in training mode, outputs that look
  like probabilities (the CW margin and the CE loss need logits), non-finite gradients.

The model's parameters are never modified; their ``requires_grad`` flags are restored on exit.

Stronger attacks, from a well-kept library (PyPI ``pyautoattack``, Croce & Hein's AutoAttack code,
the optional extra ``autoattack``), behind thin adapters with the same guards, seeding, per-example
results and re-verification as :func:`pgd` (:func:`apgd`, :func:`fab`, :func:`square`):

* :func:`apgd` ``loss="ce"``: APGD-CE; ``loss="dlr-t"``: APGD-T, the targeted DLR loss against the
  ``targets`` most likely other classes in turn (AutoAttack's standard schedule: 100 iterations,
  1 restart, 9 targets).
* :func:`fab`: FAB (untargeted, L2), a minimum-norm attack: one run gives each image the smallest
  adversarial L2 distance it finds, which settles every ε at or above it.
* :func:`square`: the black-box Square attack (5,000 queries), for the gradient-masking check.
"""

from __future__ import annotations
from . import guards
from .errors import not_allowed

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AttackResult", "AttackVerificationError", "pgd", "apgd", "fab", "square", "random_noise_attack", "ball_and_box_problems", "attack_loss",
           "perturbation_norm", "project", "LOSSES", "APGD_LOSSES", "NORMS", "check_model", "check_eval_mode", "own_random_state",
           "DEFAULT_STEP_FRACTION",
           "CountingModel"]

LOSSES = ("ce", "cw")
APGD_LOSSES = ("ce", "dlr-t")
#: PGD's default step as a fraction of ε (see the module docstring and ``results/step-size.csv``).
DEFAULT_STEP_FRACTION = 0.25
NORMS = (2, float("inf"))
VERIFY_RTOL = 1e-5


class AttackVerificationError(RuntimeError):
    """A returned adversarial example failed its re-verification."""


@dataclass(frozen=True)
class AttackResult:
    """Outcome of :func:`pgd` for a batch of ``B`` examples.

    Attributes:
        x_adv: ``(B, *S)`` the adversarial example where ``success``, else the clean input.
        success: ``(B,)`` bool, misclassified at ``x_adv`` (clean-misclassified points count as success
            with a zero perturbation).
        norm: ``(B,)`` ``||x_adv - x||`` (pixel units) where ``success``, else ``inf``.
        grad_evals: number of per-example gradient evaluations spent (the attack's cost).
        forward_evals: number of per-example forward passes without gradient (success checks).
    """

    x_adv: torch.Tensor
    success: torch.Tensor
    norm: torch.Tensor
    grad_evals: int
    forward_evals: int


def perturbation_norm(delta: torch.Tensor, norm: float) -> torch.Tensor:
    """Per-example norm of ``delta`` ``(B, *S)`` over the flattened ``S``: ``(B,)``."""
    return torch.linalg.vector_norm(delta.flatten(1), ord=norm, dim=1)


def attack_loss(logits: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """Per-example attack objective ``(B,)`` to be *maximized*.

    ``"ce"``: cross-entropy; ``"cw"``: ``max_{j != y} z_j - z_y`` (positive iff misclassified).
    """
    if loss == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    if loss == "cw":
        own = logits.gather(1, y[:, None]).squeeze(1)
        mask = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, y[:, None], True)
        other = logits.masked_fill(mask, float("-inf")).amax(dim=1)
        return other - own
    raise not_allowed("loss", loss, LOSSES)


def check_eval_mode(model: nn.Module) -> None:
    """Refuse a model any of whose submodules is in training mode, before any forward pass.

    A submodule left in training mode (``model.eval(); model[1].train()``) would let dropout or
    batch-norm statistics change between the attack and its verification, and every forward pass
    would move the running statistics. Raises :class:`RuntimeError` naming the submodules.
    """
    training = [name or type(m).__name__ for name, m in model.named_modules() if m.training]
    if training:
        shown = ", ".join(training[:5]) + (f" and {len(training) - 5} more" if len(training) > 5 else "")
        raise RuntimeError(f"the model has submodules in training mode ({shown}); call model.eval() before "
                           "attacking it (dropout or batch-norm statistics would make the attack and its "
                           "verification disagree, and each forward pass would move the running statistics)")


def check_model(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Guards: every submodule in eval mode (:func:`check_eval_mode`, before any forward pass), parameters
    of the dtype policy, no final softmax-type layer, and logits, not probabilities, in any batch size
    (:mod:`crossholder.guards`). Returns the clean logits ``(B, K)``."""
    check_eval_mode(model)
    guards.check_model_dtype(model)
    guards.refuse_probability_layer(model)
    with torch.no_grad():
        z = model(x)
    return guards.check_logits(z)


@contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    flags = [p.requires_grad for p in model.parameters()]
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        yield
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)


def _validate(x: torch.Tensor, y: torch.Tensor, eps: float, norm: float, loss: str, steps: int, restarts: int,
              step_size: float | None) -> float:
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps={eps!r} must be a finite number >= 0 (pixel units of [0, 1] images)")
    norm = float(norm)
    if norm not in NORMS:
        raise not_allowed("norm", norm, "2 or float('inf')")
    if loss not in LOSSES:
        raise not_allowed("loss", loss, LOSSES)
    for name, v in (("steps", steps), ("restarts", restarts)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name}={v!r} must be an integer >= 1")
    if step_size is not None and not (math.isfinite(step_size) and step_size > 0):
        raise ValueError(f"step_size={step_size!r} must be a finite number > 0 (or None for the default)")
    _check_xy(x, y)
    return norm


def _check_xy(x: torch.Tensor, y: torch.Tensor) -> None:
    """Finite float32/float64 images in [0, 1], at least one, with int64 labels (:func:`crossholder.guards.check_inputs`)."""
    guards.check_inputs(x, y, box=True)
    if x.dim() < 2:
        raise ValueError(f"x must be (B, *S); got {tuple(x.shape)}")


def _clean_start(model: nn.Module, x: torch.Tensor, y: torch.Tensor, active: torch.Tensor | None):
    """The guards, then the clean pass every attack starts from: ``success`` (clean errors, a zero-norm
    witness), ``x_adv`` (the clean input), ``best_norm`` (0 or inf) and ``todo`` (correct and active)."""
    B = x.shape[0]
    z = check_model(model, x)
    success = z.argmax(1) != y
    best_norm = torch.where(success, torch.zeros(B, dtype=x.dtype, device=x.device),
                            torch.full((B,), math.inf, dtype=x.dtype, device=x.device))
    todo = ~success if active is None else (~success & active.to(x.device))
    return success, x.clone(), best_norm, todo


def _start_noise(shape: torch.Size, eps: float, norm: float, seed: int, restart: int, dtype) -> torch.Tensor:
    """Uniform sample of the ε-ball for every example of the full batch, from the stream ``(seed, restart)``."""
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + restart)
    B, d = shape[0], math.prod(shape[1:])
    if norm == 2.0:
        u = torch.randn(B, d, generator=g, dtype=torch.float64)
        u = u / u.norm(dim=1, keepdim=True).clamp_min(1e-30)
        r = torch.rand(B, 1, generator=g, dtype=torch.float64).pow(1.0 / d)
        delta = eps * r * u
    else:
        delta = eps * (2 * torch.rand(B, d, generator=g, dtype=torch.float64) - 1)
    return delta.to(dtype).view(shape)


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: float) -> torch.Tensor:
    """``x_adv`` ``(B, *S)`` projected onto the ``eps``-ball around ``x`` (``norm`` 2 or inf), then the [0, 1] box."""
    delta = x_adv - x
    if norm == 2.0:
        n = perturbation_norm(delta, 2.0).clamp_min(1e-30)
        factor = torch.clamp(eps / n, max=1.0).view((-1,) + (1,) * (x.dim() - 1))
        delta = delta * factor
    else:
        delta = delta.clamp(-eps, eps)
    return _pull_back((x + delta).clamp(0.0, 1.0), x, eps, norm)


def _pull_back(out: torch.Tensor, x: torch.Tensor, eps: float, norm: float) -> torch.Tensor:
    """``out`` with the points that float32 rounding put outside the ``eps``-ball pulled back inside.

    In float32, ``x + delta`` rounds each coordinate of delta to the spacing of x (6e-8 near 0.5): at
    a small ``eps`` (below about 0.006 in pixel units) that moves the norm by more than the
    verification's tolerance. Only such points are pulled 1e-4 inside the ball; every other point is
    returned exactly as given (so results at the evaluation's ε are unchanged).
    """
    n = perturbation_norm(out - x, norm)
    over = n > eps * (1 + VERIFY_RTOL)
    if bool(over.any()):
        shape = (-1,) + (1,) * (x.dim() - 1)
        d = out[over] - x[over]
        d = d * (eps / n[over] * (1 - 1e-4)).view(shape) if norm == 2.0 else d.clamp(-eps * (1 - 1e-4), eps * (1 - 1e-4))
        out[over] = (x[over] + d).clamp(0.0, 1.0)
    return out


@guards.with_gradients
def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, norm: float = 2, loss: str = "ce",
        steps: int = 50, restarts: int = 10, step_size: float | None = None, seed: int = 0,
        active: torch.Tensor | None = None, verify: bool = True) -> AttackResult:
    """Untargeted PGD within the ``eps``-ball (pixel units) and the [0, 1] box.

    Args:
        model: logits model in eval mode, ``(B, *S) -> (B, K)``.
        x: clean inputs ``(B, *S)`` in [0, 1]; y: labels int64 ``(B,)``.
        eps: radius in pixel units (``>= 0``).
        norm: 2 or ``float('inf')``.
        loss: ``"ce"`` or ``"cw"``.
        steps: iterations per restart (``>= 1``); restarts: random starts (``>= 1``).
        step_size: pixel units; defaults to ``DEFAULT_STEP_FRACTION * eps`` (``eps / 4``).
        seed: seed of the random starts; restart ``r`` uses the stream ``(seed, r)``.
        active: optional bool ``(B,)``: attack only these examples (others are returned unchanged and
            unsuccessful unless misclassified clean). Used by the ε sweep.
        verify: re-verify the returned examples (always on in the library's own use).

    Returns:
        :class:`AttackResult`.
    """
    norm = _validate(x, y, eps, norm, loss, steps, restarts, step_size)
    alpha = step_size if step_size is not None else DEFAULT_STEP_FRACTION * eps
    x = x.detach()
    B = x.shape[0]
    with _frozen(model):
        success, x_adv, best_norm, todo = _clean_start(model, x, y, active)
        grad_evals, fwd_evals = 0, B
        if eps > 0:
            for r in range(restarts):
                idx = todo.nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
                noise = _start_noise(x.shape, eps, norm, seed, r, x.dtype).to(x.device)
                x0, y0 = x[idx], y[idx]
                xa = _pull_back((x0 + noise[idx]).clamp(0.0, 1.0), x0, eps, norm)
                live = torch.arange(idx.numel(), device=x.device)        # positions into idx still running
                for _ in range(steps):
                    xa_l = xa[live].requires_grad_(True)
                    with torch.enable_grad():
                        logits = model(xa_l)
                        obj = attack_loss(logits, y0[live], loss)
                        (g,) = torch.autograd.grad(obj.sum(), xa_l)
                    grad_evals += live.numel()
                    fooled = logits.detach().argmax(1) != y0[live]
                    if not torch.isfinite(g).all():
                        raise FloatingPointError("non-finite input gradient in PGD; the model or loss overflowed")
                    if bool(fooled.any()):
                        _record(x_adv, best_norm, success, idx[live[fooled]], xa_l.detach()[fooled], x, norm)
                    keep = ~fooled
                    live, g = live[keep], g[keep]
                    if live.numel() == 0:
                        break
                    xl = xa[live]
                    if norm == 2.0:
                        gn = perturbation_norm(g, 2.0).clamp_min(1e-30).view((-1,) + (1,) * (x.dim() - 1))
                        xl = xl + alpha * g / gn
                    else:
                        xl = xl + alpha * torch.sign(g)
                    xa[live] = project(xl, x0[live], eps, norm)
                if live.numel():
                    with torch.no_grad():
                        fooled = model(xa[live]).argmax(1) != y0[live]
                    fwd_evals += live.numel()
                    if bool(fooled.any()):
                        _record(x_adv, best_norm, success, idx[live[fooled]], xa[live[fooled]], x, norm)
                todo = todo & ~success
        result = AttackResult(x_adv=x_adv, success=success, norm=best_norm, grad_evals=grad_evals,
                              forward_evals=fwd_evals)
        if verify:
            verify_result(model, x, y, result, eps, norm)
    return result


def _record(x_adv, best_norm, success, where, xa, x, norm) -> None:
    n = perturbation_norm(xa - x[where], norm)
    better = n < best_norm[where]
    w = where[better]
    x_adv[w] = xa[better]
    best_norm[w] = n[better]
    success[where] = True


def ball_and_box_problems(x_adv: torch.Tensor, x: torch.Tensor, eps: float, *, norm: float = 2.0,
                          rtol: float = VERIFY_RTOL) -> list[str]:
    """What is wrong with points ``x_adv`` ``(B, *S)`` as perturbations of ``x`` within the ``eps``-ball
    (``norm``, relative slack ``rtol``) and the [0, 1] box: an empty list when nothing is. The library's
    one ball-and-box check (:func:`verify_result`, and ``crossholder.checks`` on AutoAttack's points)."""
    n = perturbation_norm(x_adv - x, norm)
    problems = []
    if bool((n > eps * (1 + rtol) + 1e-12).any()):
        problems.append(f"perturbation norm up to {float(n.max()):.6g} exceeds eps={eps:.6g}")
    if bool((x_adv < 0).any()) or bool((x_adv > 1).any()):
        problems.append("pixels outside [0, 1]")
    return problems


def verify_result(model: nn.Module, x: torch.Tensor, y: torch.Tensor, result: AttackResult, eps: float,
                  norm: float) -> None:
    """Fresh forward pass: every success is misclassified, within ``eps (1 + 1e-5)`` and in [0, 1]."""
    s = result.success
    if not bool(s.any()):
        return
    xa = result.x_adv[s]
    with torch.no_grad():
        pred = model(xa).argmax(1)
    problems = []
    if bool((pred == y[s]).any()):
        problems.append(f"{int((pred == y[s]).sum())} 'successful' examples are classified correctly")
    problems += ball_and_box_problems(xa, x[s], eps, norm=norm)
    if problems:
        raise AttackVerificationError("adversarial examples failed re-verification: " + "; ".join(problems))


def pgd_last_iterate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, steps: int,
                     step_size: float | None = None, norm: float = 2, loss: str = "ce",
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Madry et al.'s training attack: random start, ``steps`` PGD steps, the **last** iterate ``(B, *S)``.

    No early stopping and no guards (it runs inside the training loop; the model's parameters are
    not differentiated). ``eps`` in pixel units; step size defaults to ``2.5 * eps / steps``.
    """
    norm = _validate(x, y, eps, norm, loss, steps, 1, step_size)
    alpha = step_size if step_size is not None else 2.5 * eps / steps
    x = x.detach()
    B, d = x.shape[0], x[0].numel()
    if norm == 2.0:
        u = torch.randn(B, d, generator=generator, dtype=x.dtype)
        u = u / u.norm(dim=1, keepdim=True).clamp_min(1e-30)
        r = torch.rand(B, 1, generator=generator, dtype=x.dtype).pow(1.0 / d)
        delta = (eps * r * u).view_as(x)
    else:
        delta = eps * (2 * torch.rand(x.shape, generator=generator, dtype=x.dtype) - 1)
    xa = (x + delta.to(x.device)).clamp(0.0, 1.0)
    with _frozen(model):
        for _ in range(steps):
            xa.requires_grad_(True)
            with torch.enable_grad():
                (g,) = torch.autograd.grad(attack_loss(model(xa), y, loss).sum(), xa)
            with torch.no_grad():
                if norm == 2.0:
                    gn = perturbation_norm(g, 2.0).clamp_min(1e-30).view((-1,) + (1,) * (x.dim() - 1))
                    xa = xa + alpha * g / gn
                else:
                    xa = xa + alpha * torch.sign(g)
                xa = project(xa, x, eps, norm)
    return xa.detach()


# ---------------------------------------------------------------- adapters of pyautoattack's attacks
class CountingModel(nn.Module):
    """``model`` that counts what a library attack spends on it: ``grad_rows``, one per example and
    backward pass through the output (FAB's K backward passes per forward count K times), and
    ``forward_rows``, one per example of a forward pass without gradient. Inputs are cast to
    ``dtype`` (the model's), outputs to float32 (the libraries' dtype)."""

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model = model
        self.dtype = dtype              # the library works in float32; the model sees its own dtype
        self.grad_rows = 0
        self.forward_rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x.to(self.dtype)).float()
        rows = x.shape[0]
        if out.requires_grad:           # every backward pass through the output is one gradient evaluation
            out.register_hook(lambda g: self._count(rows))
        else:
            self.forward_rows += rows
        return out

    def _count(self, rows: int) -> None:
        self.grad_rows += rows


def _pyautoattack():
    """The library's attack classes (``APGDAttack``, ``APGDAttack_targeted``, ``FABAttack_PT``, ``SquareAttack``)."""
    try:
        from pyautoattack import autopgd_base, fab_pt, square
    except ImportError as err:  # pragma: no cover - optional extra
        raise ImportError("APGD, FAB and Square come from PyPI pyautoattack: pip install -e '.[autoattack]'") from err
    from types import SimpleNamespace

    return SimpleNamespace(APGDAttack=autopgd_base.APGDAttack, APGDAttack_targeted=autopgd_base.APGDAttack_targeted,
                           FABAttack_PT=fab_pt.FABAttack_PT, SquareAttack=square.SquareAttack)


def _check_eps_tensor(eps, name: str = "eps") -> None:
    if not (isinstance(eps, (int, float)) and not isinstance(eps, bool) and math.isfinite(eps) and eps >= 0):
        raise ValueError(f"{name}={eps!r} must be a finite number >= 0 (pixel units of [0, 1] images)")


@contextmanager
def own_random_state(device: torch.device | str = "cpu") -> Iterator[None]:
    """Restore torch's global random state (CPU and every initialized CUDA device) on exit: the
    libraries seed the global generators themselves, which must not leak into the caller's stream."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        yield


def _library_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, run, *,
                    active: torch.Tensor | None, verify: bool, seed: int) -> AttackResult:
    """Shared bookkeeping of the adapters: guards, clean errors, the active set, seeding, witnesses.

    ``run(counted_model, x_todo, y_todo) -> x_adv_todo`` calls the library on the examples still to
    attack. A returned point counts as a witness only if it is misclassified on a fresh forward pass,
    inside the ``eps``-ball (``eps (1 + 1e-5)``) and the box; anything else is discarded. The global
    random state is restored afterwards (the library seeds torch's global generator itself).
    """
    _check_xy(x, y)
    x = x.detach()
    B = x.shape[0]
    with _frozen(model):
        success, x_adv, best_norm, todo = _clean_start(model, x, y, active)
        counted = CountingModel(model, x.dtype)
        idx = todo.nonzero().squeeze(1)
        if eps > 0 and idx.numel():
            with own_random_state(x.device):
                torch.manual_seed(seed)
                xa = run(counted, x[idx].float(), y[idx]).detach().to(x.dtype)
            # the library projects in float32, where x + delta rounds delta by about 1e-5 of its norm
            # (cancellation against pixels near 0.5): a point that far outside the ball is pulled back to
            # 1e-4 inside it (and must then still be misclassified), never accepted outside it
            n = perturbation_norm(xa - x[idx], 2.0)
            if bool((n > eps * (1 + 1e-3)).any()):
                raise AttackVerificationError(f"the library returned a point at distance {float(n.max()):.6g}, "
                                              f"outside the eps={eps:.6g} ball by more than float32 rounding")
            out = n > eps
            if bool(out.any()):
                shrink = (eps / n[out].double() * (1 - 1e-4)).to(x.dtype).view((-1,) + (1,) * (x.dim() - 1))
                xa[out] = (x[idx][out] + (xa[out] - x[idx][out]) * shrink).clamp(0.0, 1.0)
                n = perturbation_norm(xa - x[idx], 2.0)
            with torch.no_grad():
                fooled = model(xa).argmax(1) != y[idx]
            # n > 0: the library hands back the clean point where it failed; never a witness
            ok = fooled & (n > 0) & (n <= eps * (1 + VERIFY_RTOL)) & (xa >= 0).flatten(1).all(1) & \
                (xa <= 1).flatten(1).all(1)
            if bool(ok.any()):
                _record(x_adv, best_norm, success, idx[ok], xa[ok], x, 2.0)
        result = AttackResult(x_adv=x_adv, success=success, norm=best_norm, grad_evals=counted.grad_rows,
                              forward_evals=B + counted.forward_rows)
        if verify:
            verify_result(model, x, y, result, eps, 2.0)
    return result


@guards.with_gradients
def apgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, loss: str = "ce", n_iter: int = 100,
         restarts: int = 1, targets: int | None = None, seed: int = 0, active: torch.Tensor | None = None,
         verify: bool = True) -> AttackResult:
    """APGD (Croce & Hein 2020) in L2 within the ``eps``-ball (pixel units) and the [0, 1] box.

    An adapter of ``pyautoattack.APGDAttack`` (``loss="ce"``: APGD-CE) and
    ``pyautoattack.APGDAttack_targeted`` (``loss="dlr-t"``: APGD-T, the targeted DLR loss against the
    ``targets`` most likely other classes in turn, each with ``restarts`` runs of ``n_iter``
    iterations). AutoAttack's standard schedule is the default: 100 iterations, 1 restart, 9 targets.

    Args:
        model: logits model in eval mode ``(B, *S) -> (B, K)``; x ``(B, *S)`` in [0, 1]; y int64 ``(B,)``.
        eps: radius in pixel units (``>= 0``).
        loss: ``"ce"`` or ``"dlr-t"``.
        n_iter, restarts, targets: the schedule (integers >= 1; ``targets`` <= K - 1; ``None``: the
            ``min(9, K - 1)`` most likely other classes, AutoAttack's 9 for 10 classes).
        seed: the library's seed (its random starts); the global random state is restored after.
        active: optional bool ``(B,)``: attack only these examples (as in :func:`pgd`).
        verify: re-verify every witness on a fresh forward pass (raises :class:`AttackVerificationError`).

    Returns:
        :class:`AttackResult` (``grad_evals`` and ``forward_evals`` counted on the model).

    Raises:
        ValueError: an argument outside its allowed values (named in the message).
        ImportError: ``pyautoattack`` is not installed.
    """
    _check_eps_tensor(eps)
    if loss not in APGD_LOSSES:
        raise not_allowed("loss", loss, APGD_LOSSES)
    for name, v in (("n_iter", n_iter), ("restarts", restarts)) + ((("targets", targets),) if targets is not None else ()):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name}={v!r} must be an integer >= 1")
    paa = _pyautoattack()
    _check_xy(x, y)
    check_model(model, x[:1])                    # before the forward pass that counts the classes
    with torch.no_grad():
        k = model(x[:1]).shape[-1]
    if loss == "dlr-t" and k < 4:
        raise ValueError(f"loss='dlr-t' needs a model with at least 4 classes (the DLR loss uses the 3rd and 4th "
                         f"largest logits); this one has K = {k}")
    if targets is not None and targets > k - 1:
        raise ValueError(f"targets={targets} must be <= K - 1 = {k - 1} (the other classes)")
    n_targets = min(9, k - 1) if targets is None else targets

    def run(m, xs, ys):
        if loss == "ce":
            atk = paa.APGDAttack(m, n_iter=n_iter, norm="L2", n_restarts=restarts, eps=float(eps), seed=seed,
                                 loss="ce", device=xs.device)
        else:
            atk = paa.APGDAttack_targeted(m, n_iter=n_iter, norm="L2", n_restarts=restarts, eps=float(eps),
                                          seed=seed, n_target_classes=n_targets, device=xs.device)
        return atk.perturb(xs, ys)

    return _library_attack(model, x, y, eps, run, active=active, verify=verify, seed=seed)


@guards.with_gradients
def fab(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, n_iter: int = 100, seed: int = 0,
        active: torch.Tensor | None = None, verify: bool = True, targets: int = 0) -> AttackResult:
    """FAB (Croce & Hein 2020), L2: each image's smallest adversarial distance it finds.

    An adapter of ``pyautoattack.FABAttack_PT`` (from the clean point, ``n_iter`` iterations; its
    ``eps`` is set to the box's diameter, so every point it finds is accepted). ``targets=0``: the
    untargeted attack, one run. ``targets=t >= 1``: FAB-T, AutoAttack's targeted version, towards each
    of the ``t`` most likely other classes (AutoAttack's standard uses 9). Each target runs on every
    image and the smallest misclassified witness is kept: the library's own loop stops at an image's
    first target that succeeds within ``eps``, which with ``eps`` at the diameter would be the first
    target at all. ``norm`` of the result is the witness's L2 distance in pixel units (``inf`` where
    none was found); ``success`` marks the images with a verified witness (misclassified, in the box).
    ``grad_evals`` counts gradient rows: untargeted FAB differentiates every logit, so one iteration
    costs K of them; FAB-T one per iteration and target.

    Raises:
        ValueError: ``n_iter`` not an integer >= 1, ``targets`` not an integer in [0, K - 1].
        ImportError: ``pyautoattack`` missing.
    """
    if not isinstance(n_iter, int) or isinstance(n_iter, bool) or n_iter < 1:
        raise ValueError(f"n_iter={n_iter!r} must be an integer >= 1")
    if not isinstance(targets, int) or isinstance(targets, bool) or targets < 0:
        raise ValueError(f"targets={targets!r} must be an integer >= 0 (0: untargeted FAB)")
    paa = _pyautoattack()
    _check_xy(x, y)
    check_model(model, x[:1])                    # before the forward pass that counts the classes
    diameter = math.sqrt(x[0].numel())
    if targets:
        with torch.no_grad():
            k = model(x[:1]).shape[-1]
        if targets > k - 1:
            raise ValueError(f"targets={targets} must be <= K - 1 = {k - 1} (the other classes)")

    def run(m, xs, ys):
        atk = paa.FABAttack_PT(m, norm="L2", n_restarts=1, n_iter=n_iter, eps=diameter, seed=seed,
                               targeted=bool(targets), n_target_classes=max(targets, 1), device=xs.device)
        if not targets:
            return atk.perturb(xs, ys)
        atk.device = xs.device
        best, best_norm = xs.clone(), torch.full((len(xs),), math.inf, device=xs.device)
        torch.random.manual_seed(seed)   # as the library's perturb does before its runs
        for t in range(2, targets + 2):  # the library's target index: the t-th largest logit
            atk.target_class = t
            adv = atk.attack_single_run(xs, ys, use_rand_start=False, is_targeted=True)
            with torch.no_grad():
                wrong = m(adv).argmax(1) != ys
            norm = (adv - xs).flatten(1).norm(dim=1)
            better = wrong & (norm < best_norm)
            best[better], best_norm[better] = adv[better], norm[better]
        return best

    return _library_attack(model, x, y, diameter, run, active=active, verify=verify, seed=seed)


@guards.with_gradients
def square(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, queries: int = 5000, seed: int = 0,
           active: torch.Tensor | None = None, verify: bool = True) -> AttackResult:
    """The black-box Square attack (Andriushchenko et al. 2020), L2, ``queries`` forward passes per image.

    An adapter of ``pyautoattack.SquareAttack`` with AutoAttack's settings (``p_init = 0.8``, one
    restart). Uses no gradient: an attack that beats the gradient attacks points to gradient masking.

    Raises:
        ValueError: ``eps < 0`` or ``queries`` not an integer >= 1. ImportError: ``pyautoattack`` missing.
    """
    _check_eps_tensor(eps)
    if not isinstance(queries, int) or isinstance(queries, bool) or queries < 1:
        raise ValueError(f"queries={queries!r} must be an integer >= 1")
    paa = _pyautoattack()

    def run(m, xs, ys):
        atk = paa.SquareAttack(m, p_init=0.8, n_queries=queries, eps=float(eps), norm="L2", n_restarts=1, seed=seed,
                               device=xs.device, resc_schedule=False)
        return atk.perturb(xs, ys)

    return _library_attack(model, x, y, eps, run, active=active, verify=verify, seed=seed)


def random_noise_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, queries: int,
                        seed: int = 0) -> torch.Tensor:
    """Black-box baseline: ``queries`` uniform samples of the L2 ε-ball (pixels), clamped to the box.

    Returns the bool ``(N,)`` of examples still correctly classified after every query.
    """
    _check_eps_tensor(eps)
    _check_xy(x, y)
    with torch.no_grad():
        robust = check_model(model, x).argmax(1) == y
        for q in range(queries):
            noise = _start_noise(x.shape, eps, 2.0, seed + 7919, q, x.dtype).to(x.device)
            robust &= model((x + noise).clamp(0, 1)).argmax(1) == y
    return robust
