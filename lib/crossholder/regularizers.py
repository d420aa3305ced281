"""Cross-Lipschitz and Cross-Hölder regularized losses (the paper's eq. 5).

For a batch ``x`` ``(B, *S)`` with labels ``y`` ``(B,)`` and margins ``f^(j) = f_y - f_j``:

    loss = CE(f(x), y)
           + λ1 · mean_b Σ_{j in J(b)} ( ||∇_x f^(j)(x_b)||_q + λ2 · ||H_{f^(j)}(x_b) v_bj||_q )

* ``λ2 = 0`` is **Cross-Lipschitz** in the paper's form (eq. 5 with λ2 = 0).
  :func:`hein_cross_lipschitz` is Hein & Andriushchenko's original form,
  ``(1 / K²) Σ_{l,m} ||∇f_l - ∇f_m||²_2`` averaged over the batch; the paper does not say
  which one it ran, so both exist.
* ``λ2 > 0`` is **Cross-Hölder**. The Hessian term is differentiated with ``v_bj`` held fixed at
  the inner maximizer (Danskin's theorem), so its gradient is that of ``||H v||_q`` at fixed ``v``.
* ``J(b)`` is every class but ``y_b`` (``classes="all"``, the paper) or only the runner-up class,
  the largest logit other than ``y_b`` (``classes="runner_up"``, which decides the bound of
  Corollary 1); ``J = K - 1`` or ``1`` classes per example.

We implement eq. (5), not the weighting Algorithm 1 prints (λ2 on the gradient term and λ1·λ2 on the
Hessian term): the two disagree, and eq. (5) is the objective the paper states and analyses.

Inner loop (finding ``v``), ``inner``:

* ``"ascent"``: the paper's Algorithm 1, ``v <- normalize_p(v + o ∇_v ||H v||_q)``, ``T`` steps
  (two Hessian-vector products each).
* ``"power"``: power iteration for ``p = q = 2``, one product a step.
* ``"gradient"``: no search, ``v = ĝ = ∇f^(j) / ||∇f^(j)||_2``, the unit input gradient of the
  margin (held fixed, like ``v*``): the penalty is |Hg| (``H ĝ``), the curvature along the gradient
  that CURE estimates by a finite difference, here with the same exact Hessian-vector product as
  Cross-Hölder. This is the ``cross_holder_hg`` ablation of the paper's appendix C.1 argument
  (``p = q = 2``, ``inner_iters = 0``: one product per margin, the training product).
* ``"lanczos"``: ``inner_iters`` products build a Krylov space from ``v0``; its top Ritz vector
  is ``v`` (``p = q = 2``). Warm-started from kept directions it reaches the norm in fewer
  products than power iteration (measured in a real MNIST run at epoch 3: median 0.97 of a
  50-product estimate with 4 products, power iteration 0.92).

Faithful mode (Algorithm 1 as written) passes ``v0=None`` (fresh ``v ~ N(0, I)`` every step),
``inner="ascent"``, ``inner_iters=10``, ``step=0.1``, ``classes="all"``. Fast mode (ours) passes the
direction kept from the example's previous visit as ``v0`` with a few power steps; the product
the training step computes anyway, ``H v``, normalized, is returned as ``v_next``: the next power
iteration step, to be kept for the next epoch (:class:`DirectionStore`).

``backward_step=True`` (fast mode, ours) takes one more power step for free. ``H`` is symmetric, so
the gradient of ``||H v||_2`` with respect to ``v`` is ``H (H v) / ||H v||``: the reverse pass that
trains the network through ``||H v||`` computes it anyway, up to the positive factor λ1·λ2/B, if
``v`` is a leaf that requires a gradient (the only extra work is the first layer's transposed
product). After ``loss.backward()``, :meth:`RegularizedLoss.next_directions` returns it normalized:
``H² v`` instead of ``H v``, two power steps per visit for the price of the training product.

All gradient computations reuse one forward pass on the batch replicated ``J`` times (slot-major:
rows ``s·B .. s·B + B - 1`` hold slot ``s``), whose first ``B`` rows also give the cross-entropy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .explicit import cast_passes, explicit_backward, explicit_forward, explicit_hvp, explicit_layers
from .hessian import dual, normalize, resolve_pairs, second_grad
from .hessian import flat_norm as _norm
from . import guards
from .errors import not_allowed

__all__ = ["RegularizedLoss", "regularized_loss", "hein_cross_lipschitz", "cure_loss", "other_classes", "DirectionStore",
           "compile_available", "power_dtype_of", "warm_norm", "CLASSES", "INNER", "INNER_OR_GRADIENT", "POWER_DTYPES"]

CLASSES = ("all", "runner_up")
INNER = ("ascent", "power", "lanczos")
#: ``inner`` values :func:`regularized_loss` accepts: the searches for v* and ``"gradient"`` (v = ĝ, no search).
INNER_OR_GRADIENT = INNER + ("gradient",)


@dataclass
class RegularizedLoss:
    """Output of :func:`regularized_loss`.

    Attributes:
        loss: scalar, differentiable: CE + λ1 (grad_term + λ2 hess_term).
        ce: scalar (detached), the mean cross-entropy.
        grad_term: scalar (detached), ``mean_b Σ_j ||∇f^(j)||_q``.
        hess_term: scalar (detached), ``mean_b Σ_j ||H v||_q`` (0 when λ2 = 0).
        logits: ``(B, K)`` detached clean logits.
        j: ``(B, J)`` the classes regularized for each example.
        grad_norms: ``(B, J)`` detached ``||∇f^(j)||_q``; hess_norms ``(B, J)`` detached ``||H v||_q``
            (``None`` when λ2 = 0).
        v_next: ``(B, J, *S)`` unit directions ``H v / ||H v||`` to keep for the next visit (``None``
            when λ2 = 0).
        hvps: Hessian-vector products per margin (inner loop + the training product; with
            ``backward_step`` the backward pass adds one more, not counted here).
        v_leaf: ``(J*B, *S)`` slot-major leaf tensor whose ``.grad`` the backward pass fills
            (``backward_step=True`` only, else ``None``); read it through :meth:`next_directions`.
    """

    loss: torch.Tensor
    ce: torch.Tensor
    grad_term: torch.Tensor
    hess_term: torch.Tensor
    logits: torch.Tensor
    j: torch.Tensor
    grad_norms: torch.Tensor
    hess_norms: torch.Tensor | None
    v_next: torch.Tensor | None
    hvps: int
    v_leaf: torch.Tensor | None = None

    def next_directions(self) -> torch.Tensor | None:
        """``(B, J, *S)`` unit directions to keep for the next visit (``None`` when λ2 = 0).

        Without ``backward_step``: :attr:`v_next` (``H v`` normalized). With it: the power step the
        backward pass took, ``H (H v)`` normalized per (example, class); call ``loss.backward()``
        first. Where that gradient is zero or not finite (``H v = 0``), ``v_next`` is kept.
        """
        if self.v_leaf is None or self.v_next is None:
            return self.v_next
        g = self.v_leaf.grad
        if g is None:
            raise RuntimeError("backward_step=True: call loss.backward() before next_directions() (the power "
                               "step is the gradient the backward pass leaves on v)")
        B, J = self.v_next.shape[:2]
        g = g.detach().to(self.v_next.dtype)                            # (J*B, *S), slot-major
        n = _norm(g)
        ok = ((n > 0) & torch.isfinite(n)).view(J, B).t()               # (B, J)
        unit = normalize(g, 2.0).view((J, B) + tuple(self.v_next.shape[2:])).transpose(0, 1)
        return torch.where(ok.view((B, J) + (1,) * (unit.dim() - 2)), unit, self.v_next)


def other_classes(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(B, K-1)``: for each example the classes ``!= y`` in increasing order (slot ``s`` ↔ class ``s + (s >= y)``)."""
    s = torch.arange(num_classes - 1, device=y.device)[None, :]
    return s + (s >= y[:, None]).long()


def _runner_up(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(B, 1)``: the largest logit other than ``y`` (the hessian module's ``"runner_up"``)."""
    return resolve_pairs(logits.detach(), y, "runner_up")[1][:, None]


def _check(lam1: float, lam2: float, p: float, q: float, classes: str, inner: str, inner_iters: int, step: float):
    for name, v in (("lam1", lam1), ("lam2", lam2)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise ValueError(f"{name}={v!r} must be a finite number >= 0")
    for name, v in (("p", p), ("q", q)):
        if not (v >= 1):
            raise ValueError(f"{name}={v!r} must be >= 1 (a norm)")
    if classes not in CLASSES:
        raise not_allowed("classes", classes, CLASSES)
    if inner not in INNER_OR_GRADIENT:
        raise not_allowed("inner", inner, INNER_OR_GRADIENT)
    if inner in ("power", "lanczos", "gradient") and (p != 2 or q != 2):
        raise ValueError(f"inner={inner!r} needs p = q = 2; got p={p}, q={q}")
    if inner == "gradient" and inner_iters != 0:
        raise ValueError(f"inner='gradient' takes no inner steps (v is the unit gradient); got inner_iters={inner_iters}")
    if not isinstance(inner_iters, int) or inner_iters < 0:
        raise ValueError(f"inner_iters={inner_iters!r} must be an integer >= 0")
    if not (step > 0 and math.isfinite(step)):
        raise ValueError(f"step={step!r} must be a finite number > 0")


def _check_model_inputs(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """Before any work (:mod:`crossholder.guards`): finite float32/float64 inputs, at least one, int64
    labels; the model's dtype; no final softmax-type layer (the logits are checked after the forward)."""
    guards.check_inputs(x, y)
    guards.check_model_dtype(model)
    guards.refuse_probability_layer(model)


@guards.with_gradients
def regularized_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, lam1: float, lam2: float = 0.0,
                     p: float = 2.0, q: float = 2.0, classes: str = "all", v0: torch.Tensor | None = None,
                     inner: str = "ascent", inner_iters: int = 10, step: float = 0.1,
                     generator: torch.Generator | None = None, compiled: bool = False,
                     power_dtype: str = "float32", backward_step: bool = False) -> RegularizedLoss:
    """Cross-entropy plus the Cross-Lipschitz (``lam2 = 0``) or Cross-Hölder (``lam2 > 0``) term.

    Args:
        model: logits model ``(B, *S) -> (B, K)``, twice differentiable.
        x: ``(B, *S)`` inputs (pixels in [0, 1]); y: int64 ``(B,)`` labels.
        lam1, lam2: eq. (5)'s λ1 and λ2 (``>= 0``).
        p, q: the norms (``q`` for the gradient and ``||H v||``, ``||v||_p = 1``); the paper's L2 setting is 2, 2.
        classes: ``"all"`` (j ≠ y, the paper) or ``"runner_up"``.
        v0: ``(B, J, *S)`` starting directions (fast mode: kept from the previous visit); ``None`` draws
            ``N(0, I)`` from ``generator`` (faithful mode).
        inner, inner_iters, step: the inner loop (module docstring); ``inner_iters=0`` uses ``v0`` as is.
            ``inner="gradient"`` (with ``inner_iters=0``, ``v0=None``) regularizes |Hg| instead of |Hv*|.
        generator: for the fresh directions.
        compiled: run the explicit passes through ``torch.compile`` (inductor fuses the elementwise
            work of the SiLU derivatives, the dominant cost on a CPU; :func:`compile_available`).
            Only for models the explicit passes support, with ``lam2 = 0`` or ``inner="power"``;
            the numbers agree with the eager path to float rounding, not bitwise.
        power_dtype: ``"float32"`` or ``"bfloat16"``: the dtype of the inner loop's power steps
            (``inner="power"``, explicit passes) that only search the direction ``v``. The training
            product ``H v`` (its value, its gradient, the next kept direction) is always computed in
            the input's dtype. ``"bfloat16"`` makes a power step about 2.5x cheaper on a CPU with
            AVX512-BF16; how close its directions get is measured by ``benchmarks/bench_fidelity.py``.
        backward_step: make ``v`` a leaf so that ``loss.backward()`` also computes
            ``∝ H (H v) / ||H v||``, one more power step (module docstring; ``p = q = 2``,
            ``lam1 > 0``, ``lam2 > 0``); read it with :meth:`RegularizedLoss.next_directions`.
            Changes nothing else: the loss, its terms and the parameter gradient are the same.

    Returns:
        :class:`RegularizedLoss`.
    """
    _check(lam1, lam2, p, q, classes, inner, inner_iters, step)
    _check_model_inputs(model, x, y)
    pdt = power_dtype_of(power_dtype)
    if not isinstance(backward_step, bool):
        raise not_allowed("backward_step", backward_step, (True, False))
    if backward_step and not (lam1 > 0 and lam2 > 0 and p == 2 and q == 2):
        raise ValueError(f"backward_step=True needs lam1 > 0, lam2 > 0 and p = q = 2 (the step is the gradient "
                         f"of ||H v||_2 w.r.t. v); got lam1={lam1}, lam2={lam2}, p={p}, q={q}")
    B = x.shape[0]
    with torch.enable_grad():
        if lam1 == 0:
            logits = model(x)
            guards.check_logits(logits)
            ce = F.cross_entropy(logits, y)
            zero = torch.zeros((), dtype=x.dtype, device=x.device)
            K = logits.shape[1]
            jj = other_classes(y, K) if classes == "all" else _runner_up(logits, y)
            return RegularizedLoss(loss=ce, ce=ce.detach(), grad_term=zero, hess_term=zero, logits=logits.detach(),
                                   j=jj, grad_norms=torch.zeros(jj.shape, dtype=x.dtype), hess_norms=None,
                                   v_next=None, hvps=0)
        if lam2 > 0:
            guards.warn_if_zero_curvature(model)
        # batch statistics (guards module): the cross-entropy's forward pass trains them once, as the
        # user's model asks; every curvature term below uses the running statistics
        logits_train = guards.training_logits(model, x)
        with guards.frozen_batch_stats(model):
            return _regularized_loss(model, x, y, lam1=lam1, lam2=lam2, p=p, q=q, classes=classes, v0=v0,
                                     inner=inner, inner_iters=inner_iters, step=step, generator=generator,
                                     compiled=compiled, pdt=pdt, power_dtype=power_dtype,
                                     backward_step=backward_step, logits_train=logits_train)


def _regularized_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, lam1: float, lam2: float, p: float,
                      q: float, classes: str, v0: torch.Tensor | None, inner: str, inner_iters: int, step: float,
                      generator: torch.Generator | None, compiled: bool, pdt, power_dtype: str, backward_step: bool,
                      logits_train: torch.Tensor | None) -> RegularizedLoss:
    """:func:`regularized_loss` for ``lam1 > 0``, inside the batch-statistics guard. ``logits_train``: the
    training-mode logits the cross-entropy uses when the model has batch-norm layers in training mode."""
    B = x.shape[0]
    with torch.enable_grad():
        J = 1 if classes == "runner_up" else _num_classes(model) - 1   # K read off the last nn.Linear
        layers = explicit_layers(model)
        if pdt is not None and (layers is None or inner != "power"):
            raise ValueError(f"power_dtype={power_dtype!r} needs inner='power' (got {inner!r}) and a model the "
                             "explicit passes support (explicit.explicit_layers); use power_dtype='float32'")
        if inner == "gradient" and (v0 is not None or backward_step or pdt is not None or compiled):
            raise ValueError("inner='gradient' takes its direction from the gradient: v0, backward_step, a "
                             "power_dtype other than 'float32' and compiled=True do not apply")
        if compiled:
            if layers is None:
                raise ValueError("compiled=True needs a model the explicit passes support (explicit.explicit_layers)")
            if lam2 > 0 and inner != "power":
                raise ValueError(f"compiled=True supports inner='power' (or lam2 = 0), got inner={inner!r}")
            return _compiled_loss(layers, x, y, lam1=lam1, lam2=lam2, p=p, q=q, classes=classes, J=J, v0=v0,
                                  inner_iters=inner_iters, generator=generator, power_dtype=pdt,
                                  backward_step=backward_step)
        logits, jj, g, hv_graph, hv_of = _margin_passes(model, layers, x, y, classes=classes, J=J,
                                                        low_power=pdt if inner == "power" else None)
        ce = F.cross_entropy(logits if logits_train is None else logits_train, y)
        gn = _norm(g, q)                                              # (J*B,)
        grad_term = gn.view(J, B).sum(0).mean()
        hess_term = torch.zeros((), dtype=x.dtype, device=x.device)
        hn_out = v_next = v_leaf = None
        hvps = 0
        if lam2 > 0:
            hess_term, hn_out, v_next, v_leaf, hvps = _hessian_term(
                hv_graph, hv_of, x, J=J, v0=normalize(g.detach(), 2.0).view((J, B) + tuple(x.shape[1:])).transpose(0, 1)
                if inner == "gradient" else v0, p=p, q=q, inner=inner, inner_iters=inner_iters, step=step,
                generator=generator, backward_step=backward_step)
        loss = ce + lam1 * (grad_term + lam2 * hess_term)
    return RegularizedLoss(loss=loss, ce=ce.detach(), grad_term=grad_term.detach(), hess_term=hess_term.detach(),
                           logits=(logits if logits_train is None else logits_train).detach(), j=jj,
                           grad_norms=gn.detach().view(J, B).t(), hess_norms=hn_out,
                           v_next=v_next, hvps=hvps, v_leaf=v_leaf)


def _margin_passes(model: nn.Module, layers, x: torch.Tensor, y: torch.Tensor, *, classes: str, J: int,
                   low_power) -> tuple:
    """The margins' first-order pass and their Hessian-vector products, on ``J`` copies of the batch
    (slot-major ``(J*B, *S)``): explicit passes (hessian module) when ``layers`` is not ``None``, else
    autograd. Returns ``(logits (B, K), classes j (B, J), gradients g (J*B, *S), hv_graph, hv_of)``:
    ``hv_graph(v)`` keeps the graph (the training product), ``hv_of(v)`` does not (the inner loop; in
    ``low_power`` dtype when given, the explicit passes cast once for all power steps)."""
    B = x.shape[0]
    if layers is not None:
        # explicit second-order passes (hessian module): one forward on B, everything else plain ops
        cache = explicit_forward(layers, x.detach())
        z = cache.logits
    else:
        x_rep = x.detach().repeat((J,) + (1,) * (x.dim() - 1)).requires_grad_(True)
        z = model(x_rep)
    K = z.shape[1]
    logits = z[:B]
    guards.check_logits(logits)
    jj = other_classes(y, K) if classes == "all" else _runner_up(logits, y)    # (B, J)
    j_rep = jj.t().reshape(-1)                                                  # slot-major (J*B,)
    y_rep = y.repeat(J)
    if layers is not None:
        cache_j = cache.repeat(J) if J > 1 else cache
        e = F.one_hot(y_rep, K).to(x.dtype) - F.one_hot(j_rep, K).to(x.dtype)
        g, adj = explicit_backward(cache_j, e)

        def hv_graph(vec: torch.Tensor) -> torch.Tensor:
            return explicit_hvp(cache_j, adj, vec)

        low: list = []   # the cache and adjoints in the low dtype, cast once for all power steps

        def hv_of(vec: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                if low_power is not None:
                    if not low:
                        low.extend(cast_passes(cache_j, adj, low_power))
                    return explicit_hvp(low[0], low[1], vec, dtype=low_power).to(vec.dtype)
                return explicit_hvp(cache_j, adj, vec)
    else:
        m = z.gather(1, y_rep[:, None]).squeeze(1) - z.gather(1, j_rep[:, None]).squeeze(1)
        (g,) = torch.autograd.grad(m.sum(), x_rep, create_graph=True)

        def hv_graph(vec: torch.Tensor) -> torch.Tensor:      # zeros for a model with a zero input Hessian
            return second_grad(g, x_rep, vec, create_graph=True)

        def hv_of(vec: torch.Tensor) -> torch.Tensor:
            return second_grad(g, x_rep, vec, retain_graph=True)
    return logits, jj, g, hv_graph, hv_of


def _start_directions(x: torch.Tensor, J: int, v0: torch.Tensor | None, p: float,
                      generator: torch.Generator | None) -> torch.Tensor:
    """``(J*B, *S)`` slot-major unit directions (``||v||_p = 1``): ``v0`` ``(B, J, *S)`` reordered, or
    ``N(0, I)`` drawn on the CPU from ``generator``.

    Raises:
        ValueError: ``v0`` of another shape.
    """
    B = x.shape[0]
    rep_shape = (J * B,) + tuple(x.shape[1:])
    if v0 is None:
        v = torch.randn(rep_shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
    else:
        if v0.shape != (B, J) + tuple(x.shape[1:]):
            raise ValueError(f"v0 has shape {tuple(v0.shape)}, expected {(B, J) + tuple(x.shape[1:])}")
        v = v0.detach().to(device=x.device, dtype=x.dtype).transpose(0, 1).reshape(rep_shape)
    return normalize(v, p)


def _hessian_term(hv_graph, hv_of, x: torch.Tensor, *, J: int, v0: torch.Tensor | None, p: float, q: float,
                  inner: str, inner_iters: int, step: float, generator: torch.Generator | None,
                  backward_step: bool) -> tuple:
    """The inner loop from ``v0`` (or fresh ``N(0, I)`` directions), then the training product.

    Returns ``(hess_term (), ||H v|| (B, J), next kept directions (B, J, *S), v_leaf or None, products)``.
    """
    B = x.shape[0]
    v = _start_directions(x, J, v0, p, generator)
    v_leaf = None
    if backward_step:
        v_leaf = v = v.detach().requires_grad_(True)
    hvps = 0
    if inner == "lanczos" and inner_iters > 0:
        from .hessian import lanczos

        class _Op:  # the interface hessian.lanczos expects
            count, j = 0, None

            def __call__(self, vec: torch.Tensor) -> torch.Tensor:
                self.count += 1
                return hv_of(vec)

        op = _Op()
        with torch.no_grad():
            v = lanczos(op, v, inner_iters, generator).v   # top Ritz vector of the Krylov space from v0
        hvps += op.count
    for _ in range(inner_iters if inner != "lanczos" else 0):
        u = hv_of(v)
        hvps += 1
        if inner == "power":
            v = normalize(u, 2.0)
        else:
            grad_v = hv_of(dual(u, q))
            hvps += 1
            v = normalize(v + step * grad_v, p)
    hv = hv_graph(_through(v, v_leaf))
    hvps += 1
    hn = _norm(hv, q)
    hess_term = hn.view(J, B).sum(0).mean()
    nxt = normalize(hv.detach(), 2.0) if (p == 2 and q == 2) else v.detach()
    v_next = nxt.view((J, B) + tuple(x.shape[1:])).transpose(0, 1)
    return hess_term, hn.detach().view(J, B).t(), v_next, v_leaf, hvps


@guards.with_gradients
def warm_norm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, v0: torch.Tensor, power_steps: int, *,
              power_dtype: str = "float32") -> torch.Tensor:
    """``(B,)`` fast mode's ``||H v||`` for the runner-up class: ``power_steps`` power steps from ``v0``
    ``(B, *S)`` (in ``power_dtype``), then the float32 training product, through the training code path.

    What the next training step on these examples would regularize with (the fidelity probe of
    ``training`` and ``benchmarks/bench_fidelity.py``).
    """
    out = regularized_loss(model, x, y, lam1=1.0, lam2=1.0, classes="runner_up", v0=v0[:, None], inner="power",
                           inner_iters=power_steps, power_dtype=power_dtype)
    return out.hess_norms[:, 0].detach()


def _through(v: torch.Tensor, leaf: torch.Tensor | None) -> torch.Tensor:
    """``v`` as a value, with the gradient routed to ``leaf`` (``backward_step``); ``v.detach()`` without one.

    ``v`` is the inner loop's result from ``leaf`` (no graph); ``leaf - leaf.detach()`` is exactly zero,
    so the value is ``v`` bit for bit and the backward pass's gradient at ``v`` lands on ``leaf``.
    """
    if leaf is None:
        return v.detach()
    if v is leaf:
        return leaf
    return v.detach() + (leaf - leaf.detach())


def _explicit_core(layers: list[nn.Module], x: torch.Tensor, y: torch.Tensor, jj: torch.Tensor | None, J: int,
                   v: torch.Tensor | None, lam1: float, lam2: float, q: float, power_iters: int,
                   power_dtype: torch.dtype | None = None):
    """The explicit-pass loss for ``inner="power"`` (or ``lam2 = 0``): what ``torch.compile`` traces.

    ``jj`` ``(B, J)`` the classes, or ``None`` for the runner-up class (``J = 1``, found here from the
    logits: the largest logit other than ``y``); ``v`` ``(J*B, *S)`` unit starting directions
    (slot-major) or ``None`` (no Hessian term); if ``v`` requires a gradient (``backward_step``), the
    backward pass leaves ``∝ H (H v) / ||H v||`` on it, whatever the power steps did. Returns
    ``(loss, ce, logits, jj, grad_norms (J*B,), hess_norms (J*B,) or None, H v or None)``. ``power_dtype``: the power steps' dtype (``None``: x's).
    """
    B = x.shape[0]
    cache = explicit_forward(layers, x)
    logits = cache.logits
    K = logits.shape[1]
    ce = F.cross_entropy(logits, y)
    if jj is None:
        jj = logits.detach().scatter(1, y[:, None], float("-inf")).argmax(1, keepdim=True)
    j_rep = jj.t().reshape(-1)
    y_rep = y.repeat(J)
    cache_j = cache.repeat(J) if J > 1 else cache
    e = F.one_hot(y_rep, K).to(x.dtype) - F.one_hot(j_rep, K).to(x.dtype)
    g, adj = explicit_backward(cache_j, e, fold=True)
    gn = _norm(g, q)
    loss_reg = gn.view(J, B).sum(0).mean()
    hn = hv = None
    if v is not None:
        leaf = v if v.requires_grad else None        # backward_step: the gradient w.r.t. v is wanted
        with torch.no_grad():
            if power_iters and power_dtype is not None:   # cast once for all power steps
                cache_p, adj_p = cast_passes(cache_j, adj, power_dtype)
            else:
                cache_p, adj_p = cache_j, adj
            for _ in range(power_iters):
                v = normalize(explicit_hvp(cache_p, adj_p, v, fold=True, dtype=power_dtype).to(x.dtype), 2.0)
        hv = explicit_hvp(cache_j, adj, _through(v, leaf), fold=True)
        hn = _norm(hv, q)
        loss_reg = loss_reg + lam2 * hn.view(J, B).sum(0).mean()
    loss = ce + lam1 * loss_reg
    return loss, ce, logits, jj, gn, hn, hv


_COMPILED: dict[str, object] = {}


POWER_DTYPES = {"float32": None, "bfloat16": torch.bfloat16}


def power_dtype_of(name: str) -> torch.dtype | None:
    """The torch dtype of ``power_dtype=name`` (``None``: the input's own dtype, i.e. ``"float32"``)."""
    if name not in POWER_DTYPES:
        raise not_allowed("power_dtype", name, POWER_DTYPES)
    return POWER_DTYPES[name]


def compile_available() -> tuple[bool, str]:
    """Whether ``torch.compile`` (inductor, which needs a C++ compiler on a CPU) works here, and why not."""
    if "available" not in _COMPILED:
        try:
            f = torch.compile(lambda a: torch.sigmoid(a) * a + 1.0, fullgraph=True)
            f(torch.ones(4))
            _COMPILED["available"] = (True, "")
        except Exception as err:  # noqa: BLE001 - any failure means: not usable here
            _COMPILED["available"] = (False, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
    return _COMPILED["available"]  # type: ignore[return-value]


def _compiled_loss(layers: list[nn.Module], x: torch.Tensor, y: torch.Tensor, *, lam1: float, lam2: float,
                   p: float, q: float, classes: str, J: int, v0: torch.Tensor | None, inner_iters: int,
                   generator: torch.Generator | None, power_dtype: torch.dtype | None = None,
                   backward_step: bool = False) -> RegularizedLoss:
    ok, why = compile_available()
    if not ok:
        raise RuntimeError(f"compiled=True, but torch.compile does not work here ({why}); use compiled=False")
    if "core" not in _COMPILED:
        # one specialization per setting (J, λs, power steps, power_dtype): a benchmark or a notebook
        # that tries many settings in one process would hit dynamo's default limit of 8 and fail
        import torch._dynamo as dynamo

        dynamo.config.recompile_limit = max(dynamo.config.recompile_limit, 64)
        _COMPILED["core"] = torch.compile(_explicit_core, fullgraph=True, dynamic=False)
    core = _COMPILED["core"]
    B = x.shape[0]
    jj = other_classes(y, _num_classes_layers(layers)) if classes == "all" else None   # None: runner-up, in core
    v = None
    if lam2 > 0:
        v = _start_directions(x, J, v0, p, generator)
        if backward_step:
            v = v.detach().requires_grad_(True)
    loss, ce, logits, jj, gn, hn, hv = core(layers, x.detach(), y, jj, J, v, float(lam1), float(lam2), float(q),
                                            int(inner_iters) if lam2 > 0 else 0, power_dtype)
    guards.check_logits(logits)
    hn_out = v_next = None
    hess_term = torch.zeros((), dtype=x.dtype, device=x.device)
    if hn is not None:
        hess_term = hn.detach().view(J, B).sum(0).mean()
        hn_out = hn.detach().view(J, B).t()
        v_next = normalize(hv.detach(), 2.0).view((J, B) + tuple(x.shape[1:])).transpose(0, 1)
    return RegularizedLoss(loss=loss, ce=ce.detach(), grad_term=gn.detach().view(J, B).sum(0).mean(),
                           hess_term=hess_term, logits=logits.detach(), j=jj, grad_norms=gn.detach().view(J, B).t(),
                           hess_norms=hn_out, v_next=v_next, hvps=(int(inner_iters) + 1) if lam2 > 0 else 0,
                           v_leaf=v if backward_step else None)


def _num_classes_layers(layers: list[nn.Module]) -> int:
    return [m for m in layers if isinstance(m, nn.Linear)][-1].out_features


def _num_classes(model: nn.Module) -> int:
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not last:
        raise ValueError("cannot infer the number of classes: the model has no nn.Linear layer")
    return last[-1].out_features


@guards.with_gradients
def hein_cross_lipschitz(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, lam1: float) -> RegularizedLoss:
    """Hein & Andriushchenko (2017)'s Cross-Lipschitz: ``CE + lam1 · mean_b (1/K²) Σ_{l,m} ||∇f_l - ∇f_m||²_2``.

    Uses ``Σ_{l,m} ||a_l - a_m||² = 2K Σ_l ||a_l||² - 2 ||Σ_l a_l||²`` on the full input Jacobian.
    """
    _check(lam1, 0.0, 2.0, 2.0, "all", "ascent", 0, 0.1)
    _check_model_inputs(model, x, y)
    B = x.shape[0]
    K = _num_classes(model)
    x_rep = x.detach().repeat((K,) + (1,) * (x.dim() - 1)).requires_grad_(True)
    logits_train = guards.training_logits(model, x)   # the cross-entropy trains batch statistics once
    with guards.frozen_batch_stats(model):          # per-example Jacobians (guards module)
        z = model(x_rep)
    logits = z[:B] if logits_train is None else logits_train
    guards.check_logits(logits)
    ce = F.cross_entropy(logits, y)
    cls = torch.arange(K, device=x.device).repeat_interleave(B)
    (jac,) = torch.autograd.grad(z.gather(1, cls[:, None]).sum(), x_rep, create_graph=True)
    a = jac.flatten(1).view(K, B, -1)
    pair = 2 * K * (a * a).sum((0, 2)) - 2 * (a.sum(0) ** 2).sum(1)        # (B,)
    term = (pair / K**2).mean()
    loss = ce + lam1 * term
    zeros = torch.zeros((B, K - 1), dtype=x.dtype)
    return RegularizedLoss(loss=loss, ce=ce.detach(), grad_term=term.detach(), hess_term=torch.zeros(()),
                           logits=logits.detach(), j=other_classes(y, K), grad_norms=zeros, hess_norms=None,
                           v_next=None, hvps=0)


class DirectionStore:
    """Kept inner-loop directions for fast mode: one unit vector per (training example, slot).

    ``vectors`` is ``(N, J, d)`` in ``dtype`` (float16 by default: a warm start needs no more, and it
    halves the memory: 57,000 × 9 × 784 × 2 bytes ≈ 0.8 GB for all classes, 89 MB for the runner-up);
    ``classes`` ``(N, J)`` int64 records the class each vector belongs to (-1: never visited, in which
    case a fresh ``N(0, I)`` direction is drawn). Indexed by the example's position in the training
    set, so shuffling does not matter.
    """

    def __init__(self, n: int, slots: int, shape: tuple[int, ...], *, dtype: torch.dtype = torch.float16) -> None:
        self.shape = tuple(shape)
        d = math.prod(shape)
        self.vectors = torch.zeros(n, slots, d, dtype=dtype)
        self.classes = torch.full((n, slots), -1, dtype=torch.int64)

    def get(self, idx: torch.Tensor, generator: torch.Generator | None = None, dtype=torch.float32) -> torch.Tensor:
        """``(B, J, *shape)`` directions for examples ``idx`` (fresh Gaussian where never visited)."""
        v = self.vectors[idx].to(dtype)
        fresh = self.classes[idx] < 0
        if bool(fresh.any()):
            noise = torch.randn(v.shape, generator=generator, dtype=dtype)
            v = torch.where(fresh[..., None], noise, v)
        return v.view((len(idx), v.shape[1]) + self.shape)

    def put(self, idx: torch.Tensor, v: torch.Tensor, classes: torch.Tensor) -> None:
        """Store unit directions ``v`` ``(B, J, *shape)`` for examples ``idx`` and their classes ``(B, J)``."""
        flat = v.detach().reshape(len(idx), v.shape[1], -1)
        flat = flat / flat.norm(dim=2, keepdim=True).clamp_min(1e-30)
        self.vectors[idx] = flat.to(self.vectors.dtype).cpu()
        self.classes[idx] = classes.to(torch.int64).cpu()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"vectors": self.vectors, "classes": self.classes}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state["vectors"].shape != self.vectors.shape:
            raise ValueError(f"direction store shape {tuple(state['vectors'].shape)} != {tuple(self.vectors.shape)}")
        self.vectors.copy_(state["vectors"])
        self.classes.copy_(state["classes"])


@guards.with_gradients
def cure_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, gamma: float, h: float) -> RegularizedLoss:
    """CURE (Moosavi-Dezfooli, Fawzi, Uesato and Frossard, CVPR 2019, Section 5), L2 form.

    ``loss = CE(f(x), y) + γ · mean_b ||∇_x ℓ(x_b + h z_b) − ∇_x ℓ(x_b)||²_2``, with ``ℓ`` the
    per-example cross-entropy and ``z_b = ∇ℓ(x_b) / ||∇ℓ(x_b)||_2`` held fixed (not differentiated,
    as in CURE's own training). The finite difference is ``h · H_ℓ z`` plus ``O(h²)``: CURE
    regularizes the curvature of the **loss** along one direction, not the margins' operator norm.

    What we changed from CURE's L∞ setting, and why: CURE takes ``z ∝ sign(∇ℓ(x))`` (the L∞
    steepest-ascent direction, normalized to unit L2 norm). Our threat model is L2, whose
    steepest-ascent direction is the gradient itself, so ``z`` is the unit gradient (CURE motivates
    ``z`` as an approximation of the Hessian's leading eigenvector, which its Figure 4 shows to be
    aligned with the gradient). ``h`` is in pixel L2 units (images in [0, 1]); ``x + h z`` is not
    clipped to the box (CURE does not clip). We keep CURE's squared norm; the unofficial PyTorch port
    (F-Salehi/CURE_robustness) uses the unsquared norm. Equation numbers of CURE's paper could not
    be checked here (no copy of its text on this machine): the formula above is its regularizer
    ``L_r`` as stated in Section 5. ``h``'s schedule (linear ramp over the first epochs) lives in
    :mod:`crossholder.training` (``TrainConfig.h_at``).

    Args:
        model: logits model ``(B, *S) -> (B, K)``, twice differentiable.
        x: ``(B, *S)`` inputs (pixels in [0, 1]); y: int64 ``(B,)`` labels.
        gamma: the regularization weight γ (``>= 0``; 0: plain cross-entropy, no extra passes).
        h: the finite-difference step in pixel L2 units (``> 0``).

    Returns:
        :class:`RegularizedLoss` with ``hess_term`` = the mean squared gradient difference (the
        regularizer before γ), ``grad_norms`` ``(B, 1)`` = ``||∇ℓ(x)||_2`` and ``hess_norms``
        ``(B, 1)`` = ``||∇ℓ(x + h z) − ∇ℓ(x)|| / h`` (the finite-difference estimate of
        ``||H_ℓ z||``); ``grad_term`` is 0 (no gradient penalty); ``j`` ``(B, 1)`` holds ``y``;
        ``hvps`` counts the two extra gradient passes.

    Raises:
        ValueError: ``gamma`` not a finite number >= 0, ``h`` not a finite number > 0.
    """
    if not (isinstance(gamma, (int, float)) and math.isfinite(gamma) and gamma >= 0):
        raise ValueError(f"gamma={gamma!r} must be a finite number >= 0")
    if not (isinstance(h, (int, float)) and math.isfinite(h) and h > 0):
        raise ValueError(f"h={h!r} must be a finite number > 0 (pixel L2 units)")
    _check_model_inputs(model, x, y)
    B = x.shape[0]
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    with torch.enable_grad():
        logits_train = guards.training_logits(model, x)   # batch statistics trained once (guards module)
        with guards.frozen_batch_stats(model):
            x0 = x.detach().requires_grad_(True)
            logits = model(x0)
            guards.check_logits(logits)
            ce = F.cross_entropy(logits if logits_train is None else logits_train, y)
            if gamma == 0:
                return RegularizedLoss(loss=ce, ce=ce.detach(), grad_term=zero, hess_term=zero,
                                       logits=logits.detach(), j=y[:, None],
                                       grad_norms=torch.zeros(B, 1, dtype=x.dtype, device=x.device),
                                       hess_norms=None, v_next=None, hvps=0)
            (g0,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), x0, create_graph=True)
            gn = _norm(g0.detach())                                            # (B,)
            z = g0.detach() / gn.clamp_min(torch.finfo(x.dtype).tiny).view((B,) + (1,) * (x.dim() - 1))
            x1 = (x.detach() + h * z).requires_grad_(True)
            (g1,) = torch.autograd.grad(F.cross_entropy(model(x1), y, reduction="sum"), x1, create_graph=True)
            reg = ((g1 - g0).flatten(1) ** 2).sum(1)                           # (B,)
            term = reg.mean()
            loss = ce + gamma * term
    return RegularizedLoss(loss=loss, ce=ce.detach(), grad_term=zero, hess_term=term.detach(),
                           logits=(logits if logits_train is None else logits_train).detach(), j=y[:, None],
                           grad_norms=gn[:, None], hess_norms=(reg.detach().sqrt() / h)[:, None], v_next=None,
                           hvps=2)
