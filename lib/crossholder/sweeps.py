"""The robustness sweeps over ε (no files): the paper's PGD, the ``strongest`` protocol's attacks, curves.

ε units: the paper never states them; our reading is L2 on standardized inputs (adversarial
training at the paper's MNIST pick ε = 5 keeps 99% clean accuracy only in that unit: notebook 03's
ε-unit test, ``results/mnist/selection/eps_unit-*.csv``), so ``eps_pixel = eps * std`` of the data set (0.3081 for MNIST, 0.3530 for
Fashion-MNIST; one channel, so the conversion is exact). Attacks run on [0, 1] images in pixel
units (:mod:`crossholder.attacks`).

The sweep (:func:`sweep`): ε increases; at each ε only the examples not yet fooled are attacked
(a perturbation found at a smaller ε is a valid witness at every larger ε), so each example's
smallest successful perturbation norm is tracked and the curve is monotone by construction. PGD
is not monotone in ε, so the sweep's robust set at ε is a *subset* of what attacking that ε from
scratch leaves robust: the sweep is at least as strong.

Attacks reported (:func:`curve_from_sweeps`):

* the paper's protocol: ``pgd-ce``, ``pgd-cw`` (50 steps × 10 restarts, step ``eps / 4``: the
  paper gives none, ``results/step-size.csv`` measures it), ``worst-min`` (the paper's worst case:
  the minimum of the two accuracies) and ``worst-per-example`` (robust only if the example
  survives both attacks, never above ``worst-min``);
* beyond the paper (protocol ``"strongest"``, :func:`strong_sweep`; attacks from PyPI
  ``pyautoattack``): ``apgd-ce`` (APGD-CE, the same ascending sweep), ``fab`` (the minimum-norm
  attack FAB: one run, each image's smallest adversarial distance found settles every ε at or
  above it), ``apgd-t`` (APGD-T, 9 targets, run at each image's *frontier*, see below), and
  ``strongest``: an image is robust at ε only if **no** attack found a verified witness of norm
  ``<= ε``. Claims are judged on ``strongest``.

The frontier (APGD-T): after the other attacks, an image's unsettled grid points are the ε below
its smallest witness norm. APGD-T attacks it at the largest of them; a witness of norm ``r``
settles every ε ``>= r`` and the image is attacked again at the largest ε still below ``r``; a
failure ends the image's search (the attack at the larger radius failed, and the smaller ball is
inside the larger). The cost is one or two APGD-T runs per image instead of one per grid point
(measured: ``benchmarks/bench_attacks.py``); its agreement with AutoAttack run from scratch at
every ε is checked by :func:`autoattack_agreement`.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import attacks as attacks_mod
from . import data as data_mod
from . import guards
from .attacks import LOSSES, pgd
from .errors import not_allowed
from .stats import wilson_interval

__all__ = ["Protocol", "PROTOCOLS", "protocol_of", "EVAL_CODE_VERSION", "to_pixel", "check_eps_list", "sweep",
           "strong_sweep", "fab_t_step", "fooled_at_from_norm", "robust_at", "robust_both", "curve_from_sweeps",
           "robustness_curve", "ATTACKS", "PAPER_ATTACKS", "STRONG_ATTACKS", "ATTACK_COLUMNS", "STRONG", "EPS_UNITS",
           "SWEEP_ATTACKS"]

#: Code version of the ``strongest`` protocol's curves. 2: PGD step eps / 4, APGD-CE, FAB, APGD-T.
#: 3: version 2, then FAB-T (9 targets) and APGD-T again where FAB-T lowered an image's frontier
#: (the AutoAttack check of version 2 found images only FAB-T fools). Version 3 extends version 2
#: image by image, so :func:`evaluate_model` upgrades version-2 rows instead of recomputing them.
EVAL_CODE_VERSION = "3"


PAPER_ATTACKS = ("pgd-ce", "pgd-cw", "worst-min", "worst-per-example")


STRONG_ATTACKS = ("apgd-ce", "apgd-t", "fab", "fab-t", "strongest")


ATTACKS = PAPER_ATTACKS + STRONG_ATTACKS


#: The library attacks' schedules (AutoAttack's standard ones): APGD 100 iterations, 1 restart;
#: APGD-T against the 9 most likely other classes (all K - 1 where K < 10); FAB 100 iterations
#: from the clean point; FAB-T 100 iterations towards each of the 9 most likely other classes.
STRONG = {"apgd_iter": 100, "apgd_targets": 9, "fab_iter": 100, "fab_targets": 9}


@dataclass(frozen=True)
class Protocol:
    """An evaluation protocol: which attacks run, and the code version that is part of its curves' identity.

    Attributes:
        name: ``"strongest"``, ``"strongest-v2"`` or ``"paper-v1"`` (:data:`PROTOCOLS`).
        code: the code version (``EVAL_CODE_VERSION`` for ``"strongest"``).
        step_fraction: the paper's PGD step as a fraction of ε (``None``: Madry et al.'s ``2.5 eps / steps``).
        strong: the schedules of the attacks beyond the paper's PGD (:data:`STRONG`); ``None``: none run.
    """

    name: str
    code: str
    step_fraction: float | None
    strong: dict[str, int] | None = field(default=None, hash=False)

    @property
    def fab_targets(self) -> int:
        """FAB-T's targets (0: no FAB-T, code version 2)."""
        return int((self.strong or {}).get("fab_targets", 0))


#: ``"strongest"``: the paper's PGD at step eps / 4 plus APGD-CE, FAB, APGD-T and FAB-T (code version 3).
#: ``"strongest-v2"``: the same without FAB-T (code version 2): kept so that its rows, computed
#: before FAB-T was added, are found and upgraded (``evaluation.evaluate_model``); it is weaker.
#: ``"paper-v1"``: the paper's PGD alone at Madry et al.'s step 2.5 eps / steps (code version 1):
#: the protocol of the committed curves up to version 1, kept only so that they stay readable
#: (and comparable) until the ``strongest`` curves replace them; it overstates robustness.
PROTOCOLS: dict[str, Protocol] = {
    p.name: p for p in (
        Protocol("strongest", EVAL_CODE_VERSION, attacks_mod.DEFAULT_STEP_FRACTION, STRONG),
        Protocol("strongest-v2", "2", attacks_mod.DEFAULT_STEP_FRACTION,
                 {"apgd_iter": 100, "apgd_targets": 9, "fab_iter": 100}),     # frozen
        Protocol("paper-v1", "1", None, None),
    )
}


def protocol_of(protocol: str | Protocol) -> Protocol:
    """The :class:`Protocol` named ``protocol`` (a :class:`Protocol` is returned as it is).

    Raises:
        ValueError: an unknown name (the message lists :data:`PROTOCOLS`).
    """
    if isinstance(protocol, Protocol):
        # a run's identity names its protocol: a modified object would be cached under the named one's id
        if PROTOCOLS.get(protocol.name) != protocol:
            raise ValueError(f"protocol={protocol!r} is not one of the named protocols; allowed: "
                             f"{', '.join(map(repr, PROTOCOLS))} (or their Protocol objects, unchanged)")
        return protocol
    if protocol not in PROTOCOLS:
        raise not_allowed("protocol", protocol, PROTOCOLS)
    return PROTOCOLS[protocol]


EPS_UNITS = ("paper", "pixel")


def to_pixel(eps: float | Sequence[float], dataset: str, unit: str = "paper"):
    """Convert ε from ``unit`` (``"paper"``: L2 on standardized inputs; ``"pixel"``) to pixel units."""
    if unit not in EPS_UNITS:
        raise not_allowed("eps_unit", unit, EPS_UNITS)
    std = data_mod.MEAN_STD[data_mod.check_dataset(dataset)][1] if unit == "paper" else 1.0
    if isinstance(eps, (int, float)):
        return float(eps) * std
    return [float(e) * std for e in eps]


def check_eps_list(eps_list: Sequence[float]) -> list[float]:
    eps = [float(e) for e in eps_list]
    if not eps or any((not math.isfinite(e)) or e < 0 for e in eps):
        raise ValueError(f"eps_list={eps_list!r} must be a non-empty list of finite numbers >= 0")
    if eps != sorted(eps):
        raise ValueError(f"eps_list={eps_list!r} must be increasing (the sweep reuses smaller-ε witnesses)")
    return eps


SWEEP_ATTACKS = ("pgd", "apgd")


def _channels_last(model: nn.Module, x: torch.Tensor, on: bool) -> tuple[nn.Module, torch.Tensor]:
    if on and x.dim() == 4:
        # mkldnn's NHWC convolutions: about 2x the image-steps per second (benchmarks/bench_attacks.py)
        return copy.deepcopy(model).to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    return model, x


def _targets(model: nn.Module, x: torch.Tensor) -> int:
    """APGD-T's number of target classes: :data:`STRONG`'s 9, or K - 1 for a model with fewer classes."""
    with torch.no_grad():
        return min(STRONG["apgd_targets"], model(x[:1]).shape[-1] - 1)


def sweep(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps_pixel: Sequence[float], *, loss: str = "ce",
          norm: float = 2, steps: int = 50, restarts: int = 10, seed: int = 0, attack: str = "pgd",
          step_fraction: float | None = attacks_mod.DEFAULT_STEP_FRACTION,
          channels_last: bool = True) -> dict[str, np.ndarray | int]:
    """One attack over increasing ε (pixel units), attacking at each ε only the examples not yet fooled.

    ``attack="pgd"``: :func:`crossholder.attacks.pgd` (``loss`` ``"ce"``/``"cw"``, ``steps``,
    ``restarts``, step ``step_fraction * eps``; ``None``: Madry et al.'s ``2.5 * eps / steps``, the
    legacy ``paper-v1`` protocol). ``attack="apgd"``: :func:`crossholder.attacks.apgd` (``loss``
    ``"ce"``/``"dlr-t"``; AutoAttack's schedule, :data:`STRONG`; ``steps``/``restarts`` unused).

    Returns ``min_norm`` ``(N,)`` (smallest successful perturbation found; 0 for clean errors, inf if
    never fooled), ``fooled_at`` ``(N,)`` (index of the first ε at which the example was fooled, -1
    if clean-misclassified, ``len(eps)`` if never) and ``grad_evals`` (per-example gradient evaluations).

    Raises:
        ValueError: ``attack`` not in ``SWEEP_ATTACKS``, a bad ε list or a bad attack argument.
    """
    eps = check_eps_list(eps_pixel)
    if attack not in SWEEP_ATTACKS:
        raise not_allowed("attack", attack, SWEEP_ATTACKS)
    if step_fraction is not None and not (math.isfinite(step_fraction) and step_fraction > 0):
        raise ValueError(f"step_fraction={step_fraction!r} must be a finite number > 0 (or None for 2.5 / steps)")
    if attack == "apgd" and float(norm) != 2.0:
        raise ValueError(f"norm={norm!r}: the APGD sweep is L2 only (norm=2)")
    guards.check_inputs(x, y, box=True)      # finite, float32/64, non-empty, in the box (a NaN is never robust)
    N = len(x)
    model, x = _channels_last(model, x, channels_last)
    min_norm = torch.full((N,), math.inf, dtype=torch.float64)
    fooled_at = torch.full((N,), len(eps), dtype=torch.int64)
    wrong = (attacks_mod.check_model(model, x).argmax(1) != y).cpu()   # eval mode, logits: before any attack
    min_norm[wrong] = 0.0
    fooled_at[wrong] = -1
    grad_evals = 0
    for k, e in enumerate(eps):
        active = fooled_at == len(eps)
        if not bool(active.any()) or e == 0:
            continue
        if attack == "pgd":
            step = 2.5 * e / steps if step_fraction is None else step_fraction * e
            r = pgd(model, x, y, e, norm=norm, loss=loss, steps=steps, restarts=restarts, seed=seed, active=active,
                    step_size=step)
        else:
            r = attacks_mod.apgd(model, x, y, e, loss=loss, n_iter=STRONG["apgd_iter"],
                                 targets=_targets(model, x), seed=seed, active=active)
        grad_evals += r.grad_evals
        new = r.success.cpu() & active
        min_norm[new] = r.norm.cpu()[new].double()
        fooled_at[new] = k
    return {"min_norm": min_norm.numpy(), "fooled_at": fooled_at.numpy(), "grad_evals": grad_evals}


def fooled_at_from_norm(min_norm: np.ndarray, eps_pixel: Sequence[float]) -> np.ndarray:
    """``(N,)`` index of the first grid ε (pixel units) at or above each witness norm ``(N,)``.

    -1 for a zero norm (a clean error), ``len(eps_pixel)`` for ``inf`` (no witness) or a norm above
    the grid. A witness counts at ε when its norm is ``<= ε (1 + 1e-5)`` (the verification tolerance).
    """
    norms = np.asarray(min_norm, dtype=float)
    # (1 + 1e-6): the verification compares float32 norms with a float32-rounded threshold
    grid = np.asarray(eps_pixel, dtype=float) * (1 + attacks_mod.VERIFY_RTOL) * (1 + 1e-6)
    k = np.searchsorted(grid, norms, side="left")              # first grid value >= norm
    k = np.where(norms == 0, -1, k)
    return k.astype(np.int64)


#: per-example column suffix of each single attack (``min_norm_<s>``, ``fooled_at_<s>``)
ATTACK_COLUMNS = {"pgd-ce": "ce", "pgd-cw": "cw", "apgd-ce": "apgd_ce", "apgd-t": "apgd_t", "fab": "fab",
            "fab-t": "fab_t", "strongest": "strongest"}


def robust_at(per_example: pd.DataFrame, k: int, attack: str = "worst-per-example") -> np.ndarray:
    """``(N,)`` bool: which images count as robust at ``eps[k]`` under ``attack`` (a name in :data:`ATTACKS`
    other than ``worst-min``, which is not a per-example quantity).

    Raises:
        ValueError: an unknown ``attack``, or ``per_example`` without its columns.
    """
    if attack == "worst-per-example":
        return robust_at(per_example, k, "pgd-ce") & robust_at(per_example, k, "pgd-cw")
    if attack not in ATTACK_COLUMNS:
        allowed = [a for a in ATTACKS if a != "worst-min"]
        raise not_allowed("attack", attack, allowed)
    col = f"fooled_at_{ATTACK_COLUMNS[attack]}"
    if col not in per_example:
        raise ValueError(f"the per-example frame has no column {col!r} (attack {attack!r} was not run)")
    return per_example[col].to_numpy() > k


def curve_from_sweeps(per_example: pd.DataFrame, eps: Sequence[float], eps_pixel: Sequence[float], *,
                      defense: str = "") -> pd.DataFrame:
    """Tidy curve from per-example results (columns ``fooled_at_ce``, ``fooled_at_cw`` and, where the
    ``strongest`` protocol ran, ``fooled_at_apgd_ce``, ``fooled_at_apgd_t``, ``fooled_at_fab``,
    ``fooled_at_fab_t`` (version 3), ``fooled_at_strongest``).

    An example is robust at ``eps[k]`` under an attack iff ``fooled_at > k``. The ``apgd-t`` rows
    count only what APGD-T found at each image's frontier (:func:`strong_sweep`), and the ``fab-t``
    rows only the images FAB-T ran on (those not yet fooled at the smallest positive ε,
    :func:`fab_t_step`): they are not standalone curves. AutoAttack's and Square's witnesses (:func:`autoattack_agreement`,
    :func:`masking_table`) are checks of ``strongest`` and are not folded into it.
    """
    n = len(per_example)
    rows = []
    for k, (e, ep) in enumerate(zip(eps, eps_pixel)):
        robust = {}
        for loss in LOSSES:
            col = f"fooled_at_{loss}"
            if col in per_example:
                robust[f"pgd-{loss}"] = per_example[col].to_numpy() > k
        if len(robust) == 2:
            ce, cw = robust["pgd-ce"], robust["pgd-cw"]
            counts = {"pgd-ce": int(ce.sum()), "pgd-cw": int(cw.sum()), "worst-min": int(min(ce.sum(), cw.sum())),
                      "worst-per-example": int((ce & cw).sum())}
        else:
            counts = {a: int(r.sum()) for a, r in robust.items()}
        for attack in STRONG_ATTACKS:
            if f"fooled_at_{ATTACK_COLUMNS[attack]}" in per_example:
                counts[attack] = int(robust_at(per_example, k, attack).sum())
        for attack, c in counts.items():
            lo, hi = wilson_interval(c, n)
            rows.append({"defense": defense, "attack": attack, "eps": e, "eps_pixel": ep, "n": n, "robust": c,
                         "accuracy": c / n if n else float("nan"), "ci_low": float(lo), "ci_high": float(hi)})
    return pd.DataFrame(rows)


def robust_both(per_example: pd.DataFrame, k: int) -> np.ndarray:
    """``(N,)`` bool: which images survive both attacks at ``eps[k]`` (the per-example worst case)."""
    return robust_at(per_example, k, "worst-per-example")


def strong_sweep(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps_pixel: Sequence[float], *,
                 prior_norm: np.ndarray | None = None, seed: int = 0, channels_last: bool = True,
                 progress: bool = False, fab_targets: int = STRONG["fab_targets"]) -> dict[str, Any]:
    """The attacks beyond the paper's PGD on one batch, over the ε grid ``eps_pixel`` (pixel units).

    1. APGD-CE: the ascending sweep of :func:`sweep` (each ε attacks only what APGD-CE has not fooled).
    2. FAB: one run; its witness norm settles every ε at or above it.
    3. APGD-T at each image's frontier (module docstring): the largest grid ε below the smallest
       witness norm of every attack so far (``prior_norm`` ``(N,)``, e.g. the paper's PGD, pixel
       units; ``inf`` where none), then below each new witness, until APGD-T fails there.
    4. With ``fab_targets >= 1`` (code version 3): FAB-T and APGD-T at the lowered frontiers,
       :func:`fab_t_step`. ``fab_targets=0`` stops after step 3 (code version 2).

    Args:
        model: logits model in eval mode; x ``(N, *S)`` in [0, 1]; y int64 ``(N,)``.
        eps_pixel: increasing radii (pixel units).
        prior_norm: ``(N,)`` smallest verified witness norms found by other attacks (pixel units).
        seed: every attack's seed.
        fab_targets: FAB-T's targets (the most likely other classes; capped at K - 1); 0: no FAB-T.

    Returns:
        ``{"apgd_ce": ..., "fab": ..., "apgd_t": ...}`` (and ``"fab_t"`` with ``fab_targets``), each
        ``{"min_norm": (N,), "fooled_at": (N,), "grad_evals": int}`` (``fooled_at`` from the witness
        norms, :func:`fooled_at_from_norm`), and ``"strongest"``: ``{"min_norm", "fooled_at"}`` over
        these attacks and ``prior_norm``.
    """
    eps = check_eps_list(eps_pixel)
    if not isinstance(fab_targets, int) or isinstance(fab_targets, bool) or fab_targets < 0:
        raise ValueError(f"fab_targets={fab_targets!r} must be an integer >= 0 (0: no FAB-T)")
    guards.check_inputs(x, y, box=True)
    N = len(x)
    prior = np.full(N, math.inf) if prior_norm is None else np.asarray(prior_norm, dtype=float)
    if prior.shape != (N,):
        raise ValueError(f"prior_norm has shape {prior.shape}; expected ({N},)")
    attacks_mod.check_eval_mode(model)
    model, x = _channels_last(model, x, channels_last)
    out: dict[str, Any] = {}
    ce = sweep(model, x, y, eps, attack="apgd", loss="ce", seed=seed, channels_last=False)
    out["apgd_ce"] = {"min_norm": ce["min_norm"], "fooled_at": fooled_at_from_norm(ce["min_norm"], eps),
                      "grad_evals": int(ce["grad_evals"])}
    f = attacks_mod.fab(model, x, y, n_iter=STRONG["fab_iter"], seed=seed)
    fab_norm = f.norm.detach().cpu().double().numpy()
    out["fab"] = {"min_norm": fab_norm, "fooled_at": fooled_at_from_norm(fab_norm, eps), "grad_evals": f.grad_evals}
    best = np.minimum.reduce([prior, ce["min_norm"], fab_norm])
    t_norm, t_evals = _apgd_t_at_frontiers(model, x, y, eps, best.copy(), best > 0, seed)
    t_norm = np.where(best == 0, 0.0, t_norm)
    out["apgd_t"] = {"min_norm": t_norm, "fooled_at": fooled_at_from_norm(t_norm, eps), "grad_evals": t_evals}
    strongest = np.minimum.reduce([prior, ce["min_norm"], fab_norm, t_norm])
    out["strongest"] = {"min_norm": strongest, "fooled_at": fooled_at_from_norm(strongest, eps)}
    if fab_targets:
        out = fab_t_step(model, x, y, eps, out, seed=seed, targets=fab_targets, channels_last=False)
    return out


def _apgd_t_at_frontiers(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: list[float], best: np.ndarray,
                         open_: np.ndarray, seed: int) -> tuple[np.ndarray, int]:
    """APGD-T at the frontier of each ``open_`` image (the largest grid ε (> 0) below ``best``, its
    smallest witness norm so far, pixel units), then below each witness it finds, until it fails
    there. Returns APGD-T's witness norms ``(N,)`` (``inf``: none) and its gradient rows.
    ``best`` and ``open_`` are modified in place."""
    t_norm = np.full(len(x), math.inf)
    grid = np.asarray(eps) * (1 + attacks_mod.VERIFY_RTOL) * (1 + 1e-6)     # as in fooled_at_from_norm
    t_evals = 0
    with torch.no_grad():
        n_classes = model(x[:1]).shape[-1]
    if n_classes < 4:
        warnings.warn(f"APGD-T is not run: its DLR loss needs at least 4 classes, the model has {n_classes}",
                      stacklevel=3)
        return t_norm, 0
    while True:
        # the largest grid ε (> 0) still below each open image's smallest witness norm
        k = np.searchsorted(grid, best, side="left") - 1
        open_ &= (k >= 0) & (np.asarray(eps)[np.clip(k, 0, None)] > 0)
        if not open_.any():
            break
        for kk in sorted(set(k[open_].tolist())):
            act = torch.from_numpy(open_ & (k == kk))
            r = attacks_mod.apgd(model, x, y, eps[kk], loss="dlr-t", n_iter=STRONG["apgd_iter"],
                                 targets=_targets(model, x), seed=seed, active=act.to(x.device))
            t_evals += r.grad_evals
            won = (r.success.cpu() & act).numpy()
            n = r.norm.detach().cpu().double().numpy()
            t_norm[won] = np.minimum(t_norm[won], n[won])
            best[won] = np.minimum(best[won], n[won])
            open_[act.numpy() & ~won] = False               # failed at its frontier: done
    return t_norm, t_evals


def fab_t_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps_pixel: Sequence[float],
               v2: dict[str, Any], *, seed: int = 0, targets: int = STRONG["fab_targets"],
               channels_last: bool = True) -> dict[str, Any]:
    """Code version 3's step after version 2 (:func:`strong_sweep` with ``fab_targets=0``).

    1. FAB-T (:func:`crossholder.attacks.fab` with ``targets``; AutoAttack's targeted FAB, each target
       on every image, the smallest verified witness kept) on the images still robust at some
       positive grid ε under ``v2["strongest"]``; the others are settled at every ε already.
    2. APGD-T at the frontier (as in :func:`strong_sweep`) of each image whose first fooled grid ε
       FAB-T lowered; the frontiers where APGD-T failed before are never attacked again.

    ``v2``: version 2's results on ``x`` (``apgd_ce``, ``fab``, ``apgd_t``, ``strongest``, each with
    ``min_norm`` ``(N,)`` in pixel units; ``grad_evals`` where known). It depends only on those norms,
    so rows of version 2 read back from a file are upgraded to exactly what a version-3 run gives.
    Returns ``v2``'s entries updated (``apgd_t``: the smaller witness of both APGD-T runs, grad rows
    added) plus ``"fab_t"``.

    Raises:
        ValueError: ``targets`` not an integer >= 1 or ``v2`` without its entries.
    """
    eps = check_eps_list(eps_pixel)
    if not isinstance(targets, int) or isinstance(targets, bool) or targets < 1:
        raise ValueError(f"targets={targets!r} must be an integer >= 1")
    guards.check_inputs(x, y, box=True)
    missing = {"apgd_ce", "fab", "apgd_t", "strongest"} - set(v2)
    if missing:
        raise ValueError(f"v2 lacks {sorted(missing)}; expected strong_sweep(..., fab_targets=0)'s results")
    attacks_mod.check_eval_mode(model)
    model, x = _channels_last(model, x, channels_last)
    old = np.asarray(v2["strongest"]["min_norm"], dtype=float)
    old_at = fooled_at_from_norm(old, eps)
    positive = [i for i, e in enumerate(eps) if e > 0]
    with torch.no_grad():
        n_classes = model(x[:1]).shape[-1]
    fab_norm, fab_evals = np.where(old == 0, 0.0, math.inf), 0
    todo = old_at > positive[0] if positive and n_classes > 1 else np.zeros(len(x), bool)
    if todo.any():
        f = attacks_mod.fab(model, x, y, n_iter=STRONG["fab_iter"], seed=seed, targets=min(targets, n_classes - 1),
                            active=torch.from_numpy(todo).to(x.device))
        n = f.norm.detach().cpu().double().numpy()
        fab_norm[todo] = n[todo]
        fab_evals = f.grad_evals
    best = np.minimum(old, fab_norm)
    lowered = fooled_at_from_norm(best, eps) < old_at
    t_norm, t_evals = _apgd_t_at_frontiers(model, x, y, eps, best.copy(), lowered & (best > 0), seed)
    out = {key: {"grad_evals": 0, **v2[key], "fooled_at": fooled_at_from_norm(np.asarray(v2[key]["min_norm"]), eps)}
           for key in ("apgd_ce", "fab", "apgd_t")}
    t_all = np.minimum(np.asarray(v2["apgd_t"]["min_norm"], dtype=float), t_norm)
    out["apgd_t"].update({"min_norm": t_all, "fooled_at": fooled_at_from_norm(t_all, eps),
                          "grad_evals": int(v2["apgd_t"].get("grad_evals", 0)) + t_evals})
    out["fab_t"] = {"min_norm": fab_norm, "fooled_at": fooled_at_from_norm(fab_norm, eps), "grad_evals": fab_evals}
    strongest = np.minimum.reduce([old, fab_norm, t_norm])
    out["strongest"] = {"min_norm": strongest, "fooled_at": fooled_at_from_norm(strongest, eps)}
    return out


def robustness_curve(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps_list: Sequence[float], *,
                     losses: Sequence[str] = ("ce", "cw"), steps: int = 50, restarts: int = 10,
                     eps_unit: str = "paper", dataset: str = "mnist", defense: str = "", seed: int = 0,
                     batch_size: int = 500, return_per_example: bool = False, progress: bool = True,
                     step_fraction: float | None = attacks_mod.DEFAULT_STEP_FRACTION):
    """Adversarial accuracy against ε for each attack, with 95% Wilson intervals.

    Args:
        model: logits model in eval mode; x ``(N, *S)`` in [0, 1]; y int64 ``(N,)``.
        eps_list: increasing radii in ``eps_unit`` (``"paper"`` standardized L2, or ``"pixel"``).
        losses: PGD losses (``"ce"``, ``"cw"``); with both, the worst cases are added.
        steps, restarts: per attack and ε (the paper: 50 and 10).
        dataset: for the unit conversion; defense: a label copied into the ``defense`` column.
        batch_size: examples attacked together.
        step_fraction: PGD's step as a fraction of ε (``None``: Madry et al.'s ``2.5 eps / steps``,
            which the hyperparameter selection keeps).
        return_per_example: also return the per-example frame (``index``, ``label``, and per loss
            ``min_norm_<loss>`` in pixel units and ``fooled_at_<loss>``).

    Returns:
        DataFrame with columns ``defense, attack, eps, eps_pixel, n, robust, accuracy, ci_low, ci_high``
        (and the per-example frame when asked).
    """
    eps = check_eps_list(eps_list)
    eps_pixel = to_pixel(eps, dataset, eps_unit)
    guards.check_inputs(x, y, box=True)
    for loss in losses:
        if loss not in LOSSES:
            raise not_allowed("loss", loss, LOSSES)
    from tqdm.auto import tqdm

    per = pd.DataFrame({"index": np.arange(len(x)), "label": y.numpy()})
    for loss in losses:
        mins, foos = [], []
        for s in tqdm(range(0, len(x), batch_size), desc=f"{defense or 'model'} pgd-{loss}", disable=not progress,
                      leave=False):
            out = sweep(model, x[s:s + batch_size], y[s:s + batch_size], eps_pixel, loss=loss, steps=steps,
                        restarts=restarts, seed=seed, step_fraction=step_fraction)
            mins.append(out["min_norm"])
            foos.append(out["fooled_at"])
        per[f"min_norm_{loss}"] = np.concatenate(mins)
        per[f"fooled_at_{loss}"] = np.concatenate(foos)
    curve = curve_from_sweeps(per, eps, eps_pixel, defense=defense)
    return (curve, per) if return_per_example else curve
