"""Explicit second-order passes: gradients and exact Hessian-vector products of the paper's kind of network.

For the networks of this package (a chain of Standardize, Conv2d, Linear, SiLU and Flatten
layers) the gradient and the Hessian-vector product are written out as plain tensor operations:

  forward            a_l = W_l h_{l-1} + b_l,  h_l = silu(a_l)       (caches silu', silu'')
  backward (adjoint) gbar_{l-1} = W_l^T (gbar_l ⊙ silu'(a_l))           ->  g = ∇_x f^(j)
  tangent forward    adot_l = W_l hdot_{l-1}, hdot_l = silu'(a_l) ⊙ adot_l    (hdot_0 = v)
  tangent backward   ddot_{l-1} = W_l^T (ddot_l ⊙ silu'(a_l) + gbar_l ⊙ silu''(a_l) ⊙ adot_l)  -> H v

This is Pearlmutter's R-operator applied by hand: exact, and each product costs one tangent
forward and one tangent backward pass, about one forward+backward, instead of autograd's
backward-of-backward (about twice that). Because the passes are ordinary differentiable
operations, training differentiates ||g|| and ||H v|| w.r.t. the parameters with a single
reverse pass (no double or triple backward through autograd's generic formulas).

Used by :mod:`crossholder.hessian` (``backend="explicit"``) and :mod:`crossholder.regularizers` (training).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["explicit_layers", "ExplicitCache", "explicit_forward", "explicit_backward", "explicit_hvp", "cast_passes"]


class _SiluDerivs(torch.autograd.Function):
    """``a -> (silu(a), silu'(a), silu''(a))`` in one pass, with a hand-written backward.

    With ``s = sigmoid(a)``, ``w = s (1 - s)``, ``b = 1 - 2 s``: ``silu' = s + a w``,
    ``silu'' = w (2 + a b)`` and the third derivative ``w (b (3 + a b) - 2 a w)``.
    Fusing saves most of the elementwise passes autograd would record for the composite.
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor):  # type: ignore[override]
        s = torch.sigmoid(a)
        w = s * (1 - s)
        h = a * s
        d1 = s + a * w
        d2 = w * (2 + a * (1 - 2 * s))
        ctx.save_for_backward(a, s)
        return h, d1, d2

    @staticmethod
    def backward(ctx, gh, gd1, gd2):  # type: ignore[override]
        a, s = ctx.saved_tensors
        w = s * (1 - s)
        b = 1 - 2 * s
        out = None
        if gh is not None:
            out = gh * (s + a * w)
        if gd1 is not None:
            t = gd1 * (w * (2 + a * b))
            out = t if out is None else out + t
        if gd2 is not None:
            t = gd2 * (w * (b * (3 + a * b) - 2 * a * w))
            out = t if out is None else out + t
        return out


def _silu_derivs(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """silu and its first two derivatives at ``a``."""
    return _SiluDerivs.apply(a)


def explicit_layers(model: nn.Module) -> list[nn.Module] | None:
    """The model as a flat list of supported layers, or ``None`` if it has anything else."""
    from .models import Standardize

    if not isinstance(model, nn.Sequential):
        return None
    out: list[nn.Module] = []
    for layer in model:
        if isinstance(layer, nn.Sequential):
            sub = explicit_layers(layer)
            if sub is None:
                return None
            out += sub
        elif isinstance(layer, (Standardize, nn.Conv2d, nn.Linear, nn.SiLU, nn.Flatten)):
            if isinstance(layer, nn.Conv2d) and (layer.groups != 1 or layer.padding_mode != "zeros"
                                                 or isinstance(layer.padding, str)):
                return None
            out.append(layer)
        else:
            return None
    return out


@dataclass
class ExplicitCache:
    """What the explicit passes need from the forward pass of a batch (see :func:`explicit_forward`).

    ``rep``: the passes run on the batch repeated ``rep`` times along dimension 0 (slot-major: row
    ``s·B + b`` is example ``b`` in slot ``s``); ``d1`` / ``d2`` stay ``(B, ...)`` and are broadcast
    over the slots instead of being copied ``rep`` times.
    """

    layers: list[nn.Module]
    in_shapes: list[torch.Size]
    d1: dict[int, torch.Tensor]
    d2: dict[int, torch.Tensor]
    logits: torch.Tensor
    rep: int = 1

    def cast(self, dtype: torch.dtype) -> "ExplicitCache":
        """The cache with silu' and silu'' in ``dtype`` (for :func:`explicit_hvp`'s ``dtype``; once per step)."""
        return ExplicitCache(self.layers, self.in_shapes, {i: t.to(dtype) for i, t in self.d1.items()},
                             {i: t.to(dtype) for i, t in self.d2.items()}, self.logits, self.rep)

    def repeat(self, n: int) -> "ExplicitCache":
        """The cache of the batch repeated ``n`` times along dimension 0 (slot-major); no copies."""
        return ExplicitCache(self.layers, [torch.Size((s[0] * n,) + tuple(s[1:])) for s in self.in_shapes],
                             self.d1, self.d2, self.logits, self.rep * n)


def cast_passes(cache: ExplicitCache, adj: dict[int, torch.Tensor], dtype: torch.dtype
                ) -> tuple[ExplicitCache, dict[int, torch.Tensor]]:
    """``cache`` and the adjoints ``adj`` in ``dtype``, detached: cast once for several :func:`explicit_hvp`
    products in that dtype (fast mode's power steps in ``power_dtype``)."""
    return cache.cast(dtype), {i: t.detach().to(dtype) for i, t in adj.items()}


def _cmul(u: torch.Tensor, t: torch.Tensor, rep: int) -> torch.Tensor:
    """``u * t`` where ``u`` is ``(rep·B, ...)`` and ``t`` ``(B, ...)`` (broadcast over the ``rep`` slots)."""
    if rep == 1:
        return u * t
    return (u.view((rep, -1) + tuple(u.shape[1:])) * t.unsqueeze(0)).view(u.shape)


def explicit_forward(layers: list[nn.Module], x: torch.Tensor) -> ExplicitCache:
    """Forward pass caching silu' and silu'' at every SiLU input. Differentiable w.r.t. the parameters."""
    from .models import Standardize

    h = x
    shapes, d1, d2 = [], {}, {}
    for i, layer in enumerate(layers):
        shapes.append(h.shape)
        if isinstance(layer, nn.SiLU):
            h, d1[i], d2[i] = _silu_derivs(h)
        elif isinstance(layer, Standardize):
            h = (h - layer.mean) / layer.std
        else:
            h = layer(h)
    return ExplicitCache(layers, shapes, d1, d2, h)


def _weight(layer: nn.Module, dtype: torch.dtype | None) -> torch.Tensor:
    return layer.weight if dtype is None or layer.weight.dtype == dtype else layer.weight.to(dtype)


def _affine_T(layer: nn.Module, u: torch.Tensor, in_shape: torch.Size, fold: bool = False,
              dtype: torch.dtype | None = None) -> torch.Tensor:
    """Transpose of the linear part of ``layer`` applied to ``u`` (output space -> input space).

    ``fold=True``: a convolution with one input channel (the first layer on grey images) is
    transposed as a 1x1 convolution ``C -> k·k`` (the columns) followed by ``F.fold`` (col2im) instead
    of ``conv_transpose2d``, whose backward inductor compiles slowly for a single output channel.
    Measured on this CPU (1 thread, batch of 128 MNIST images, forward + backward, compiled): 1x1
    convolution + fold 15.7 ms, the matrix product ``(N·L, C) @ (C, k·k)`` + fold it replaced
    32.8 ms, ``conv_transpose2d`` 61 ms. Same result up to the order of float additions.
    ``dtype``: the weights are cast to it (for ``u`` of that dtype: :func:`explicit_hvp`'s ``dtype``).
    """
    from .models import Standardize

    if isinstance(layer, nn.Linear):
        return u @ _weight(layer, dtype)
    if isinstance(layer, nn.Conv2d) and fold and layer.in_channels == 1 and layer.groups == 1:
        return _fold_T(_weight(layer, dtype), u, tuple(in_shape[-2:]), layer.kernel_size, layer.dilation,
                       layer.padding, layer.stride)
    if isinstance(layer, nn.Conv2d):
        H, W = in_shape[-2:]
        out_h, out_w = u.shape[-2:]
        (sh, sw), (ph, pw), (dh, dw), (kh, kw) = layer.stride, layer.padding, layer.dilation, layer.kernel_size
        oph = H - ((out_h - 1) * sh - 2 * ph + dh * (kh - 1) + 1)
        opw = W - ((out_w - 1) * sw - 2 * pw + dw * (kw - 1) + 1)
        return F.conv_transpose2d(u, _weight(layer, dtype), None, layer.stride, layer.padding, (oph, opw), 1,
                                  layer.dilation)
    if isinstance(layer, Standardize):
        return u / layer.std
    if isinstance(layer, nn.Flatten):
        return u.reshape(in_shape)
    raise TypeError(type(layer))


def _fold_T(w: torch.Tensor, u: torch.Tensor, in_hw: tuple[int, int], kernel_size, dilation, padding, stride
            ) -> torch.Tensor:
    """Transpose of a one-input-channel convolution with weight ``w`` ``(C, 1, k, k)`` applied to ``u``
    ``(N, C, Ho, Wo)``: a 1x1 convolution to the ``k·k`` columns, then ``F.fold`` (col2im) -> ``(N, 1, *in_hw)``."""
    N, C, Ho, Wo = u.shape
    kk = w[0].numel()
    w1 = w.reshape(C, kk).t().reshape(kk, C, 1, 1)                                # (k·k, C, 1, 1)
    cols = F.conv2d(u, w1).reshape(N, kk, Ho * Wo)                                # (N, k·k, L)
    return F.fold(cols, in_hw, kernel_size, dilation, padding, stride)


class _OneChannelConv(torch.autograd.Function):
    """``F.conv2d(u, w)`` (no bias) for one input channel, whose input gradient is :func:`_fold_T`.

    mkldnn's input gradient of such a convolution is slow on this CPU (9.1 ms for a batch of 128
    MNIST images against 2.7 ms for the fold), and it is on the path of ``backward_step``: the
    gradient w.r.t. ``v`` goes through the first layer of the tangent pass. Same numbers up to the
    order of float additions. The backward is written in differentiable operations.
    """

    @staticmethod
    def forward(ctx, u, w, stride, padding, dilation, kernel_size):  # type: ignore[override]
        ctx.save_for_backward(u, w)
        ctx.conf = (stride, padding, dilation, kernel_size)
        return F.conv2d(u, w, None, stride, padding, dilation)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        u, w = ctx.saved_tensors
        stride, padding, dilation, kernel_size = ctx.conf
        gu = gw = None
        if ctx.needs_input_grad[0]:
            gu = _fold_T(w, g, tuple(u.shape[-2:]), kernel_size, dilation, padding, stride)
        if ctx.needs_input_grad[1]:
            gw = torch.ops.aten.convolution_backward(g, u, w, None, list(stride), list(padding), list(dilation),
                                                     False, [0, 0], 1, [False, True, False])[1]
        return gu, gw, None, None, None, None


def _affine_lin(layer: nn.Module, u: torch.Tensor, dtype: torch.dtype | None = None, fold: bool = False
                ) -> torch.Tensor:
    """Linear part of ``layer`` (no bias, no shift) applied to ``u`` (input space -> output space).

    ``fold=True``: a one-input-channel convolution whose input needs a gradient goes through
    :class:`_OneChannelConv` (its input gradient by ``F.fold``, as in :func:`_affine_T`).
    """
    from .models import Standardize

    if isinstance(layer, nn.Linear):
        return u @ _weight(layer, dtype).t()
    if isinstance(layer, nn.Conv2d) and fold and layer.in_channels == 1 and layer.groups == 1 and u.requires_grad:
        return _OneChannelConv.apply(u, _weight(layer, dtype), layer.stride, layer.padding, layer.dilation,
                                     layer.kernel_size)
    if isinstance(layer, nn.Conv2d):
        return F.conv2d(u, _weight(layer, dtype), None, layer.stride, layer.padding, layer.dilation)
    if isinstance(layer, Standardize):
        return u / layer.std
    if isinstance(layer, nn.Flatten):
        return layer(u)
    raise TypeError(type(layer))


def explicit_backward(cache: ExplicitCache, e: torch.Tensor, fold: bool = False
                      ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Input gradient of ``<e, logits>`` ``(N, *S)`` and the adjoints at every SiLU output (``fold``: :func:`_affine_T`)."""
    u = e
    adj: dict[int, torch.Tensor] = {}
    for i in range(len(cache.layers) - 1, -1, -1):
        layer = cache.layers[i]
        if isinstance(layer, nn.SiLU):
            adj[i] = u
            u = _cmul(u, cache.d1[i], cache.rep)
        else:
            u = _affine_T(layer, u, cache.in_shapes[i], fold)
    return u, adj


def explicit_hvp(cache: ExplicitCache, adj: dict[int, torch.Tensor], v: torch.Tensor, fold: bool = False,
                 dtype: torch.dtype | None = None) -> torch.Tensor:
    """``H v`` for the function ``<e, logits>`` whose adjoints ``adj`` came from :func:`explicit_backward`.

    ``dtype``: compute in this dtype (e.g. ``torch.bfloat16``: about 2.5x faster convolutions on a CPU
    with AVX512-BF16, 8 significant bits). ``v``, ``adj``, ``cache.d1`` / ``d2`` and the weights are
    cast to it (pass :func:`cast_passes`'s result to cast them once for several products); the
    result is of that dtype. For direction search only (fast mode's power steps,
    ``regularizers.regularized_loss(power_dtype=...)``), never for a value that is reported or trained on.
    """
    layers = cache.layers

    def cast(t: torch.Tensor) -> torch.Tensor:
        return t if dtype is None or t.dtype == dtype else t.to(dtype)

    d1 = {i: cast(t) for i, t in cache.d1.items()}
    d2 = {i: cast(t) for i, t in cache.d2.items()}
    hdot = cast(v)
    adot: dict[int, torch.Tensor] = {}
    for i, layer in enumerate(layers):
        if isinstance(layer, nn.SiLU):
            adot[i] = hdot
            hdot = _cmul(hdot, d1[i], cache.rep)
        else:
            hdot = _affine_lin(layer, hdot, dtype, fold)
    u = None                                         # tangent adjoint; zero at the logits
    for i in range(len(layers) - 1, -1, -1):
        layer = layers[i]
        if isinstance(layer, nn.SiLU):
            curv = _cmul(cast(adj[i]), d2[i], cache.rep) * adot[i]
            u = curv if u is None else _cmul(u, d1[i], cache.rep) + curv
        elif u is not None:
            u = _affine_T(layer, u, cache.in_shapes[i], fold, dtype)
    if u is None:                                    # no SiLU: the input Hessian is zero
        return 0 * cast(v)                           # zeros, still connected to v (backward_step)
    return u
