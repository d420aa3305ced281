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
from typing import Callable, Literal, Union

import torch
import torch.nn.functional as F
from torch import nn

from . import guards

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
    if not torch.is_floating_point(x):
        raise TypeError(f"x has dtype {x.dtype}; a floating-point input is required")
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
    with guards.frozen_batch_stats(model):
        logits = model(x)
    t, jj = resolve_pairs(logits, t, j)
    return _pair_margin(logits, t, jj)


def margin_and_grad(model: nn.Module, x: torch.Tensor, t: torch.Tensor, j: JSpec, *,
                    create_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Margins ``(B,)``, their input gradients ``(B, *S)`` and the resolved ``j`` ``(B,)``.

    With ``create_graph=True`` the gradient stays differentiable (w.r.t. ``x`` and the model's
    parameters), as the regularizers need.
    """
    _check_dtypes(model, x)
    xr = x if (x.requires_grad and create_graph) else x.detach().requires_grad_(True)
    with guards.frozen_batch_stats(model):
        logits = model(xr)
    t, jj = resolve_pairs(logits, t, j)
    m = _pair_margin(logits, t, jj)
    (g,) = torch.autograd.grad(m.sum(), xr, create_graph=create_graph)
    return m, g, jj


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

    def __init__(self, model: nn.Module, x: torch.Tensor, t: torch.Tensor, j: JSpec,
                 *, backend: str = "auto") -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r}; allowed values: {', '.join(map(repr, BACKENDS))}")
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

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        if v.shape != self.x.shape:
            raise ValueError(f"v has shape {tuple(v.shape)}, expected {tuple(self.x.shape)} (same as x)")
        self.count += 1
        v = v.to(self.x.dtype)
        if self.backend == "explicit":
            with torch.no_grad():
                return explicit_hvp(self._cache, self._adj, v)
        if self.backend == "reverse":
            return _second_grad(self._g, self.x, v, retain_graph=True)
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
        raise ValueError(f"backend={backend!r}; allowed values: {', '.join(map(repr, BACKENDS))}")
    with guards.curvature(model):
        return _hvp(model, x, t, j, v, create_graph, backend)


def _pick_backend(model: nn.Module, backend: str) -> tuple[str, list[nn.Module] | None]:
    """The backend to use and, for ``"explicit"``, the model's layers (:data:`BACKENDS`)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}; allowed values: {', '.join(map(repr, BACKENDS))}")
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
        return _second_grad(g, xr, v.to(g.dtype), create_graph=create_graph)


def _second_grad(g: torch.Tensor, x: torch.Tensor, v: torch.Tensor, *, retain_graph: bool | None = None,
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


def _dual(u: torch.Tensor, q: float) -> torch.Tensor:
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


def _normalize(v: torch.Tensor, p: float) -> torch.Tensor:
    n = flat_norm(v, p).clamp_min(torch.finfo(v.dtype).tiny)
    return v / _bcast(n, v)


#: public name of :func:`_normalize` (``v / ||v||_p`` per example) for scripts outside the library
normalize = _normalize


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
        raise ValueError(f"method={method!r}; allowed values: {', '.join(map(repr, METHODS))}")
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
                res = _lanczos(H, v, iters, gen)
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
    v = _normalize(v, 2.0)
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
        v = torch.where(_bcast(val > 0, v), _normalize(u, 2.0), v)
    return _result(H, best, best_v, hist, hh, "power", 2.0, 2.0)


def _ascent(H: HVPOperator, v: torch.Tensor, iters: int, step: float, p: float, q: float) -> OperatorNormResult:
    v = _normalize(v, p)
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
        grad = H(_dual(u, q))                 # grad_v ||H v||_q = H^T s = H s
        v = _normalize(v + step * grad, p)
        u = H(v)
        consider(v, u)
        hist.append(best.clone()); hh.append(H.count)
    if math.isinf(p):
        vs = torch.sign(best_v)
        vs = torch.where(vs == 0, torch.ones_like(vs), vs)
        consider(vs, H(vs))
        hist[-1] = best.clone(); hh[-1] = H.count
    return _result(H, best, best_v, hist, hh, "ascent", p, q)


def _lanczos(H: HVPOperator, v: torch.Tensor, iters: int, gen: torch.Generator | None) -> OperatorNormResult:
    B = v.shape[0]
    d = v[0].numel()
    k = min(iters, d)
    dt, dev = v.dtype, v.device
    Q = torch.zeros(k + 1, B, d, dtype=dt, device=dev)
    alpha = torch.zeros(B, k, dtype=dt, device=dev)
    beta = torch.zeros(B, k, dtype=dt, device=dev)
    Q[0] = _normalize(v, 2.0).reshape(B, d)
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
    vec = _normalize(vec, 2.0)
    return _result(H, best, vec, hist, hh, "lanczos", 2.0, 2.0)


def hg_norm(model: nn.Module, x: torch.Tensor, t: torch.Tensor, j: JSpec = "runner_up", *,
            backend: str = "auto") -> torch.Tensor:
    """The paper's ``|Hg|``: ``||H ĝ||_2`` with ``ĝ = grad f^(j)(x) / ||grad f^(j)(x)||_2``, ``(B,)``.

    Moosavi-Dezfooli et al. (2019) use it as a proxy of ``||H||_2``; it is a lower bound
    (``ĝ`` is a unit vector), so ``|Hg| <= |Hv*|`` for the exact ``v*``.
    """
    H = HVPOperator(model, x, t, j, backend=backend)
    try:
        with torch.no_grad():
            ghat = _normalize(H.grad, 2.0)
            return flat_norm(H(ghat)).detach()
    finally:
        H.release()


# ---------------------------------------------------------------- explicit second-order passes
# For the networks of this package (a chain of Standardize, Conv2d, Linear, SiLU and Flatten
# layers) the gradient and the Hessian-vector product are written out as plain tensor operations:
#
#   forward            a_l = W_l h_{l-1} + b_l,  h_l = silu(a_l)       (caches silu', silu'')
#   backward (adjoint) gbar_{l-1} = W_l^T (gbar_l ⊙ silu'(a_l))           ->  g = ∇_x f^(j)
#   tangent forward    adot_l = W_l hdot_{l-1}, hdot_l = silu'(a_l) ⊙ adot_l    (hdot_0 = v)
#   tangent backward   ddot_{l-1} = W_l^T (ddot_l ⊙ silu'(a_l) + gbar_l ⊙ silu''(a_l) ⊙ adot_l)  -> H v
#
# This is Pearlmutter's R-operator applied by hand: exact, and each product costs one tangent
# forward and one tangent backward pass, about one forward+backward, instead of autograd's
# backward-of-backward (about twice that). Because the passes are ordinary differentiable
# operations, training differentiates ||g|| and ||H v|| w.r.t. the parameters with a single
# reverse pass (no double or triple backward through autograd's generic formulas).

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


def norm_table(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, method: str = "ascent", iters: int = 10,
               step: float = 0.1, lanczos_iters: int | None = 20, batch_size: int = 500, seed: int = 0,
               progress: bool = True):
    """Per-example ``|Hg|`` and ``|Hv*|`` for the runner-up class (the paper's appendix C.1, Figure 3).

    ``t`` is the predicted class and ``j`` the runner-up (second-largest logit), as in the paper's
    footnote 2. Returns a DataFrame with one row per example: ``index``, ``label``, ``pred``, ``j``,
    ``margin``, ``grad_norm``, ``hg`` (|Hg|), ``hv`` (|Hv*|, the ``method`` estimate with ``iters``
    steps), ``diff`` (``hv - hg``) and, when ``lanczos_iters`` is set, ``hv_lanczos``: a Lanczos
    estimate with that many products (beyond the paper: how far the paper's ascent is from the
    norm). Units: logits per pixel² of [0, 1] images.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    model.eval()
    rows = []
    for start in tqdm(range(0, len(x), batch_size), desc="|Hg|, |Hv*|", disable=not progress, leave=False):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        with torch.no_grad(), guards.frozen_batch_stats(model):
            t = model(xb).argmax(1)
        H = HVPOperator(model, xb, t, "runner_up")
        with torch.no_grad():
            hg = flat_norm(H(_normalize(H.grad, 2.0)))
        H.release()
        res = operator_norm(model, xb, t, H.j, method=method, iters=iters, step=step, seed=seed + start)
        rows.append(pd.DataFrame({
            "index": range(start, start + len(xb)), "label": yb.tolist(), "pred": t.tolist(), "j": H.j.tolist(),
            "margin": H.margin.tolist(), "grad_norm": flat_norm(H.grad).tolist(), "hg": hg.tolist(),
            "hv": res.norm.tolist()}))
        if lanczos_iters:
            lz = operator_norm(model, xb, t, H.j, method="lanczos", iters=lanczos_iters, seed=seed + start)
            rows[-1]["hv_lanczos"] = lz.norm.tolist()
    df = pd.concat(rows, ignore_index=True)
    df["diff"] = df["hv"] - df["hg"]
    return df


def norm_summary(df) -> "pd.DataFrame":  # noqa: F821
    """Quantiles of ``hg``, ``hv`` and ``diff`` of a :func:`norm_table`, with the histogram mode of each.

    The mode is the centre of the fullest of 50 equal-width bins between the 0.5% and 99.5% quantiles.
    """
    import numpy as np
    import pandas as pd

    rows = []
    for col in [c for c in ("hg", "hv", "diff", "hv_lanczos") if c in df]:
        s = df[col].to_numpy()
        lo, hi = np.quantile(s, [0.005, 0.995])
        counts, edges = np.histogram(s[(s >= lo) & (s <= hi)], bins=50, range=(lo, hi))
        k = int(counts.argmax())
        rows.append({"quantity": col, "mean": s.mean(), "q05": np.quantile(s, 0.05), "q25": np.quantile(s, 0.25),
                     "median": np.median(s), "q75": np.quantile(s, 0.75), "q95": np.quantile(s, 0.95),
                     "max": s.max(), "mode": 0.5 * (edges[k] + edges[k + 1])})
    return pd.DataFrame(rows).set_index("quantity")


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


def convergence_table(model: nn.Module, x: torch.Tensor, t: torch.Tensor, *, products: tuple[int, ...] = (1, 2, 3, 5, 7, 10, 15, 20, 30),
                      step: float = 0.1, seed: int = 0, progress: bool = True):
    """Estimates against the number of Hessian-vector products, with the exact norm, per example.

    ``model`` and ``x`` in float64; the exact spectral norm comes from the full input Hessian
    (:func:`full_hessian`, ``d x d``) and ``eigvalsh``; ``j`` is the runner-up of ``t``.
    Ascent with ``T`` steps costs ``2T + 1`` products, so it appears at odd budgets only.
    Returns a DataFrame: ``example``, ``method``, ``products``, ``estimate``, ``exact``, ``rel_err``.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    if x.dtype != torch.float64:
        raise TypeError("convergence_table needs float64 inputs and model (the exact oracle)")
    with torch.no_grad(), guards.frozen_batch_stats(model):
        _, j = resolve_pairs(model(x), t, "runner_up")
    exact = []
    for b in tqdm(range(len(x)), desc="full Hessians", disable=not progress, leave=False):
        Hm = full_hessian(model, x[b], t[b], j[b])
        exact.append(torch.linalg.eigvalsh(0.5 * (Hm + Hm.T)).abs().max())
    exact_t = torch.stack(exact)
    rows = []
    budget = max(products)
    for method in METHODS:
        iters = budget if method != "ascent" else (budget - 1) // 2
        r = operator_norm(model, x, t, j, method=method, iters=iters, step=step, seed=seed)
        for k, n_prod in enumerate(r.history_hvps):
            if n_prod not in products:
                continue
            est = r.history[k]
            for b in range(len(x)):
                rows.append({"example": b, "method": method, "products": n_prod, "estimate": float(est[b]),
                             "exact": float(exact_t[b]), "rel_err": float((exact_t[b] - est[b]) / exact_t[b])})
    return pd.DataFrame(rows)


def figure3_claims(df) -> "pd.DataFrame":  # noqa: F821
    """The paper's statements about Figure 3 (appendix C.1) checked against a :func:`norm_table`."""
    import pandas as pd

    s = norm_summary(df)
    rows = [
        {"claim": "|Hv*| is shifted to the right of |Hg| (median)",
         "ours": f"median |Hg| {s.loc['hg', 'median']:.3g}, |Hv*| {s.loc['hv', 'median']:.3g}",
         "supported": bool(s.loc["hv", "median"] > s.loc["hg", "median"])},
        {"claim": "|Hv*| has a heavier right tail (95% quantile)",
         "ours": f"q95 |Hg| {s.loc['hg', 'q95']:.3g}, |Hv*| {s.loc['hv', 'q95']:.3g}",
         "supported": bool(s.loc["hv", "q95"] > s.loc["hg", "q95"])},
        {"claim": "|Hv*| - |Hg| has its mode around 5 (paper's units unknown)",
         "ours": f"mode {s.loc['diff', 'mode']:.3g}, median {s.loc['diff', 'median']:.3g}",
         "supported": bool(3.0 <= s.loc["diff", "mode"] <= 7.0)},
        {"claim": "|Hg| is not a tight lower bound (|Hv*| - |Hg| > 10% of |Hv*| for most examples)",
         "ours": f"{(df['diff'] > 0.1 * df['hv']).mean():.1%} of examples",
         "supported": bool((df["diff"] > 0.1 * df["hv"]).mean() > 0.5)},
    ]
    return pd.DataFrame(rows)


def direction_frame(model: nn.Module, x: torch.Tensor, *, iters: int = 30, seed: int = 0):
    """Tidy frame of inputs and their top-curvature directions (Lanczos, predicted vs runner-up).

    Columns ``example``, ``kind`` (``"x"`` the image, ``"v"`` the unit direction v*), ``pixel``
    (flattened index), ``value``; plus ``norm`` (the estimate) on the ``"v"`` rows.
    """
    import pandas as pd

    with torch.no_grad(), guards.frozen_batch_stats(model):
        t = model(x).argmax(1)
    r = operator_norm(model, x, t, "runner_up", method="lanczos", iters=iters, seed=seed)
    frames = []
    d = x[0].numel()
    for b in range(len(x)):
        frames.append(pd.DataFrame({"example": b, "kind": "x", "pixel": range(d), "value": x[b].flatten().tolist()}))
        frames.append(pd.DataFrame({"example": b, "kind": "v", "pixel": range(d), "value": r.v[b].flatten().tolist(),
                                    "norm": float(r.norm[b])}))
    return pd.concat(frames, ignore_index=True)
