"""Guards on users' models and inputs: the curvature guard (:func:`curvature`), and the checks every
entry point runs before any work (:func:`check_inputs`, :func:`check_model_dtype`,
:func:`refuse_probability_layer`, :func:`check_logits`) with its gradient-context policy
(:func:`with_gradients`).

The curvature guard:

Used by :mod:`crossholder.hessian` (``hvp``, ``HVPOperator`` and so ``operator_norm``,
``hg_norm``; ``full_hessian``, ``hessian_spectrum``) and :mod:`crossholder.regularizers`
(``regularized_loss``, ``warm_norm``), so a model gets the same treatment everywhere:

* **Batch statistics** (policy, as in CURE's code): inside the guard every batch-norm layer
  (``nn.BatchNorm1d/2d/3d``, ``nn.SyncBatchNorm``) computes with its *running* statistics, as
  the affine map ``(x - running_mean) / sqrt(running_var + eps) * weight + bias`` written in plain
  tensor operations. So a per-example quantity never depends on the other examples of the batch,
  the curvature terms never move the running statistics, and the map is differentiable to any
  order (torch's own batch-norm kernel stops at second order, too few for a trained Hessian
  term). The training forward pass of the cross-entropy is not inside the guard: it uses and
  updates the batch statistics once per step, as the user's model asks. A batch-norm layer
  without running statistics (``track_running_stats=False``) cannot be frozen: refused, naming it.
* **A zero input Hessian**: a model without a second-order nonlinearity (only linear and
  piecewise-linear modules: ReLU, MaxPool, LeakyReLU, Hardtanh, ...) has an input Hessian that is
  zero almost everywhere; the operator norm and the Cross-Hölder term are then correctly 0, and
  the regularizer does nothing. One warning per model says so, naming the modules found.
"""

from __future__ import annotations

import contextlib
import threading
import types
import warnings
import weakref
from typing import Iterator

import torch
from torch import nn

__all__ = ["curvature", "frozen_batch_stats", "warn_if_zero_curvature", "training_logits", "PIECEWISE_LINEAR",
           "SMOOTH", "ZeroCurvatureWarning", "check_inputs", "check_model_dtype", "check_logits",
           "refuse_probability_layer", "with_gradients", "COMPUTE_DTYPES", "PROBABILITY_LAYERS"]

#: Modules that are linear or piecewise linear in their input (zero second derivative almost everywhere).
PIECEWISE_LINEAR = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.Hardtanh, nn.Hardsigmoid, nn.Threshold,
                    nn.Hardshrink, nn.Softshrink, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d,
                    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
#: Modules with a nonzero second derivative inside the network: their presence makes a nonzero input
#: Hessian of the margins possible. (A final (log-)softmax is not one: a log-softmax cancels in the
#: margins f_t - f_j, and attacks refuse probability outputs.)
SMOOTH = (nn.SiLU, nn.Softplus, nn.GELU, nn.Tanh, nn.Sigmoid, nn.ELU, nn.CELU, nn.SELU, nn.Mish, nn.Hardswish,
          nn.LogSigmoid, nn.LayerNorm, nn.GroupNorm, nn.Tanhshrink, nn.Softsign, nn.Bilinear, nn.MultiheadAttention)

_warned: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()


class ZeroCurvatureWarning(UserWarning):
    """The model's input Hessian is zero almost everywhere: curvature terms are 0 and do nothing."""


def warn_if_zero_curvature(model: nn.Module) -> None:
    """Warn once per model when it has no module with a nonzero second derivative (:data:`SMOOTH`)."""
    if model in _warned:
        return
    mods = list(model.modules())
    if any(isinstance(m, SMOOTH) for m in mods):
        return
    _warned.add(model)
    pl = sorted({type(m).__name__ for m in mods if isinstance(m, PIECEWISE_LINEAR)})
    found = (f"piecewise-linear modules ({', '.join(pl)})" if pl else "no nonlinear module at all")
    warnings.warn(f"{type(model).__name__} has {found} and none with a nonzero second derivative: its input Hessian "
                  "is zero almost everywhere, so Hessian operator norms are 0 and a Cross-Hölder penalty does "
                  "nothing (Cross-Lipschitz still acts). Use a twice-differentiable activation such as nn.SiLU or "
                  "nn.Softplus. (If the model applies one functionally, e.g. F.silu in forward, ignore this.)",
                  ZeroCurvatureWarning, stacklevel=3)


def training_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """``model(x)`` ``(B, K)`` when a batch-norm layer of ``model`` is in training mode (the forward pass a
    loss trains the batch statistics with, once per step), else ``None`` (the curvature pass's logits serve)."""
    if any(m.training for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)):
        return model(x)
    return None


def _affine_forward(self: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    shape = (1, -1) + (1,) * (x.dim() - 2)
    out = (x - self.running_mean.view(shape)) * torch.rsqrt(self.running_var.view(shape) + self.eps)
    if self.affine:
        out = out * self.weight.view(shape) + self.bias.view(shape)
    return out


_lock = threading.Lock()
_frozen: dict[int, list] = {}          # id(module) -> [depth, the instance's own forward or None]


@contextlib.contextmanager
def frozen_batch_stats(model: nn.Module) -> Iterator[None]:
    """Batch-norm layers compute with their running statistics, in plain ops, inside the block (module docstring).

    Other normalization layers that keep running statistics (``nn.InstanceNorm*`` with
    ``track_running_stats=True``) normalize each example on its own but would update those
    statistics: their buffers are restored on exit. Re-entrant and thread-safe (a depth count per
    layer: the layer's own ``forward`` comes back when the last block using it exits).

    Raises:
        ValueError: a batch-norm layer without running statistics, or a subclass with a ``forward`` of
            its own (e.g. batch norm fused with an activation), named.
    """
    bns = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for name, m in bns:
        where = f"{type(m).__name__} at {name or '<model>'!r}"
        if m.running_mean is None or m.running_var is None:
            raise ValueError(f"{where} keeps no running statistics (track_running_stats=False): its batch statistics "
                             "would make one example's curvature depend on the other examples of the batch; use "
                             "track_running_stats=True, a per-example normalization (nn.LayerNorm, nn.GroupNorm) "
                             "or none")
        if type(m).forward not in (nn.modules.batchnorm._BatchNorm.forward, nn.SyncBatchNorm.forward):
            raise ValueError(f"{where} is a batch-norm subclass with a forward of its own, which the curvature "
                             "guard cannot freeze faithfully; put the model in eval mode and use plain "
                             "nn.BatchNorm layers, or compute the curvature of an equivalent model")
    others = [m for _, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._NormBase)
              and not isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    kept = [(m, {k: b.clone() for k, b in m.named_buffers(recurse=False) if b is not None}) for m in others]
    mods = [m for _, m in bns]
    with _lock:
        for m in mods:
            entry = _frozen.setdefault(id(m), [0, m.__dict__.get("forward")])
            if entry[0] == 0:
                entry[1] = m.__dict__.get("forward")
                m.forward = types.MethodType(_affine_forward, m)
            entry[0] += 1
    try:
        yield
    finally:
        with _lock:
            for m in mods:
                entry = _frozen[id(m)]
                entry[0] -= 1
                if entry[0] == 0:
                    del _frozen[id(m)]
                    if entry[1] is None:
                        m.__dict__.pop("forward", None)
                    else:
                        m.forward = entry[1]
        with torch.no_grad():
            for m, bufs in kept:
                for k, b in bufs.items():
                    getattr(m, k).copy_(b)


@contextlib.contextmanager
def curvature(model: nn.Module) -> Iterator[None]:
    """The guard of every per-example curvature computation: :func:`warn_if_zero_curvature`, then
    :func:`frozen_batch_stats` for the duration of the block."""
    warn_if_zero_curvature(model)
    with frozen_batch_stats(model):
        yield


# ---------------------------------------------------------------- inputs, outputs, dtypes, gradient contexts
#: The dtype policy: every entry point computes in the dtype of its inputs, which must be float32 or
#: float64 (the model's parameters the same). Half precision (float16, bfloat16) is refused, naming the
#: dtype: the attacks' ball projections and witness checks, and the curvature's second derivatives,
#: lose their meaning at 8-11 bits of mantissa (an L-inf PGD step rounds past the ε-ball, an L2 input
#: gradient underflows), and a refusal is clearer than a misleading error deep inside. Convert both
#: with ``model.float(); x = x.float()``.
COMPUTE_DTYPES = (torch.float32, torch.float64)
#: Final modules whose outputs are (log-)probabilities: entry points that need logits refuse them.
PROBABILITY_LAYERS = (nn.Softmax, nn.LogSoftmax, nn.Softmin, nn.Softmax2d)
_PROBS_MESSAGE = ("the model's outputs look like (log-)probabilities{why}; attacks, curvature and regularizers "
                  "need logits: remove the final softmax / log-softmax (if these really are logits, adding any "
                  "constant to them changes no prediction and passes this check)")


def check_inputs(x: torch.Tensor, y: torch.Tensor | None = None, *, box: bool = False, name: str = "x") -> None:
    """Refuse, before any work, inputs no entry point can give a right answer on.

    ``x`` ``(B, *S)``: a tensor of a :data:`COMPUTE_DTYPES` dtype with at least one example (an empty
    batch is refused, the same everywhere) and only finite values (a NaN pixel would otherwise count
    as robust: every comparison with NaN is false); with ``box``, every value in [0, 1]. ``y``: int64
    ``(B,)``.

    Raises:
        TypeError: a non-tensor or a dtype outside the policy. ValueError: an empty batch, a non-finite
        value (naming how many and the first examples), a value outside the box, a bad ``y``.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, *S); got {type(x).__name__}")
    if x.dtype not in COMPUTE_DTYPES:
        raise TypeError(f"{name} has dtype {x.dtype}; allowed dtypes: float32, float64 (half precision is refused: "
                        "convert with model.float() and x.float())")
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(x.shape)}); pass at least one example")
    bad = ~torch.isfinite(x.detach()).flatten(1).all(1) if x.dim() > 1 else ~torch.isfinite(x.detach())
    if bool(bad.any()):
        rows = bad.nonzero().flatten()[:5].tolist()
        raise ValueError(f"{name} has non-finite values (NaN or inf) in {int(bad.sum())} example(s), first at "
                         f"index {rows}; every value must be a finite number")
    if box and (bool((x < 0).any()) or bool((x > 1).any())):
        raise ValueError(f"{name} has pixels outside [0, 1]; attacks work on [0, 1] images")
    if y is not None and (not isinstance(y, torch.Tensor) or y.shape != (x.shape[0],) or y.dtype != torch.int64):
        raise ValueError(f"y must be int64 of shape ({x.shape[0]},) (one label per example of {name}); got "
                         f"{getattr(y, 'dtype', type(y).__name__)} {tuple(getattr(y, 'shape', ()))}")


def check_model_dtype(model: nn.Module) -> None:
    """Refuse a model with parameters outside :data:`COMPUTE_DTYPES` (the dtype policy), naming the dtype."""
    for pname, p in model.named_parameters():
        if p.is_floating_point() and p.dtype not in COMPUTE_DTYPES:
            raise TypeError(f"the model's parameter {pname!r} has dtype {p.dtype}; allowed dtypes: float32, float64 "
                            "(half precision is refused: convert with model.float() and x.float())")


def refuse_probability_layer(model: nn.Module) -> None:
    """Refuse a model whose last module is a softmax-type layer (:data:`PROBABILITY_LAYERS`), whatever
    its outputs' values: a confident softmax gives exactly one-hot rows, which the value check of
    :func:`check_logits` cannot tell from logits."""
    leaves = [m for m in model.modules() if not list(m.children())]
    if leaves and isinstance(leaves[-1], PROBABILITY_LAYERS):
        raise ValueError(_PROBS_MESSAGE.format(why=f" (its last module is nn.{type(leaves[-1]).__name__})"))


def check_logits(z: torch.Tensor) -> torch.Tensor:
    """Refuse outputs ``(B, K)`` that look like (log-)probabilities, any batch size: rows in [0, 1] that
    sum to 1 with some value strictly inside (0, 1), or rows <= 0 whose exponentials sum to 1.
    Exactly one-hot rows pass (valid logits with a margin of 1; a final nn.Softmax is caught by
    :func:`refuse_probability_layer`). Returns ``z``."""
    if z.dim() != 2:
        raise ValueError(f"the model must return logits of shape (B, K); got {tuple(z.shape)}")
    z = z.detach()
    if z.shape[1] >= 2 and z.shape[0] >= 1:
        ones = torch.ones_like(z[:, 0])
        inside = bool(((z > 1e-6) & (z < 1 - 1e-6)).any())
        probs_like = inside and bool(((z >= 0) & (z <= 1)).all()) and torch.allclose(z.sum(1), ones, atol=1e-4)
        p = z.exp()
        logprobs_like = bool((z <= 0).all()) and bool(((p > 1e-6) & (p < 1 - 1e-6)).any()) and \
            torch.allclose(p.sum(1), ones, atol=1e-4)
        if probs_like or logprobs_like:
            raise ValueError(_PROBS_MESSAGE.format(why=" (every row sums to 1)"))
    return z


def with_gradients(fn):
    """Decorator of every entry point that differentiates: the gradient-context policy is **work as
    outside**. Under ``torch.no_grad()`` or ``torch.inference_mode()`` the function runs with gradients
    enabled (``torch.inference_mode(False)``, ``torch.enable_grad()``), and tensor arguments created in
    inference mode are cloned first (an inference tensor cannot be saved for backward); so it returns
    the same numbers in every context. The caller's context is restored on return."""
    import functools

    def plain(v):
        return v.clone() if isinstance(v, torch.Tensor) and v.is_inference() else v

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.inference_mode(False), torch.enable_grad():
            return fn(*[plain(a) for a in args], **{k: plain(v) for k, v in kwargs.items()})

    return wrapper
