"""The guard every per-example curvature computation goes through (:func:`curvature`).

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
           "SMOOTH", "ZeroCurvatureWarning"]

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
