"""Margins, input gradients, exact Hessian-vector products and Hessian operator norms.

Notation (the paper's section 2): for logits ``f(x) in R^K`` and a class pair ``(t, j)`` the
margin is ``f^(j)(x) = f_t(x) - f_j(x)``; its input Hessian is ``H = H_{f^(j)}(x)``, a
``d x d`` symmetric matrix with ``d`` the number of input pixels. We never form ``H``: every
routine works with exact Hessian-vector products ``H v`` (Pearlmutter 1994), computed by
differentiating ``<grad f^(j)(x), v>`` once more (reverse-over-reverse, the default) or by
forward-mode over reverse-mode with ``torch.func`` (``backend="func"``).

Everything is batched over examples: ``x`` is ``(B, *S)`` with ``S`` e.g. ``(1, 28, 28)``;
example ``b`` has its own pair ``(t[b], j[b])`` and its own vector ``v[b]``. Norms are taken
per example over the flattened ``S`` dimensions. Every entry point goes through
:func:`crossholder.guards.curvature`: batch-norm layers compute with their running statistics
(so examples never interact and the running statistics never move), and a model with no
second-order nonlinearity (linear or piecewise linear, e.g. ReLU) gets one warning: its input
Hessian is zero almost everywhere, and every product and norm here is then exactly 0.

Units: ``x`` in the model's input space (pixels in [0, 1] for the paper CNN), so ``H`` has
units of logit per pixel².

Operator norms ``||H||_{p->q} = max_{||v||_p = 1} ||H v||_q`` (:func:`operator_norm`):

* ``"ascent"``: the paper's inner loop (Algorithm 1): ``v <- v + o * grad_v ||H v||_q``,
  ``v <- v / ||v||_p``, ``T`` steps of size ``o``. Each step costs two products (``H v`` for
  the value, ``H s`` for the gradient, ``s = d||u||_q / du`` at ``u = H v``). Any ``p >= 1``,
  ``q >= 1``. For ``p = inf, q = 1`` the problem is NP-hard in general and the result is a
  heuristic lower bound; the final iterate is also rounded to its sign vector (a vertex of the
  ∞-ball, where the maximum of the convex function ``||H v||_1`` is attained) and the better
  of the two is kept.
* ``"power"``: power iteration on ``H`` for ``p = q = 2``: ``v <- H v / ||H v||``, one product
  a step; ``||H v||`` increases monotonically to ``max |λ|``.
* ``"lanczos"``: Lanczos with full re-orthogonalization for ``p = q = 2``: ``k`` products build
  a ``k``-dimensional Krylov space; the Ritz value of largest modulus is the estimate and its
  Ritz vector the direction. Far fewer products than power iteration for the same accuracy.

Every method returns a *lower bound* of the true norm (the value at a feasible ``v``), the best
seen over its iterates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Union

import torch
import torch.nn.functional as F
from torch import nn

from . import guards
from .errors import not_allowed
from .explicit import explicit_backward, explicit_forward, explicit_hvp, explicit_layers

__all__ = [
    "OperatorNormResult",
    "resolve_pairs",
    "margins",
    "margin_and_grad",
    "hvp",
    "HVPOperator",
    "operator_norm",
    "hg_norm",
    "flat_norm",
    "normalize",
    "dual",
    "second_grad",
    "lanczos",
    "full_hessian",
    "hessian_spectrum",
    "METHODS",
    "BACKENDS",
]

CODE_VERSION = "1"  # bump when a change alters the numbers of cached results
METHODS = ("ascent", "power", "lanczos")
#: ``"auto"`` (default): ``"explicit"`` where :func:`explicit_layers` supports the model, else ``"reverse"``.
BACKENDS = ("auto", "explicit", "reverse", "func")
JSpec = Union[torch.Tensor, Literal["runner_up"]]


# ---------------------------------------------------------------- helpers
def flat_norm(u: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Per-example ``p``-norm of ``u`` ``(B, *S)`` over the flattened ``S``: returns ``(B,)``."""
    return torch.linalg.vector_norm(u.flatten(1), ord=p, dim=1)


def _bcast(s: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape ``(B,)`` to ``(B, 1, ..., 1)`` to broadcast against ``like``."""
    return s.reshape((-1,) + (1,) * (like.dim() - 1))


def _check_p(name: str, value: float) -> float:
    value = float(value)
    if not (value >= 1.0):  # also rejects NaN
        raise ValueError(f"{name}={value!r} must be >= 1 (a norm); use float('inf') for the max-norm")
    return value


def _check_dtypes(model: nn.Module, x: torch.Tensor) -> None:
    """The entry points' checks before any work: finite float32/float64 inputs, at least one
    (:func:`crossholder.guards.check_inputs`), the model's dtype and no final softmax-type layer, then
    the same dtype for both."""
    if not torch.is_floating_point(x):
        raise TypeError(f"x has dtype {x.dtype}; a floating-point input is required")
    guards.check_inputs(x)
    guards.check_model_dtype(model)
    guards.refuse_probability_layer(model)
    p = next(model.parameters(), None)
    if p is not None and p.dtype != x.dtype:
        raise TypeError(f"x has dtype {x.dtype} but the model's parameters are {p.dtype}; convert one of them "
                        "(e.g. model.double() and x.double() for float64 checks)")


def resolve_pairs(logits: torch.Tensor, t: torch.Tensor, j: JSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate ``t`` and resolve ``j`` against ``logits`` ``(B, K)``; return int64 ``(t, j)`` of shape ``(B,)``.

    ``j="runner_up"`` picks, for each example, the class with the largest logit other than ``t``
    (the second-largest logit when ``t`` is the predicted class: the paper's footnote 2).
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be (B, K), got shape {tuple(logits.shape)}")
    guards.check_logits(logits)
    B, K = logits.shape
    if not isinstance(t, torch.Tensor) or t.dtype != torch.int64 or t.shape != (B,):
        raise ValueError(f"t must be an int64 tensor of shape ({B},), got "
                         f"{type(t).__name__} {getattr(t, 'dtype', '')} {tuple(getattr(t, 'shape', ()))}")
    if bool(((t < 0) | (t >= K)).any()):
        raise ValueError(f"t has class indices outside [0, {K})")
    t = t.to(logits.device)
    if isinstance(j, str):
        if j != "runner_up":
            raise ValueError(f"j={j!r}: pass an int64 tensor of shape ({B},) or 'runner_up'")
        masked = logits.detach().clone()
        masked.scatter_(1, t[:, None], float("-inf"))
        j = masked.argmax(dim=1)
    else:
        if not isinstance(j, torch.Tensor) or j.dtype != torch.int64 or j.shape != (B,):
            raise ValueError(f"j must be 'runner_up' or an int64 tensor of shape ({B},), got "
                             f"{type(j).__name__} {getattr(j, 'dtype', '')} {tuple(getattr(j, 'shape', ()))}")
        if bool(((j < 0) | (j >= K)).any()):
            raise ValueError(f"j has class indices outside [0, {K})")
        j = j.to(logits.device)
        if bool((j == t).any()):
            raise ValueError("j equals t for some examples; the margin f_t - f_j would be identically zero")
    return t, j


def _pair_margin(logits: torch.Tensor, t: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    return logits.gather(1, t[:, None]).squeeze(1) - logits.gather(1, j[:, None]).squeeze(1)


def margins(model: nn.Module, x: torch.Tensor, t: torch.Tensor, j: JSpec) -> torch.Tensor:
    """Margins ``f_t(x) - f_j(x)``, ``(B,)``. ``j`` an int64 ``(B,)`` tensor or ``"runner_up"``."""
    _check_dtypes(model, x)
    with guards.frozen_batch_stats(model):
        logits = model(x)
    t, jj = resolve_pairs(logits, t, j)
    return _pair_margin(logits, t, jj)


@guards.with_gradients
def margin_and_grad(model: nn.Module, x: torch.Tensor, t: torch.Tensor, j: JSpec, *,
                    create_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Margins ``(B,)``, their input gradients ``(B, *S)`` and the resolved ``j`` ``(B,)``.

    With ``create_graph=True`` the margins and the gradient stay differentiable (w.r.t. ``x`` and the
    model's parameters), as the regularizers need; without it both are plain tensors (no graph), in
    any gradient context.
    """
    _check_dtypes(model, x)
    xr = x if (x.requires_grad and create_graph) else x.detach().requires_grad_(True)
    with guards.frozen_batch_stats(model):
        logits = model(xr)
    t, jj = resolve_pairs(logits, t, j)
    m = _pair_margin(logits, t, jj)
    (g,) = torch.autograd.grad(m.sum(), xr, create_graph=create_graph)
    return (m, g, jj) if create_graph else (m.detach(), g, jj)


class HVPOperator:
    """``v -> H v`` for a fixed batch, reusing the work of the first pass for every product.

    Backends: ``"auto"`` (default) picks ``"explicit"`` where it applies, else ``"reverse"``;
    ``"explicit"``: hand-written tangent passes for ``nn.Sequential`` chains of the paper's
    Standardize, Conv2d (groups 1, zero padding), Linear, SiLU and Flatten (one product costs about
    one forward+backward; any other model raises); ``"reverse"``: one backward pass through the
    retained graph of ``grad f^(j)(x)`` (reverse-over-reverse, any twice-differentiable model);
    ``"func"``: ``torch.func`` forward-over-reverse, recomputed for every product. ``count``
    records the number of products.

    Attributes: ``x`` ``(B, *S)`` (detached), ``t``, ``j`` ``(B,)``, ``margin`` ``(B,)``,
    ``grad`` ``(B, *S)`` (detached), ``backend`` (the one actually used).
    """

    @guards.with_gradients
    def __init__(self, model: nn.Module, x: torch.Tensor, t: torch.Tensor, j: JSpec,
                 *, backend: str = "auto") -> None:
        if backend not in BACKENDS:
            raise not_allowed("backend", backend, BACKENDS)
        _check_dtypes(model, x)
        with guards.curvature(model):
            self._setup(model, x, t, j, backend)

    def _setup(self, model: nn.Module, x: torch.Tensor, t: torch.Tensor, j: JSpec, backend: str) -> None:
        backend, layers = _pick_backend(model, backend)
        self.model, self.backend, self.count = model, backend, 0
        self.x = x.detach().requires_grad_(backend != "explicit")
        if backend == "explicit":
            with torch.no_grad():
                self._cache = explicit_forward(layers, self.x)
                self.t, self.j = resolve_pairs(self._cache.logits, t, j)
                K = self._cache.logits.shape[1]
                e = F.one_hot(self.t, K).to(x.dtype) - F.one_hot(self.j, K).to(x.dtype)
                g, self._adj = explicit_backward(self._cache, e)
                m = _pair_margin(self._cache.logits, self.t, self.j)
            self._g = g
        else:
            with torch.enable_grad():
                logits = model(self.x)
                self.t, self.j = resolve_pairs(logits, t, j)
                m = _pair_margin(logits, self.t, self.j)
                (self._g,) = torch.autograd.grad(m.sum(), self.x, create_graph=(backend == "reverse"))
        self.margin = m.detach()
        self.grad = self._g.detach()

    @guards.with_gradients
    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        if v.shape != self.x.shape:
            raise ValueError(f"v has shape {tuple(v.shape)}, expected {tuple(self.x.shape)} (same as x)")
        self.count += 1
        v = v.to(self.x.dtype)
        if self.backend == "explicit":
            with torch.no_grad():
                return explicit_hvp(self._cache, self._adj, v)
        if self.backend == "reverse":
            return second_grad(self._g, self.x, v, retain_graph=True)
        with guards.frozen_batch_stats(self.model):
            return _hvp_func(self.model, self.x.detach(), self.t, self.j, v)

    def release(self) -> None:
        """Free the retained graph and caches."""
        self._g = self._g.detach()
        self._cache = self._adj = None


def _hvp_func(model: nn.Module, x: torch.Tensor, t: torch.Tensor, j: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Forward-over-reverse Hessian-vector product with ``torch.func``."""
    from torch.func import grad, jvp

    def total_margin(xx: torch.Tensor) -> torch.Tensor:
        return _pair_margin(model(xx), t, j).sum()

    return jvp(grad(total_margin), (x,), (v.to(x.dtype),))[1]


@guards.with_gradients
def hvp(model: nn.Module, x: torch.Tensor, t: torch.Tensor, j: JSpec, v: torch.Tensor, *,
        create_graph: bool = False, backend: str = "auto") -> torch.Tensor:
    """Exact Hessian-vector products ``H_{f^(j)}(x_b) v_b`` for every example: ``(B, *S)``.

    ``create_graph=True`` keeps the result differentiable w.r.t. the model's parameters (and
    ``v`` if it requires grad), as training needs (``"explicit"`` or ``"reverse"``). Backends as in
    :class:`HVPOperator`.
    """
    if v.shape != x.shape:
        raise ValueError(f"v has shape {tuple(v.shape)}, expected {tuple(x.shape)} (same as x)")
    if backend not in BACKENDS:
        raise not_allowed("backend", backend, BACKENDS)
    with guards.curvature(model):
        return _hvp(model, x, t, j, v, create_graph, backend)


def _pick_backend(model: nn.Module, backend: str) -> tuple[str, list[nn.Module] | None]:
    """The backend to use and, for ``"explicit"``, the model's layers (:data:`BACKENDS`)."""
    if backend not in BACKENDS:
        raise not_allowed("backend", backend, BACKENDS)
    if backend not in ("auto", "explicit"):
        return backend, None
    layers = explicit_layers(model)
    if layers is None:
        if backend == "explicit":
            raise ValueError("backend='explicit' supports nn.Sequential chains of Standardize, Conv2d (groups 1, "
                             "zero padding), Linear, SiLU and Flatten; this model has other modules: use "
                             "backend='auto' (the default) or 'reverse'")
        return "reverse", None
    return "explicit", layers


def _hvp(model: nn.Module, x: torch.Tensor, t: torch.Tensor, j: JSpec, v: torch.Tensor, create_graph: bool,
         backend: str) -> torch.Tensor:
    backend, layers = _pick_backend(model, backend)
    if layers is not None:
        _check_dtypes(model, x)
        with torch.enable_grad() if create_graph else torch.no_grad():
            cache = explicit_forward(layers, x.detach())
            tt, jj = resolve_pairs(cache.logits, t, j)
            K = cache.logits.shape[1]
            e = F.one_hot(tt, K).to(x.dtype) - F.one_hot(jj, K).to(x.dtype)
            _, adj = explicit_backward(cache, e)
            return explicit_hvp(cache, adj, v.to(x.dtype))
    if backend == "func":
        if create_graph:
            raise ValueError("create_graph=True needs backend='explicit' or 'reverse'")
        _check_dtypes(model, x)
        logits = model(x.detach())
        tt, jj = resolve_pairs(logits, t, j)
        return _hvp_func(model, x.detach(), tt, jj, v)
    _check_dtypes(model, x)
    xr = x if x.requires_grad else x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(xr)
        tt, jj = resolve_pairs(logits, t, j)
        (g,) = torch.autograd.grad(_pair_margin(logits, tt, jj).sum(), xr, create_graph=True)
        return second_grad(g, xr, v.to(g.dtype), create_graph=create_graph)


def second_grad(g: torch.Tensor, x: torch.Tensor, v: torch.Tensor, *, retain_graph: bool | None = None,
                 create_graph: bool = False) -> torch.Tensor:
    """``d<g, v>/dx`` ``(B, *S)``; zeros where ``g`` does not depend on ``x`` (a model without a second-order
    nonlinearity, e.g. linear or piecewise linear: its input Hessian is zero, not an error)."""
    zero = 0 * v                      # zeros of x's shape, connected to v (a backward step through it works)
    if not g.requires_grad:
        return zero
    with torch.enable_grad():
        (hv,) = torch.autograd.grad(g, x, grad_outputs=v, retain_graph=retain_graph, create_graph=create_graph,
                                    allow_unused=True)
    return zero if hv is None else hv


# ---------------------------------------------------------------- operator norms
@dataclass(frozen=True)
class OperatorNormResult:
    """Result of :func:`operator_norm`.

    Attributes:
        norm: ``(B,)`` the estimate of ``||H||_{p->q}`` per example (a lower bound: the value at ``v``).
        v: ``(B, *S)`` the maximizing direction found, ``||v||_p = 1``.
        j: ``(B,)`` the class ``j`` of each margin (resolved when ``"runner_up"`` was asked).
        history: ``(S_steps, B)`` the best estimate after each step.
        history_hvps: number of Hessian-vector products spent after each step (length ``S_steps``).
        hvps: total number of Hessian-vector products per example.
        method, p, q: what was computed.
    """

    norm: torch.Tensor
    v: torch.Tensor
    j: torch.Tensor
    history: torch.Tensor
    history_hvps: tuple[int, ...]
    hvps: int
    method: str
    p: float
    q: float


def dual(u: torch.Tensor, q: float) -> torch.Tensor:
    """``d ||u||_q / du`` per example (a subgradient where not differentiable)."""
    flat = u.flatten(1)
    if q == 2.0:
        s = flat / flat.norm(dim=1, keepdim=True).clamp_min(torch.finfo(u.dtype).tiny)
    elif q == 1.0:
        s = torch.sign(flat)
    elif math.isinf(q):
        idx = flat.abs().argmax(dim=1, keepdim=True)
        s = torch.zeros_like(flat).scatter_(1, idx, torch.sign(flat.gather(1, idx)))
    else:
        nq = torch.linalg.vector_norm(flat, ord=q, dim=1, keepdim=True).clamp_min(torch.finfo(u.dtype).tiny)
        s = torch.sign(flat) * (flat.abs() / nq) ** (q - 1)
    return s.view_as(u)


def normalize(v: torch.Tensor, p: float) -> torch.Tensor:
    """``v / ||v||_p`` per example (``(B, *S)``; a zero row stays zero)."""
    n = flat_norm(v, p).clamp_min(torch.finfo(v.dtype).tiny)
    return v / _bcast(n, v)


def _start(x: torch.Tensor, v0: torch.Tensor | None, generator: torch.Generator | None) -> torch.Tensor:
    if v0 is not None:
        if v0.shape != x.shape:
            raise ValueError(f"v0 has shape {tuple(v0.shape)}, expected {tuple(x.shape)} (same as x)")
        v = v0.detach().to(device=x.device, dtype=x.dtype)
        zero = flat_norm(v) == 0
        if bool(zero.any()):
            raise ValueError("v0 is zero for some examples; give a non-zero starting vector")
        return v
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)


@guards.with_gradients
def operator_norm(model: nn.Module, x: torch.Tensor, t: torch.Tensor, j: JSpec = "runner_up", *,
                  p: float = 2.0, q: float = 2.0, iters: int = 10, step: float = 0.1,
                  method: str = "ascent", v0: torch.Tensor | None = None, seed: int | None = 0,
                  restarts: int = 1, backend: str = "auto") -> OperatorNormResult:
    """Estimate ``||H_{f^(j)}(x_b)||_{p->q}`` for every example of the batch.

    Args:
        model: logits model, ``(B, *S) -> (B, K)``; twice differentiable (SiLU, not ReLU).
        x: inputs ``(B, *S)`` (pixels in [0, 1] for the paper CNN); any floating dtype equal to the model's.
        t: int64 ``(B,)`` the reference class (usually the label or the prediction).
        j: int64 ``(B,)`` the other class, or ``"runner_up"``.
        p, q: the operator norm ``p -> q``; ``"power"`` and ``"lanczos"`` need ``p = q = 2``.
        iters: steps (ascent: ``T``; power: products; lanczos: Krylov dimension, capped at ``d``).
        step: the ascent step size ``o`` (Algorithm 1 uses 0.1); ignored by the other methods.
        method: ``"ascent"``, ``"power"`` or ``"lanczos"`` (module docstring).
        v0: starting vectors ``(B, *S)``; default i.i.d. N(0, I) drawn from ``seed``.
        seed: seed of the starting vectors when ``v0`` is None (``None``: torch's global RNG).
        restarts: independent starts per example (batched); the best is kept. The first start is
            ``v0`` when given. ``hvps`` counts the products of one start.
        backend: how Hessian-vector products are computed (:class:`HVPOperator`): ``"auto"``
            (default: ``"explicit"`` where it applies, else ``"reverse"``), ``"explicit"``,
            ``"reverse"`` or ``"func"``.

    Returns:
        :class:`OperatorNormResult` with ``norm`` ``(B,)`` and ``v`` ``(B, *S)``.
    """
    p, q = _check_p("p", p), _check_p("q", q)
    if method not in METHODS:
        raise not_allowed("method", method, METHODS)
    if not isinstance(iters, int) or isinstance(iters, bool) or iters < 1:
        raise ValueError(f"iters={iters!r} must be an integer >= 1")
    if not (step > 0 and math.isfinite(step)):
        raise ValueError(f"step={step!r} must be a finite number > 0")
    if method in ("power", "lanczos") and (p != 2.0 or q != 2.0):
        raise ValueError(f"method={method!r} computes the spectral norm only (p = q = 2); got p={p}, q={q}. "
                         "Use method='ascent' for other norms")
    if not isinstance(restarts, int) or isinstance(restarts, bool) or restarts < 1:
        raise ValueError(f"restarts={restarts!r} must be an integer >= 1")
    if x.dim() < 2:
        raise ValueError(f"x must be batched, (B, *S); got shape {tuple(x.shape)}")
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    B = x.shape[0]
    if restarts > 1:
        _check_dtypes(model, x)
        with torch.no_grad(), guards.frozen_batch_stats(model):
            t, j = resolve_pairs(model(x), t, j)
        starts = [_start(x, v0, gen)] + [_start(x, None, gen) for _ in range(restarts - 1)]
        x, t, j = x.repeat((restarts,) + (1,) * (x.dim() - 1)), t.repeat(restarts), j.repeat(restarts)
        v0 = torch.cat(starts)
    H = HVPOperator(model, x, t, j, backend=backend)
    v = _start(H.x, v0, gen)
    try:
        with torch.no_grad():
            if method == "lanczos":
                res = lanczos(H, v, iters, gen)
            elif method == "power":
                res = _power(H, v, iters)
            else:
                res = _ascent(H, v, iters, step, p, q)
    finally:
        H.release()
    return res if restarts == 1 else _best_of_restarts(res, restarts, B)


def _best_of_restarts(res: OperatorNormResult, R: int, B: int) -> OperatorNormResult:
    norms = res.norm.view(R, B)
    k = norms.argmax(dim=0)                                    # (B,)
    ar = torch.arange(B, device=norms.device)
    v = res.v.view((R, B) + tuple(res.v.shape[1:]))[k, ar]
    hist = res.history.view(-1, R, B).amax(dim=1)
    return OperatorNormResult(norm=norms[k, ar], v=v, j=res.j[:B], history=hist, history_hvps=res.history_hvps,
                              hvps=res.hvps, method=res.method, p=res.p, q=res.q)


def _result(H: HVPOperator, norm, v, hist, hist_hvps, method, p, q) -> OperatorNormResult:
    return OperatorNormResult(norm=norm.detach(), v=v.detach(), j=H.j, history=torch.stack(hist),
                              history_hvps=tuple(hist_hvps), hvps=H.count, method=method, p=p, q=q)


def _power(H: HVPOperator, v: torch.Tensor, iters: int) -> OperatorNormResult:
    v = normalize(v, 2.0)
    best = torch.zeros(v.shape[0], dtype=v.dtype, device=v.device)
    best_v = v.clone()
    hist, hh = [], []
    for _ in range(iters):
        u = H(v)
        val = flat_norm(u)
        better = val > best
        best = torch.where(better, val, best)
        best_v = torch.where(_bcast(better, v), v, best_v)
        hist.append(best.clone()); hh.append(H.count)
        v = torch.where(_bcast(val > 0, v), normalize(u, 2.0), v)
    return _result(H, best, best_v, hist, hh, "power", 2.0, 2.0)


def _ascent(H: HVPOperator, v: torch.Tensor, iters: int, step: float, p: float, q: float) -> OperatorNormResult:
    v = normalize(v, p)
    best = torch.full((v.shape[0],), -1.0, dtype=v.dtype, device=v.device)
    best_v = v.clone()
    hist, hh = [], []

    def consider(cand: torch.Tensor, u: torch.Tensor) -> None:
        nonlocal best, best_v
        val = flat_norm(u, q)
        better = val > best
        best = torch.where(better, val, best)
        best_v = torch.where(_bcast(better, cand), cand, best_v)

    u = H(v)
    for _ in range(iters):
        consider(v, u)
        grad = H(dual(u, q))                 # grad_v ||H v||_q = H^T s = H s
        v = normalize(v + step * grad, p)
        u = H(v)
        consider(v, u)
        hist.append(best.clone()); hh.append(H.count)
    if math.isinf(p):
        vs = torch.sign(best_v)
        vs = torch.where(vs == 0, torch.ones_like(vs), vs)
        consider(vs, H(vs))
        hist[-1] = best.clone(); hh[-1] = H.count
    return _result(H, best, best_v, hist, hh, "ascent", p, q)


def lanczos(H: HVPOperator, v: torch.Tensor, iters: int, gen: torch.Generator | None) -> OperatorNormResult:
    B = v.shape[0]
    d = v[0].numel()
    k = min(iters, d)
    dt, dev = v.dtype, v.device
    Q = torch.zeros(k + 1, B, d, dtype=dt, device=dev)
    alpha = torch.zeros(B, k, dtype=dt, device=dev)
    beta = torch.zeros(B, k, dtype=dt, device=dev)
    Q[0] = normalize(v, 2.0).reshape(B, d)
    hist, hh = [], []
    best = torch.zeros(B, dtype=dt, device=dev)
    best_y = None
    eps = torch.finfo(dt).eps
    for i in range(k):
        w = H(Q[i].view_as(v)).reshape(B, d)
        a = (Q[i] * w).sum(1)
        alpha[:, i] = a
        # full re-orthogonalization against every basis vector, twice ("twice is enough")
        for _ in range(2):
            coef = torch.einsum("kbd,bd->kb", Q[: i + 1], w)
            w = w - torch.einsum("kb,kbd->bd", coef, Q[: i + 1])
        # Ritz values of the current tridiagonal matrix
        T = torch.diag_embed(alpha[:, : i + 1])
        if i > 0:
            off = beta[:, :i]
            T = T + torch.diag_embed(off, 1) + torch.diag_embed(off, -1)
        theta, Y = torch.linalg.eigh(T)
        idx = theta.abs().argmax(dim=1)
        best = theta.abs().gather(1, idx[:, None]).squeeze(1)
        best_y = (Y, idx, i + 1)
        hist.append(best.clone()); hh.append(H.count)
        if i + 1 == k:
            break
        b = w.norm(dim=1)
        scale = alpha[:, : i + 1].abs().amax(dim=1) + beta[:, : i + 1].abs().amax(dim=1)
        broke = b <= 1e3 * eps * scale.clamp_min(eps)
        if bool(broke.any()):
            # invariant subspace found: continue with a fresh direction orthogonal to the basis
            r = torch.randn(B, d, generator=gen, dtype=dt, device="cpu").to(dev)
            for _ in range(2):
                coef = torch.einsum("kbd,bd->kb", Q[: i + 1], r)
                r = r - torch.einsum("kb,kbd->bd", coef, Q[: i + 1])
            r = r / r.norm(dim=1, keepdim=True).clamp_min(torch.finfo(dt).tiny)
            Q[i + 1] = torch.where(broke[:, None], r, w / b.clamp_min(torch.finfo(dt).tiny)[:, None])
            beta[:, i] = torch.where(broke, torch.zeros_like(b), b)
        else:
            Q[i + 1] = w / b[:, None]
            beta[:, i] = b
    Y, idx, m = best_y
    y = Y.gather(2, idx[:, None, None].expand(B, m, 1)).squeeze(2)      # (B, m)
    vec = torch.einsum("bk,kbd->bd", y, Q[:m]).view_as(v)
    vec = normalize(vec, 2.0)
    return _result(H, best, vec, hist, hh, "lanczos", 2.0, 2.0)


@guards.with_gradients
def hg_norm(model: nn.Module, x: torch.Tensor, t: torch.Tensor, j: JSpec = "runner_up", *,
            backend: str = "auto") -> torch.Tensor:
    """The paper's ``|Hg|``: ``||H ĝ||_2`` with ``ĝ = grad f^(j)(x) / ||grad f^(j)(x)||_2``, ``(B,)``.

    Moosavi-Dezfooli et al. (2019) use it as a proxy of ``||H||_2``; it is a lower bound
    (``ĝ`` is a unit vector), so ``|Hg| <= |Hv*|`` for the exact ``v*``.
    """
    H = HVPOperator(model, x, t, j, backend=backend)
    try:
        with torch.no_grad():
            ghat = normalize(H.grad, 2.0)
            return flat_norm(H(ghat)).detach()
    finally:
        H.release()


@guards.with_gradients
def full_hessian(model: nn.Module, x: torch.Tensor, t: torch.Tensor | int, j: torch.Tensor | int, *,
                 chunk: int = 112) -> torch.Tensor:
    """The full ``d x d`` input Hessian of ``f_t - f_j`` at one example ``x`` ``(*S)``.

    Built column by column from reverse-over-reverse products with the basis vectors (autograd's
    double backward, independent of the explicit passes), ``chunk`` columns at a time, so memory
    stays at ``chunk`` copies of the network's activations (``torch.func.hessian`` vectorizes over
    all ``d`` columns at once: gigabytes for the paper CNN in float64).
    """
    d = x.numel()
    cols = []
    tt = torch.as_tensor(t, dtype=torch.int64).reshape(())
    jj = torch.as_tensor(j, dtype=torch.int64).reshape(())
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    for s0 in range(0, d, chunk):
        e = eye[s0:s0 + chunk]
        n = e.shape[0]
        xb = x.detach().unsqueeze(0).expand((n,) + tuple(x.shape)).contiguous()
        hv = hvp(model, xb, tt.expand(n).clone(), jj.expand(n).clone(), e.view((n,) + tuple(x.shape)),
                 backend="reverse")
        cols.append(hv.reshape(n, d))
    return torch.cat(cols).T.contiguous()


@guards.with_gradients
def hessian_spectrum(model: nn.Module, x: torch.Tensor, t: torch.Tensor, j: JSpec = "runner_up", *,
                     chunk: int = 112) -> torch.Tensor:
    """Every eigenvalue of the input Hessian of ``f_t - f_j`` per example, largest modulus first.

    ``x`` ``(B, *S)``, ``t`` ``(B,)``, ``j`` ``(B,)`` or ``"runner_up"``; returns ``(B, d)`` with
    ``d = prod(S)``, row ``b`` sorted by ``|λ|`` descending (so ``[:, 0].abs()`` is the operator
    norm ``||H||_2``), in logit per pixel². Exact up to rounding: the full Hessian of each example
    (:func:`full_hessian`, ``d`` products), symmetrized, then ``torch.linalg.eigvalsh``. For small
    inputs and analysis (MNIST: 784 products and a 784 x 784 eigenproblem per example, about a
    second in float64); use :func:`operator_norm` in training and attacks.
    """
    if x.dim() < 2:
        raise ValueError(f"x has shape {tuple(x.shape)}; expected (B, *S) with a batch dimension")
    with torch.no_grad(), guards.frozen_batch_stats(model):
        logits = model(x)
    t, jj = resolve_pairs(logits, t, j)
    out = []
    for b in range(x.shape[0]):
        H = full_hessian(model, x[b], t[b], jj[b], chunk=chunk)
        ev = torch.linalg.eigvalsh((H + H.T) / 2)
        out.append(ev[ev.abs().argsort(descending=True, stable=True)])
    return torch.stack(out)
