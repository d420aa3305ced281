"""Robustness curves: adversarial accuracy against ε, as tidy DataFrames with confidence intervals.

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
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import data as data_mod
from . import experiments as ex
from . import attacks as attacks_mod
from .attacks import LOSSES, pgd

__all__ = ["to_pixel", "wilson_interval", "sweep", "strong_sweep", "curve_from_sweeps", "robustness_curve",
           "evaluate_model", "per_model_rows", "robust_both", "robust_at", "paired_comparison", "mcnemar_exact", "fooled_at_from_norm",
           "autoattack_agreement", "masking_table", "paired_table", "strong_checks", "registered_checks", "PAIRS", "PAIRED_EPS",
           "ATTACKS", "PAPER_ATTACKS", "STRONG_ATTACKS", "PROTOCOLS", "EVAL_CODE_VERSION", "STRONG"]

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
#: ``"strongest"``: the paper's PGD at step eps / 4 plus APGD-CE, FAB, APGD-T and FAB-T (code version 3).
#: ``"strongest-v2"``: the same without FAB-T (code version 2): kept so that its rows, computed
#: before FAB-T was added, are found and upgraded (:func:`evaluate_model`); it is weaker.
#: ``"paper-v1"``: the paper's PGD alone at Madry et al.'s step 2.5 eps / steps (code version 1):
#: the protocol of the committed curves up to version 1, kept only so that they stay readable
#: (and comparable) until the ``strongest`` curves replace them; it overstates robustness.
#: ``strong``: the schedules of the attacks beyond the paper's PGD (``None``: none run).
PROTOCOLS = {"strongest": {"code": EVAL_CODE_VERSION, "step_fraction": attacks_mod.DEFAULT_STEP_FRACTION,
                           "strong": STRONG},
             "strongest-v2": {"code": "2", "step_fraction": attacks_mod.DEFAULT_STEP_FRACTION,
                              "strong": {"apgd_iter": 100, "apgd_targets": 9, "fab_iter": 100}},   # frozen
             "paper-v1": {"code": "1", "step_fraction": None, "strong": None}}
EPS_UNITS = ("paper", "pixel")


def to_pixel(eps: float | Sequence[float], dataset: str, unit: str = "paper"):
    """Convert ε from ``unit`` (``"paper"``: L2 on standardized inputs; ``"pixel"``) to pixel units."""
    if unit not in EPS_UNITS:
        raise ValueError(f"eps_unit={unit!r}; allowed values: {', '.join(map(repr, EPS_UNITS))}")
    std = data_mod.MEAN_STD[data_mod.check_dataset(dataset)][1] if unit == "paper" else 1.0
    if isinstance(eps, (int, float)):
        return float(eps) * std
    return [float(e) * std for e in eps]


def wilson_interval(k: int | np.ndarray, n: int | np.ndarray, z: float = 1.959964) -> tuple[np.ndarray, np.ndarray]:
    """95% Wilson score interval for a proportion ``k / n``."""
    k = np.asarray(k, dtype=float)
    n = np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(n > 0, k / n, np.nan)
        denom = 1 + z**2 / n
        centre = (p + z**2 / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    return np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)


def _check_eps_list(eps_list: Sequence[float]) -> list[float]:
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
    eps = _check_eps_list(eps_pixel)
    if attack not in SWEEP_ATTACKS:
        raise ValueError(f"attack={attack!r}; allowed values: {', '.join(map(repr, SWEEP_ATTACKS))}")
    if step_fraction is not None and not (math.isfinite(step_fraction) and step_fraction > 0):
        raise ValueError(f"step_fraction={step_fraction!r} must be a finite number > 0 (or None for 2.5 / steps)")
    if attack == "apgd" and float(norm) != 2.0:
        raise ValueError(f"norm={norm!r}: the APGD sweep is L2 only (norm=2)")
    attacks_mod.check_eval_mode(model)       # before the clean forward pass below
    N = len(x)
    model, x = _channels_last(model, x, channels_last)
    min_norm = torch.full((N,), math.inf, dtype=torch.float64)
    fooled_at = torch.full((N,), len(eps), dtype=torch.int64)
    with torch.no_grad():
        wrong = (model(x).argmax(1) != y).cpu()
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
_COLUMNS = {"pgd-ce": "ce", "pgd-cw": "cw", "apgd-ce": "apgd_ce", "apgd-t": "apgd_t", "fab": "fab",
            "fab-t": "fab_t", "strongest": "strongest"}


def robust_at(per_example: pd.DataFrame, k: int, attack: str = "worst-per-example") -> np.ndarray:
    """``(N,)`` bool: which images count as robust at ``eps[k]`` under ``attack`` (a name in :data:`ATTACKS`
    other than ``worst-min``, which is not a per-example quantity).

    Raises:
        ValueError: an unknown ``attack``, or ``per_example`` without its columns.
    """
    if attack == "worst-per-example":
        return robust_at(per_example, k, "pgd-ce") & robust_at(per_example, k, "pgd-cw")
    if attack not in _COLUMNS:
        allowed = [a for a in ATTACKS if a != "worst-min"]
        raise ValueError(f"attack={attack!r}; allowed values: {', '.join(map(repr, allowed))}")
    col = f"fooled_at_{_COLUMNS[attack]}"
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
            if f"fooled_at_{_COLUMNS[attack]}" in per_example:
                counts[attack] = int(robust_at(per_example, k, attack).sum())
        for attack, c in counts.items():
            lo, hi = wilson_interval(c, n)
            rows.append({"defense": defense, "attack": attack, "eps": e, "eps_pixel": ep, "n": n, "robust": c,
                         "accuracy": c / n if n else float("nan"), "ci_low": float(lo), "ci_high": float(hi)})
    return pd.DataFrame(rows)


def robust_both(per_example: pd.DataFrame, k: int) -> np.ndarray:
    """``(N,)`` bool: which images survive both attacks at ``eps[k]`` (the per-example worst case)."""
    return robust_at(per_example, k, "worst-per-example")


def paired_comparison(a: pd.DataFrame, b: pd.DataFrame, k: int, attack: str = "worst-per-example") -> dict[str, Any]:
    """Two models' robustness under ``attack`` on the same images at ``eps[k]``, with an exact McNemar test.

    ``a``, ``b``: per-example results of :func:`robustness_curve` / the ``-examples.csv`` files
    (columns ``index`` and the attack's ``fooled_at_*``), on the same test images. ``attack``:
    ``"worst-per-example"`` (robust iff neither PGD attack fooled it at ``eps[k]``), ``"strongest"``
    or a single attack (:func:`robust_at`). Returns
    the counts ``both``, ``only_a``, ``only_b``, ``neither`` and ``p_value``: the exact two-sided
    McNemar test, ``min(1, 2 P(X <= min(only_a, only_b)))`` with ``X ~ Binomial(only_a + only_b, 1/2)``
    (1.0 when no image is discordant). The test is paired: it uses that both models saw the
    same images, where two Wilson intervals would not.
    """
    if not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"k={k!r} must be an integer >= 0 (an index into the ε grid)")
    if attack != "worst-per-example" and attack not in _COLUMNS:
        allowed = ["worst-per-example", *_COLUMNS]
        raise ValueError(f"attack={attack!r}; allowed values: {', '.join(map(repr, allowed))}")
    cols = {"index"} | ({"fooled_at_ce", "fooled_at_cw"} if attack == "worst-per-example"
                        else {f"fooled_at_{_COLUMNS.get(attack, attack)}"})
    for name, df in (("a", a), ("b", b)):
        missing = cols - set(df.columns)
        if missing:
            raise ValueError(f"{name} lacks the columns {sorted(missing)}; expected a per-example results frame")
    if len(a) != len(b) or not np.array_equal(a["index"].to_numpy(), b["index"].to_numpy()):
        raise ValueError(f"a and b are not on the same images (lengths {len(a)} and {len(b)}, or a different "
                         "'index' order)")
    ra, rb = robust_at(a, k, attack), robust_at(b, k, attack)
    only_a, only_b = int((ra & ~rb).sum()), int((~ra & rb).sum())
    return {"both": int((ra & rb).sum()), "only_a": only_a, "only_b": only_b, "neither": int((~ra & ~rb).sum()),
            "p_value": mcnemar_exact(only_a, only_b)}


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """The exact two-sided McNemar test on the discordant counts: ``min(1, 2 P(X <= min(only_a,
    only_b)))`` with ``X ~ Binomial(only_a + only_b, 1/2)``; 1.0 when nothing is discordant. Exact
    (integer arithmetic) for any count."""
    n = only_a + only_b
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2 ** n if n else 1.0
    return min(1.0, 2 * tail)


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
    eps = _check_eps_list(eps_pixel)
    if not isinstance(fab_targets, int) or isinstance(fab_targets, bool) or fab_targets < 0:
        raise ValueError(f"fab_targets={fab_targets!r} must be an integer >= 0 (0: no FAB-T)")
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
    eps = _check_eps_list(eps_pixel)
    if not isinstance(targets, int) or isinstance(targets, bool) or targets < 1:
        raise ValueError(f"targets={targets!r} must be an integer >= 1")
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
    eps = _check_eps_list(eps_list)
    eps_pixel = to_pixel(eps, dataset, eps_unit)
    for loss in losses:
        if loss not in LOSSES:
            raise ValueError(f"loss={loss!r}; allowed values: {', '.join(map(repr, LOSSES))}")
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


def evaluate_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, dataset: str, defense: str,
                   eps_list: Sequence[float], steps: int, restarts: int, seed: int, profile: str,
                   model_id: str, chunk: int = 100, progress: bool = True,
                   reuse_larger_runs: bool = False, device: str = "cpu",
                   protocol: str = "strongest", until: int | None = None
                   ) -> tuple[pd.DataFrame | None, pd.DataFrame, dict]:
    """Cached, resumable robustness curves of one model: the paper's PGD and, with
    ``protocol="strongest"`` (the default), APGD-CE, FAB, APGD-T, FAB-T and the ``strongest`` curve
    (:func:`strong_sweep`). ``protocol="paper-v1"`` reproduces the legacy code-version-1 curves
    (PGD alone, step ``2.5 eps / steps``) only to keep the committed ones readable (:data:`PROTOCOLS`).

    ``"strongest"`` upgrades rather than recomputes: where the same evaluation under
    ``"strongest-v2"`` (no FAB-T) has rows, finished or in its scratch partial, each of its chunks
    gets only :func:`fab_t_step`, which gives exactly the rows of a version-3 run from scratch (same
    chunk size, device and library versions). The sidecar's costs are this run's own; ``upgraded_from``
    names the version-2 run, the chunks taken from it and its totals (its cost is not included).

    Per-example results land chunk by chunk in ``results/<dataset>/robustness/<defense>-<id>-examples.csv``
    (atomic writes; a killed run resumes at the first missing chunk), then the curve in
    ``...-<id>.csv`` with a JSON sidecar of provenance. Returns ``(curve, per_example, sidecar)``.

    ``reuse_larger_runs=True`` asserts that ``x`` is the first ``len(x)`` examples of the same
    sequence that earlier runs of this model attacked (the test set, as in
    :func:`evaluate_registered` and notebook 04): whole chunks of a finished run with the same
    protocol and seed on more examples are then taken from its per-example file instead of being
    recomputed. Each chunk is attacked independently with the same seed, so the rows are exactly
    what this run would compute; labels are checked, and the donor is named in the sidecar.

    ``device`` (``"cpu"``, ``"cuda"``) is where the attacks run; it is recorded, not part of the
    identity (random starts are drawn on the CPU either way).

    ``until``: attack only the chunks that start below this index, then stop with the run still
    unfinished and return ``(None, rows so far, progress)``; a later call goes on from there. For
    background runs cut into pieces (``--until`` of the CLI).

    Raises:
        ValueError: an unknown ``protocol``, a bad ε list, or ``until`` < 1.
    """
    if until is not None and until < 1:
        raise ValueError(f"until={until!r}; allowed: None or a positive image count")
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol={protocol!r}; allowed values: {', '.join(map(repr, PROTOCOLS))}")
    dev = ex.check_device(device)
    ex.tune_allocator()
    code, step_fraction = PROTOCOLS[protocol]["code"], PROTOCOLS[protocol]["step_fraction"]
    params, rid, (curve_csv, per_csv, side, partial) = _identity(
        dataset=dataset, defense=defense, model_id=model_id, eps_list=eps_list, steps=steps, restarts=restarts,
        n=len(x), seed=seed, profile=profile, protocol=protocol)
    eps = _check_eps_list(eps_list)
    eps_pixel = to_pixel(eps, dataset, "paper")
    if curve_csv.exists() and side.exists() and per_csv.exists():
        return pd.read_csv(curve_csv), pd.read_csv(per_csv), ex.read_json(side)
    done = pd.read_csv(partial) if partial.exists() else pd.DataFrame()
    state = ex.read_json(partial.with_suffix(".json"), {"wall_time_s": 0.0, "grad_evals": 0})
    if not done.empty and state.get("chunk", 100) != chunk:   # rows depend on the chunk (random starts per batch)
        raise ValueError(f"chunk={chunk} but {partial} was computed with chunk={state.get('chunk', 100)}: "
                         "resume with that chunk, or remove the partial to start over")
    state["chunk"] = chunk
    reused: dict[str, Any] = {}
    if reuse_larger_runs and done.empty:
        done, reused = _donor_rows(curve_csv.parent, defense, params, seed, len(x), chunk, y, code)
    strong = PROTOCOLS[protocol]["strong"]
    older, v2_meta = pd.DataFrame(), {}
    if protocol == "strongest":   # the version-2 rows of the same run, finished or in progress, are upgraded
        older, v2_meta = _version2_rows(dataset=dataset, defense=defense, model_id=model_id, eps_list=eps_list,
                                        steps=steps, restarts=restarts, n=len(x), seed=seed, profile=profile)
        if v2_meta and v2_meta["chunk"] != chunk:
            older = pd.DataFrame()                     # other chunks, other rows: computed afresh
    by_attack = dict(state.get("grad_evals_by_attack", {}))
    from tqdm.auto import tqdm

    model = copy.deepcopy(model).to(dev).eval()
    t0 = time.perf_counter()
    grad_evals = int(state["grad_evals"])
    starts = [s for s in range(0, len(x), chunk) if done.empty or s not in set(done["index"])]
    if until is not None and any(s >= until for s in starts):
        starts = [s for s in starts if s < until]
        stop_early = True
    else:
        stop_early = False
    for s in tqdm(starts, desc=f"{dataset}/{defense}", disable=not progress):
        xb, yb = x[s:s + chunk].to(dev), y[s:s + chunk].to(dev)
        old = older[(older["index"] >= s) & (older["index"] < s + len(xb))] if not older.empty else older
        if len(old) == len(xb) and np.array_equal(old["label"].to_numpy(), yb.cpu().numpy()):
            part = old.reset_index(drop=True)                 # version 2's rows: only FAB-T's step is new
            v2 = {key: {"min_norm": part[f"min_norm_{key}"].to_numpy(dtype=float)}
                  for key in ("apgd_ce", "fab", "apgd_t", "strongest")}
            upgraded_rows = fab_t_step(model, xb, yb, eps_pixel, v2, seed=seed, targets=strong["fab_targets"])
            _add_strong(part, upgraded_rows, by_attack)
            grad_evals += sum(int(r.get("grad_evals", 0)) for r in upgraded_rows.values())
            up = state.setdefault("upgraded_from", {"run_id": v2_meta["run_id"], "chunks": []})
            up["chunks"] = sorted(set(up["chunks"]) | {int(s)})
            up.update({"file": v2_meta["file"], "version2_totals": v2_meta["totals"]})
            done = _save_chunk(partial, done, part, state, t0, grad_evals, by_attack)
            continue
        part = pd.DataFrame({"index": np.arange(s, s + len(xb)), "label": yb.cpu().numpy()})
        for loss in LOSSES:
            out = sweep(model, xb, yb, eps_pixel, loss=loss, steps=steps, restarts=restarts, seed=seed,
                        step_fraction=step_fraction)
            part[f"min_norm_{loss}"] = out["min_norm"]
            part[f"fooled_at_{loss}"] = out["fooled_at"]
            grad_evals += int(out["grad_evals"])
            by_attack[f"pgd-{loss}"] = by_attack.get(f"pgd-{loss}", 0) + int(out["grad_evals"])
        if strong:
            prior = np.minimum(part["min_norm_ce"].to_numpy(), part["min_norm_cw"].to_numpy())
            res = strong_sweep(model, xb, yb, eps_pixel, prior_norm=prior, seed=seed,
                               fab_targets=strong.get("fab_targets", 0))
            _add_strong(part, res, by_attack)
            grad_evals += sum(int(r.get("grad_evals", 0)) for r in res.values())
        done = _save_chunk(partial, done, part, state, t0, grad_evals, by_attack)
    per = done.sort_values("index").reset_index(drop=True)
    if stop_early:
        return None, per, {"run_id": rid, "done": len(per), "n": len(x),
                           "wall_time_s": float(state["wall_time_s"]) + time.perf_counter() - t0, "partial": str(partial)}
    curve = curve_from_sweeps(per, eps, eps_pixel, defense=defense)
    wall = float(state["wall_time_s"]) + time.perf_counter() - t0
    extra = {"grad_evals_by_attack": by_attack} if strong else {}
    if "upgraded_from" in state:
        extra["upgraded_from"] = state["upgraded_from"]
    record = ex.provenance(params=params, seed=seed, profile=profile, wall_time_s=wall, run_id=rid, device=str(dev),
                           grad_evals=grad_evals, chunk=chunk, code=code, **extra,
                           **({"reused_from": reused} if reused else {}), naive_grad_evals=len(x) * len(LOSSES) * steps * restarts *
                           sum(1 for e in eps if e > 0),
                           files=[ex.paths.relative_to_root(curve_csv), ex.paths.relative_to_root(per_csv)])
    ex.atomic_write_text(per_csv, per.to_csv(index=False))
    ex.atomic_write_text(curve_csv, curve.to_csv(index=False))
    ex.atomic_write_json(side, record)
    for f in (partial, partial.with_suffix(".json")):
        if f.exists():
            f.unlink()
    return curve, per, record


def _add_strong(part: pd.DataFrame, res: dict[str, Any], by_attack: dict[str, int]) -> None:
    """Write :func:`strong_sweep`'s (or :func:`fab_t_step`'s) results into a chunk's rows; count grad rows."""
    names = {col: attack for attack, col in _COLUMNS.items()}
    for key, r in res.items():
        part[f"min_norm_{key}"] = r["min_norm"]
        part[f"fooled_at_{key}"] = r["fooled_at"]
        if r.get("grad_evals"):
            by_attack[names[key]] = by_attack.get(names[key], 0) + int(r["grad_evals"])


#: order of the per-example columns (a fresh run's): PGD, then the strongest protocol's attacks
_ROW_ORDER = ["index", "label"] + [f"{k}_{c}" for c in ("ce", "cw", "apgd_ce", "fab", "apgd_t", "fab_t", "strongest")
                                   for k in ("min_norm", "fooled_at")]


def _save_chunk(partial: Path, done: pd.DataFrame, part: pd.DataFrame, state: dict, t0: float, grad_evals: int,
                by_attack: dict[str, int]) -> pd.DataFrame:
    """Append a chunk's rows to the scratch partial and its progress to the sidecar (atomic writes)."""
    done = pd.concat([done, part], ignore_index=True)
    done = done[[c for c in _ROW_ORDER if c in done] + [c for c in done if c not in _ROW_ORDER]]
    ex.atomic_write_text(partial, done.to_csv(index=False))
    ex.atomic_write_json(partial.with_suffix(".json"),
                         {**state, "wall_time_s": state["wall_time_s"] + time.perf_counter() - t0,
                          "grad_evals": grad_evals, "grad_evals_by_attack": by_attack})
    return done


def _version2_rows(*, dataset: str, defense: str, model_id: str, eps_list: Sequence[float], steps: int,
                   restarts: int, n: int, seed: int, profile: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The rows of the same evaluation under ``"strongest-v2"`` (finished, else its scratch partial) and
    their provenance (``run_id``, ``file``, ``chunk``, ``totals``: images, wall time and gradient rows of
    that run so far); empty when none."""
    _, rid, (_, per_csv, side, partial) = _identity(
        dataset=dataset, defense=defense, model_id=model_id, eps_list=eps_list, steps=steps, restarts=restarts,
        n=n, seed=seed, profile=profile, protocol="strongest-v2")
    for rows_file, meta_file in ((per_csv, side), (partial, partial.with_suffix(".json"))):
        if rows_file.exists() and meta_file.exists():
            rows, meta = pd.read_csv(rows_file), ex.read_json(meta_file, {})
            return rows, {"run_id": rid, "file": ex.paths.relative_to_root(rows_file),
                          "chunk": int(meta.get("chunk", 100)),
                          "totals": {"images": len(rows), "wall_time_s": float(meta.get("wall_time_s", 0.0)),
                                     "grad_evals": int(meta.get("grad_evals", 0)),
                                     "grad_evals_by_attack": dict(meta.get("grad_evals_by_attack", {}))}}
    return pd.DataFrame(), {}


def _identity(*, dataset: str, defense: str, model_id: str, eps_list: Sequence[float], steps: int, restarts: int,
              n: int, seed: int, profile: str, protocol: str) -> tuple[dict, str, tuple[Path, Path, Path, Path]]:
    """Parameters, run id and files ``(curve csv, per-example csv, sidecar, scratch partial)`` of one evaluation."""
    code, step_fraction = PROTOCOLS[protocol]["code"], PROTOCOLS[protocol]["step_fraction"]
    params = {"dataset": dataset, "defense": defense, "model": model_id, "eps": list(eps_list), "steps": steps,
              "restarts": restarts, "n": n, "eps_unit": "paper", "losses": list(LOSSES)}
    if PROTOCOLS[protocol]["strong"]:     # version 2's identity named its protocol "strongest" too
        params.update({"protocol": "strongest", "step_fraction": step_fraction,
                       "strong": dict(PROTOCOLS[protocol]["strong"])})
    rid = ex.run_id({**params, "seed": seed, "profile": profile, "code": code})
    base = ex.paths.results_dir() / dataset / "robustness" / f"{defense}-{rid}"
    partial = ex.paths.scratch_dir() / f"eval-{dataset}-{defense}-{rid}.csv"
    return params, rid, (Path(f"{base}.csv"), Path(f"{base}-examples.csv"), Path(f"{base}.json"), partial)


def _model_of(dataset: str, defense: str, profile: str, run_id: str | None,
              seed: int = 0) -> tuple[nn.Module, dict[str, Any]]:
    """The model an evaluation of ``profile`` attacks: the finished run ``run_id``, else the one registered
    for the profile and training ``seed`` (:func:`crossholder.training.profile_variant`); and its record."""
    from . import training

    if run_id is None:
        return training.load_registered(dataset, defense, training.profile_variant(profile, seed))
    return training.load_run(dataset, defense, run_id)


def first_rows_so_far(dataset: str, defense: str, n_first: int, *, profile: str = "cpu", seed: int = 0,
                      n_examples: int = 0, run_id: str | None = None) -> pd.DataFrame | None:
    """The per-example rows of the first ``n_first`` test images from the ``strongest`` evaluation that
    :func:`evaluate_registered` with the same arguments runs, finished or still in progress (its scratch
    partial); ``None`` when they are not all there yet. Each chunk is attacked independently, so these
    rows are the finished run's rows: the AutoAttack agreement can check the sweep's strength before
    the long run ends (``python -m crossholder.evaluation ... --checks N``).
    """
    prof = ex.PROFILES[ex.check_profile(profile)]
    n = n_examples or prof["eval_n"] or len(data_mod.tensors(dataset, "test")[1])
    rec = _model_of(dataset, defense, profile, run_id, seed)[1]
    _, _, (_, per_csv, side, partial) = _identity(
        dataset=dataset, defense=defense, model_id=rec["run_id"], eps_list=eps_grid(profile), steps=prof["eval_steps"],
        restarts=prof["eval_restarts"], n=n, seed=seed, profile=profile, protocol="strongest")
    for f in (per_csv, partial):
        if f.exists():
            rows = pd.read_csv(f).sort_values("index").reset_index(drop=True)
            if len(rows) >= n_first and np.array_equal(rows["index"].to_numpy()[:n_first], np.arange(n_first)):
                return rows.iloc[:n_first].reset_index(drop=True)
    return None


def _donor_rows(folder: Path, defense: str, params: dict, seed: int, n: int, chunk: int,
                y: torch.Tensor, code: str = EVAL_CODE_VERSION) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Whole chunks ``[s, s + chunk)`` with ``s + chunk <= n`` from a finished run on more examples."""
    want = {k: v for k, v in ex._canonical(params).items() if k != "n"}
    for side_path in sorted(folder.glob(f"{defense}-*.json")):
        side = ex.read_json(side_path, {})
        p = dict(side.get("params", {}))
        donor_n = p.pop("n", None)
        if (p != want or side.get("seed") != seed or donor_n is None or donor_n < n
                or side.get("chunk", 100) != chunk or side.get("code", "1") != code):
            continue
        per_csv = side_path.with_name(side_path.stem + "-examples.csv")
        if not per_csv.exists():
            continue
        rows = pd.read_csv(per_csv)
        full = (n // chunk) * chunk
        rows = rows[rows["index"] < full].reset_index(drop=True)
        if len(rows) != full or not np.array_equal(rows["label"].to_numpy(), y[:full].numpy()):
            continue
        share = None if side.get("wall_time_s") is None else round(side["wall_time_s"] * full / donor_n, 2)
        return rows, {"run_id": side.get("run_id"), "n": donor_n, "examples": full,
                      "file": ex.paths.relative_to_root(per_csv), "wall_time_s_share": share}
    return pd.DataFrame(), {}


# ---------------------------------------------------------------- the paper's claims
#: (id, text, attack, better, worse-or-None, eps range in paper units, kind). ``kind`` "order": better
#: >= worse at every ε of the range and > at half of them; "level": better's accuracy >= 0.7 at the
#: range's end (the paper's "quite effective"; 0.7 is our threshold for that phrase).
CLAIMS = {
    "mnist": [
        ("M1", "PGD-CE: all three defenses quite effective up to ε = 3 (accuracy ≥ 0.7)", "pgd-ce",
         ("cross_lipschitz", "cross_holder", "adversarial"), None, (3.0, 3.0), "level"),
        ("M2", "PGD-CE: after ε = 3 Cross-Lipschitz decreases faster than Cross-Hölder", "pgd-ce",
         ("cross_holder",), "cross_lipschitz", (3.5, 6.0), "order"),
        ("M3", "PGD-CW: Cross-Hölder above adversarial training after ε = 4", "pgd-cw", ("cross_holder",),
         "adversarial", (4.5, 6.0), "order"),
        ("M4", "PGD-CW: Cross-Hölder above Cross-Lipschitz after ε = 4", "pgd-cw", ("cross_holder",),
         "cross_lipschitz", (4.5, 6.0), "order"),
        ("M5", "Worst case: all three quite effective up to ε = 4 (accuracy ≥ 0.7)", "worst",
         ("cross_lipschitz", "cross_holder", "adversarial"), None, (4.0, 4.0), "level"),
        ("M6", "Worst case: Cross-Hölder above Cross-Lipschitz after ε = 4", "worst", ("cross_holder",),
         "cross_lipschitz", (4.5, 6.0), "order"),
        ("M7", "Worst case: Cross-Hölder above adversarial training after ε = 4", "worst", ("cross_holder",),
         "adversarial", (4.5, 6.0), "order"),
    ],
    "fashion_mnist": [
        ("F1", "Worst case: Cross-Hölder above Cross-Lipschitz", "worst", ("cross_holder",), "cross_lipschitz",
         (0.5, 6.0), "order"),
        ("F2", "Worst case: Cross-Hölder below adversarial training up to ε = 4", "worst", ("adversarial",),
         "cross_holder", (0.5, 4.0), "order"),
    ],
}


def claims_table(curves: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """The paper's claims for ``dataset`` checked on ``curves`` (from :func:`robustness_curve`).

    "worst" claims are checked twice: with the paper's worst case (``worst-min``) and with the
    honest per-example worst case (``worst-per-example``). Where ``curves`` hold ``strongest`` rows,
    every claim is also judged on them (the same statement, with every attack we run). A claim whose ε range is not in the
    curves is reported as "not evaluated". ``beyond_ci`` says whether the verdict also holds with
    the 95% Wilson intervals instead of the point estimates (for "order": the better defense's lower
    bound above the worse one's upper bound at half of the range or more, or, for a claim found
    false, the reverse somewhere in the range; for "level": the lower bound ≥ 0.7, or for a false
    claim the upper bound < 0.7, for every defense named).
    """
    rows = []
    strong = "strongest" in set(curves["attack"])
    for cid, text, attack, better, worse, (lo, hi), kind in CLAIMS[data_mod.check_dataset(dataset)]:
        judged = ("worst-min", "worst-per-example") if attack == "worst" else (attack,)
        for att in judged + (("strongest",) if strong else ()):
            sub = curves[(curves["attack"] == att) & (curves["eps"] >= lo - 1e-9) & (curves["eps"] <= hi + 1e-9)]
            acc = sub.pivot_table(index="eps", columns="defense", values="accuracy")
            needed = list(better) + ([worse] if worse else [])
            if acc.empty or not set(needed) <= set(acc.columns):
                rows.append({"claim": cid, "statement": text, "attack": att, "evidence": "not evaluated",
                             "supported": None, "beyond_ci": None})
                continue
            lo_ci = sub.pivot_table(index="eps", columns="defense", values="ci_low")
            hi_ci = sub.pivot_table(index="eps", columns="defense", values="ci_high")
            if kind == "level":
                e_end = acc.index.max()
                at = acc.loc[e_end]
                ok = bool((at[list(better)] >= 0.7).all())
                clear = bool((lo_ci.loc[e_end, list(better)] >= 0.7).all()) if ok else \
                    bool((hi_ci.loc[e_end, list(better)] < 0.7).any())
                ev = ", ".join(f"{d} {at[d]:.2f}" for d in better) + f" at ε = {e_end:g}"
            else:
                b, w = acc[better[0]], acc[worse]
                ok = bool((b >= w).all() and (b > w).mean() >= 0.5)
                clear = bool((lo_ci[better[0]] > hi_ci[worse]).mean() >= 0.5) if ok else \
                    bool((hi_ci[better[0]] < lo_ci[worse]).any())
                ev = f"mean {better[0]} − {worse} = {(b - w).mean():+.3f} over ε ∈ [{lo:g}, {hi:g}] " \
                     f"(ahead at {(b > w).sum()}/{len(b)} ε)"
            rows.append({"claim": cid, "statement": text, "attack": att, "evidence": ev, "supported": ok,
                         "beyond_ci": clear})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- sanity checks (Carlini et al. 2019)
class ScaledLogits(nn.Module):
    """``factor * model(x)``: the CW margin's PGD is invariant to it, cross-entropy's is not."""

    def __init__(self, model: nn.Module, factor: float) -> None:
        super().__init__()
        self.model, self.factor = model, factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.factor * self.model(x)


def random_noise_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, queries: int,
                        seed: int = 0) -> torch.Tensor:
    """Black-box baseline: ``queries`` uniform samples of the L2 ε-ball (pixels), clamped to the box.

    Returns the bool ``(N,)`` of examples still correctly classified after every query.
    """
    from .attacks import _start_noise

    attacks_mod.check_eval_mode(model)
    with torch.no_grad():
        robust = model(x).argmax(1) == y
        for q in range(queries):
            noise = _start_noise(x.shape, eps, 2.0, seed + 7919, q, x.dtype).to(x.device)
            robust &= model((x + noise).clamp(0, 1)).argmax(1) == y
    return robust


def per_model_rows(kind: str, dataset: str, models: dict[str, str], params: dict[str, Any], compute_one, *,
                   seed: int, profile: str, code_version: str = EVAL_CODE_VERSION) -> pd.DataFrame:
    """A table of ``kind`` (``"sanity"``, ``"autoattack"``) over several models, reusing earlier tables.

    ``models`` maps each defense to its model's run id; ``params`` are the table's other parameters
    (as passed to :func:`crossholder.experiments.cached_table` beside ``models``). A defense's rows
    are copied from an earlier ``results/<dataset>/robustness/<kind>-*.csv`` whose sidecar has the same
    parameters, seed, profile and code version and the same run id for that defense (each model's rows
    are computed independently, with the same seed, so they are what a recomputation gives);
    otherwise ``compute_one(defense)`` computes them. Only the models that changed are attacked again.
    """
    import json

    folder = ex.paths.results_dir() / dataset / "robustness"
    want = json.loads(json.dumps({**params, "code": code_version}))
    frames = []
    for defense, rid in models.items():
        rows = None
        for side in sorted(folder.glob(f"{kind}-*.json")):
            meta = ex.read_json(side) or {}
            other = dict(meta.get("params", {}))
            donor_models = other.pop("models", {})
            if (donor_models.get(defense) != rid or other != want or meta.get("seed") != seed
                    or meta.get("profile") != profile or not side.with_suffix(".csv").exists()):
                continue
            table = pd.read_csv(side.with_suffix(".csv"))
            if "defense" in table and (table["defense"] == defense).any():
                rows = table[table["defense"] == defense]
                break
        frames.append(rows if rows is not None else compute_one(defense))
    return pd.concat(frames, ignore_index=True)


def sanity_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, dataset: str, defense: str,
                  eps: float = 3.0, steps: int = 50, restarts: int = 10, seed: int = 0,
                  step_fraction: float | None = attacks_mod.DEFAULT_STEP_FRACTION) -> pd.DataFrame:
    """Carlini et al. (2019)'s checks of an evaluation, on the examples ``x`` at ``eps`` (paper units).

    Rows: accuracy at a huge ε (should be ~0); more steps and more restarts (should not raise the
    robust accuracy); logits × 10 (PGD-CW unchanged, PGD-CE may weaken); a black-box random-noise
    attack with as many queries as the white-box gradient steps (should not beat it).
    ``step_fraction``: PGD's step as a fraction of ε (``None``: the legacy ``2.5 eps / steps``).
    """
    attacks_mod.check_eval_mode(model)
    ep = to_pixel(eps, dataset)
    n = len(x)

    def acc(m, e, loss, st, rs):
        step = 2.5 * e / st if step_fraction is None else step_fraction * e
        return float((~pgd(m, x, y, e, loss=loss, steps=st, restarts=rs, seed=seed,
                           step_size=step).success).float().mean())

    rows = []
    base = {loss: acc(model, ep, loss, steps, restarts) for loss in LOSSES}
    big = to_pixel(30.0, dataset)
    huge = max(acc(model, big, loss, steps, restarts) for loss in LOSSES)
    rows.append({"check": "accuracy at ε = 30 (paper units) is ~0", "reference": 0.0, "value": huge,
                 "passed": huge <= 0.01})
    for loss in LOSSES:
        more_steps = acc(model, ep, loss, 2 * steps, restarts)
        rows.append({"check": f"PGD-{loss.upper()}: 2x steps does not raise accuracy", "reference": base[loss],
                     "value": more_steps, "passed": more_steps <= base[loss] + 1.0 / n})
        more_rs = acc(model, ep, loss, steps, 2 * restarts)
        rows.append({"check": f"PGD-{loss.upper()}: 2x restarts does not raise accuracy", "reference": base[loss],
                     "value": more_rs, "passed": more_rs <= base[loss] + 1.0 / n})
    scaled = ScaledLogits(model, 10.0).eval()
    cw10 = acc(scaled, ep, "cw", steps, restarts)
    rows.append({"check": "PGD-CW unchanged with logits x 10", "reference": base["cw"], "value": cw10,
                 "passed": abs(cw10 - base["cw"]) <= 1.0 / n})
    ce10 = acc(scaled, ep, "ce", steps, restarts)
    rows.append({"check": "PGD-CE with logits x 10 (may weaken: reported, not checked)", "reference": base["ce"],
                 "value": ce10, "passed": None})
    bb = float(random_noise_attack(model, x, y, ep, queries=steps * restarts, seed=seed).float().mean())
    wb = min(base.values())
    rows.append({"check": "black-box random noise does not beat white-box PGD", "reference": wb, "value": bb,
                 "passed": bb >= wb})
    out = pd.DataFrame(rows)
    out.insert(0, "defense", defense)
    out["eps"] = eps
    out["n"] = n
    return out


def eps_grid(profile: str, eps_max: float = 6.0, eps_step: float = 0.5) -> list[float]:
    """The ε grid in paper units: the smoke profile's short list, else 0, step, ..., eps_max."""
    if ex.check_profile(profile) == "smoke":
        return list(ex.PROFILES["smoke"]["eval_eps"])
    if not (eps_step > 0 and eps_max >= 0):
        raise ValueError(f"eps_step={eps_step!r} must be > 0 and eps_max={eps_max!r} >= 0")
    return [round(k * eps_step, 6) for k in range(int(round(eps_max / eps_step)) + 1)]


def evaluate_registered(dataset: str, defense: str, *, profile: str = "cpu", seed: int = 0, n_examples: int = 0,
                        steps: int = 0, restarts: int = 0, eps_max: float = 6.0, eps_step: float = 0.5,
                        progress: bool = True, device: str = "cpu", run_id: str | None = None,
                        protocol: str = "strongest", until: int | None = None):
    """:func:`evaluate_model` for the model registered as ``"<dataset>/<defense>"``, with the profile's protocol.

    The same cache identity as notebook 04 with the same arguments, so a background run started
    here is picked up by the notebook. ``seed``: the registered model's training seed (the registry of
    :func:`crossholder.training.profile_variant`) and the attacks' seed. ``run_id``: evaluate the trained run
    ``results/<dataset>/models/<defense>-<run_id>.pt`` instead of the registered one (a model about to
    be registered: its curve is then already there when notebook 04 asks for it). ``until``: as in
    :func:`evaluate_model` (stop after the chunks below it; the curve is then ``None``).
    """
    prof = ex.PROFILES[ex.check_profile(profile)]
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol={protocol!r}; allowed values: {', '.join(map(repr, PROTOCOLS))}")
    n = n_examples or prof["eval_n_v1" if protocol == "paper-v1" else "eval_n"]
    x, y = data_mod.tensors(dataset, "test")
    if n is not None:
        x, y = x[:n], y[:n]
    model, rec = _model_of(dataset, defense, profile, run_id, seed)
    return evaluate_model(model, x, y, dataset=dataset, defense=defense, eps_list=eps_grid(profile, eps_max, eps_step),
                          steps=steps or prof["eval_steps"], restarts=restarts or prof["eval_restarts"], seed=seed,
                          profile=profile, model_id=rec["run_id"], progress=progress,
                          reuse_larger_runs=True, device=device, protocol=protocol,
                          until=until)  # x: the test set's first n


def main(argv: list[str] | None = None) -> None:
    """``python -m crossholder.evaluation --dataset mnist --defense none [--profile cpu]``: background runs."""
    import argparse

    ap = argparse.ArgumentParser(description="Robustness curve of one registered model (resumable).")
    ap.add_argument("--dataset", required=True, choices=data_mod.DATASETS)
    ap.add_argument("--defense", required=True, choices=ex.DEFENSES)
    ap.add_argument("--profile", default="cpu", choices=list(ex.PROFILES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    ap.add_argument("--run-id", default=None, help="evaluate this finished training run instead of the registered one")
    ap.add_argument("--protocol", default="strongest", choices=list(PROTOCOLS))
    ap.add_argument("--n", type=int, default=0, help="test images (the first n); 0: the profile's choice")
    ap.add_argument("--until", type=int, default=None, metavar="K",
                    help="stop once the chunks below image K are done (the run stays resumable)")
    ap.add_argument("--checks", type=int, default=0, metavar="N",
                    help="then the AutoAttack agreement and the masking table on the first N images (strongest "
                         "protocol; notebook 04 uses 200 at the cpu profile); 0: skip")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.checks and args.protocol != "strongest":
        raise SystemExit("--checks needs --protocol strongest")
    checked = False
    if args.checks:
        first = first_rows_so_far(args.dataset, args.defense, args.checks, profile=args.profile, seed=args.seed,
                                  n_examples=args.n, run_id=args.run_id)
        if first is not None:  # the sweep's strength is checked before the long run goes on
            print(f"[{args.dataset}/{args.defense}] the first {args.checks} images are done: checks first")
            _checks(args, first)
            checked = True
    curve, per, side = evaluate_registered(args.dataset, args.defense, profile=args.profile, seed=args.seed,
                                           device=args.device, run_id=args.run_id, protocol=args.protocol,
                                           n_examples=args.n, until=args.until)
    if curve is None:
        print(f"[{args.dataset}/{args.defense}] stopped at --until {args.until}: {side['done']} of {side['n']} "
              f"images done ({side['partial']}); run again to go on")
        if args.checks and not checked and len(per) >= args.checks:
            _checks(args, per)
        return
    print(curve.pivot_table(index="eps", columns="attack", values="accuracy").round(3).to_string())
    if args.checks and not checked:
        _checks(args, per)
    reused = side.get("reused_from")
    how = (f"{reused['examples']} examples' rows reused from {reused['file']} (their share of its wall time: "
           f"{reused['wall_time_s_share']} s), " if reused else "")
    print(f"[{args.dataset}/{args.defense}] done: {how}{side['wall_time_s']} s here; {side['files']}")



def registered_checks(dataset: str, defense: str, per_example: pd.DataFrame, n: int, *, profile: str = "cpu",
                      seed: int = 0, run_id: str | None = None, device: str = "cpu") -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`strong_checks` of the model :func:`evaluate_registered` attacks, on the first ``n`` test images
    (``per_example``: its rows for at least those images). For ``--checks`` and ``crossholder.jobs``."""
    model, rec = _model_of(dataset, defense, profile, run_id, seed)
    x, y = data_mod.tensors(dataset, "test")
    return strong_checks(model, x[:n], y[:n], per_example.iloc[:n], dataset=dataset, defense=defense,
                         model_id=rec["run_id"], eps_list=eps_grid(profile), seed=seed, profile=profile, device=device)


def _checks(args, per: pd.DataFrame) -> None:
    """``--checks N`` of :func:`main`: :func:`registered_checks` on the first N test images (cached tables)."""
    agree, mask = registered_checks(args.dataset, args.defense, per, args.checks, profile=args.profile, seed=args.seed,
                                    run_id=args.run_id, device=args.device)
    print(agree.to_string(index=False))
    print(mask.to_string(index=False))


# ---------------------------------------------------------------- independent check: AutoAttack
def autoattack_check(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps_list: Sequence[float], *,
                     dataset: str, defense: str, per_example: pd.DataFrame | None = None,
                     eps_grid_used: Sequence[float] | None = None, seed: int = 0) -> pd.DataFrame:
    """AutoAttack's standard L2 version (APGD-CE, APGD-T, FAB-T, Square; PyPI ``pyautoattack``, seeded).

    On ``x`` ``(n, *S)`` at each ε of ``eps_list`` (paper units). With ``per_example`` (our sweep's
    per-example frame for the same first ``n`` examples, at the grid ``eps_grid_used``) the table also
    holds our per-example worst-case accuracy and the gap (ours − AutoAttack's; clearly positive
    would mean our attack is weak). Needs the optional extra: ``pip install -e .[autoattack]``.
    Runs where ``model`` and ``x`` are (the same device).
    """
    try:
        from pyautoattack import AutoAttack
    except ImportError as err:  # pragma: no cover - optional extra
        raise ImportError("AutoAttack needs the optional extra: pip install -e '.[autoattack]' "
                          "(PyPI package pyautoattack)") from err
    attacks_mod.check_eval_mode(model)
    rows = []
    for e in eps_list:
        ep = to_pixel(e, dataset)
        aa = AutoAttack(model, norm="L2", eps=ep, version="standard", seed=seed, device=str(x.device))
        aa.verbose = False
        x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=len(x))   # (adversarial x, their labels)
        delta = (x_adv - x).flatten(1).norm(dim=1)
        if bool((delta > ep * (1 + 1e-4)).any()) or bool((x_adv < 0).any()) or bool((x_adv > 1).any()):
            raise RuntimeError("AutoAttack returned points outside the ε-ball or the [0, 1] box")
        with torch.no_grad():
            acc = float((model(x_adv).argmax(1) == y).float().mean())
        row = {"defense": defense, "eps": e, "eps_pixel": ep, "n": len(x), "autoattack": acc}
        if per_example is not None and eps_grid_used is not None:
            k = [round(g, 6) for g in eps_grid_used].index(round(e, 6))
            pe = per_example.iloc[: len(x)]
            ours = robust_both(pe, k).mean()
            row.update({"ours_worst_per_example": float(ours), "gap": float(ours) - acc})
        rows.append(row)
    return pd.DataFrame(rows)


def autoattack_agreement(model: nn.Module, x: torch.Tensor, y: torch.Tensor, per_example: pd.DataFrame,
                         eps_grid_used: Sequence[float], eps_list: Sequence[float], *, dataset: str, defense: str,
                         seed: int = 0, attack: str = "strongest", progress: bool = False,
                         return_per_example: bool = False):
    """AutoAttack from scratch against our ``attack`` curve, per example: how many images it fools that we call robust.

    AutoAttack's standard L2 version (APGD-CE, APGD-T, FAB-T, Square; PyPI ``pyautoattack``, seeded) at
    each ε of ``eps_list`` (paper units; each must be on ``eps_grid_used``) on the images of ``x``
    ``(n, *S)`` that ``attack`` (:func:`robust_at`) calls robust at that ε; ``per_example`` holds our
    results for the same first ``n`` images. AutoAttack's outcome on an image does not depend on the
    others, so attacking only those images gives the same count as attacking all ``n`` and is cheaper.
    Every AutoAttack point is checked (ε-ball with 1e-4 relative slack for its float32 projection,
    [0, 1] box, misclassified on a fresh forward pass).

    Returns one row per ε: ``defense, eps, eps_pixel, n, robust`` (ours), ``missed`` (of those,
    fooled by AutoAttack), ``missed_share`` (``missed / n``), ``seconds``. With ``return_per_example``
    also AutoAttack's outcome on each image it attacked: ``(table, frame)``, the frame with columns
    ``index`` (position in ``x``), ``eps`` (paper units), ``fooled`` (bool) and ``norm`` (pixel units,
    the distance of AutoAttack's point; ``nan`` where it did not fool the image).

    Raises:
        ValueError: an ε not on the grid. RuntimeError: an AutoAttack point outside the ball or box.
    """
    try:
        from pyautoattack import AutoAttack
    except ImportError as err:  # pragma: no cover - optional extra
        raise ImportError("AutoAttack needs the optional extra: pip install -e '.[autoattack]'") from err
    attacks_mod.check_eval_mode(model)
    grid = [round(g, 6) for g in eps_grid_used]
    pe = per_example.iloc[: len(x)]
    rows, outcomes = [], []
    from tqdm.auto import tqdm

    for e in tqdm(list(eps_list), desc=f"{defense} AutoAttack", disable=not progress, leave=False):
        if round(e, 6) not in grid:
            raise ValueError(f"eps={e!r} is not on the grid eps_grid_used={list(eps_grid_used)!r}")
        k = grid.index(round(e, 6))
        ep = to_pixel(e, dataset)
        robust = torch.from_numpy(robust_at(pe, k, attack))
        idx = robust.nonzero().squeeze(1)
        t0 = time.perf_counter()
        missed = 0
        if idx.numel():
            xs, ys = x[idx.to(x.device)], y[idx.to(x.device)]
            aa = AutoAttack(model, norm="L2", eps=ep, version="standard", seed=seed, device=str(x.device))
            aa.verbose = False
            with warnings.catch_warnings(), attacks_mod.own_random_state(x.device):
                warnings.simplefilter("ignore")
                x_adv, _ = aa.run_standard_evaluation(xs, ys, batch_size=len(xs))
            delta = (x_adv - xs).flatten(1).norm(dim=1)
            if bool((delta > ep * (1 + 1e-4)).any()) or bool((x_adv < 0).any()) or bool((x_adv > 1).any()):
                raise RuntimeError("AutoAttack returned points outside the ε-ball or the [0, 1] box")
            with torch.no_grad():
                fooled = (model(x_adv).argmax(1) != ys).cpu()
            missed = int(fooled.sum())
            outcomes.append(pd.DataFrame({"index": idx.numpy(), "eps": e, "fooled": fooled.numpy(),
                                          "norm": np.where(fooled.numpy(), delta.detach().cpu().double().numpy(),
                                                           np.nan)}))
        rows.append({"defense": defense, "eps": e, "eps_pixel": ep, "n": len(x), "robust": int(idx.numel()),
                     "missed": missed, "missed_share": missed / len(x),
                     "seconds": round(time.perf_counter() - t0, 1)})
    table = pd.DataFrame(rows)
    if not return_per_example:
        return table
    cols = ["index", "eps", "fooled", "norm"]
    return table, (pd.concat(outcomes, ignore_index=True) if outcomes else pd.DataFrame(columns=cols))


def masking_table(per_example: pd.DataFrame, k: int, *, defense: str = "",
                  square_fooled: np.ndarray | None = None) -> pd.DataFrame:
    """What each attack alone fools at ``eps[k]``, and what it adds over the paper's PGD (either loss).

    ``per_example``: a ``strongest``-protocol per-example frame. One row per attack (``pgd-ce``,
    ``pgd-cw``, ``apgd-ce``, ``fab``, ``fab-t`` (where the frame has it), ``apgd-t``, ``strongest`` and, with ``square_fooled``, the
    black-box ``square``): ``fooled`` (images it fooled, clean errors included), ``beyond_pgd``
    (fooled by it and by neither PGD attack), ``beyond_strongest`` (fooled by it, robust under
    ``strongest``: nonzero only for Square, which is not part of it). APGD-T runs only where the
    others had not settled an image (the frontier), so its ``fooled`` counts only those.
    ``square_fooled`` ``(m,)`` bool: Square's outcome on the first ``m`` images; then every row is
    counted on those ``m`` images, so the rows compare on the same images.
    """
    pe = per_example if square_fooled is None else per_example.iloc[: len(square_fooled)]
    pgd_robust = robust_at(pe, k, "worst-per-example")
    strong_robust = robust_at(pe, k, "strongest")
    fooled_by = {a: ~robust_at(pe, k, a) for a in ("pgd-ce", "pgd-cw", "apgd-ce", "fab", "fab-t", "apgd-t", "strongest")
                 if a != "fab-t" or "fooled_at_fab_t" in pe}
    if square_fooled is not None:
        fooled_by["square"] = np.asarray(square_fooled, dtype=bool)
    rows = [{"defense": defense, "attack": a, "eps_index": k, "n": len(pe), "fooled": int(f.sum()),
             "beyond_pgd": int((f & pgd_robust).sum()), "beyond_strongest": int((f & strong_robust).sum())}
            for a, f in fooled_by.items()]
    return pd.DataFrame(rows)


#: The paired comparisons of the README's verdicts: (better, worse) defenses, at ε in paper units.
PAIRS = (("cross_holder", "cross_lipschitz"), ("cross_holder", "adversarial"))
PAIRED_EPS = (4.0, 5.0, 6.0)


def paired_table(per_examples: dict[str, pd.DataFrame], eps_grid_used: Sequence[float], *, dataset: str,
                 attacks: Sequence[str] = ("worst-per-example", "strongest"), pairs=PAIRS,
                 eps_points: Sequence[float] = PAIRED_EPS) -> pd.DataFrame:
    """Exact McNemar tests (:func:`paired_comparison`) of defense pairs on the same images, per attack and ε.

    ``per_examples`` maps each defense to its per-example frame (same images, same grid
    ``eps_grid_used``, paper units). Rows: ``dataset, a, b, attack, eps, n, a_robust, b_robust,
    only_a, only_b, p_value``; pairs or attacks whose frames are missing are skipped.
    """
    grid = [round(g, 6) for g in eps_grid_used]
    rows = []
    for a, b in pairs:
        if a not in per_examples or b not in per_examples:
            continue
        for attack in attacks:
            for e in eps_points:
                if round(e, 6) not in grid:
                    raise ValueError(f"eps={e!r} is not on the grid {list(eps_grid_used)!r}")
                k = grid.index(round(e, 6))
                try:
                    c = paired_comparison(per_examples[a], per_examples[b], k, attack)
                except ValueError:
                    if attack == "strongest":
                        continue              # a legacy (paper-v1) frame has no strongest columns
                    raise
                rows.append({"dataset": dataset, "a": a, "b": b, "attack": attack, "eps": e,
                             "n": len(per_examples[a]), "a_robust": c["both"] + c["only_a"],
                             "b_robust": c["both"] + c["only_b"], "only_a": c["only_a"], "only_b": c["only_b"],
                             "p_value": c["p_value"]})
    return pd.DataFrame(rows)


def strong_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, per_example: pd.DataFrame, *, dataset: str,
                  defense: str, model_id: str, eps_list: Sequence[float], seed: int, profile: str,
                  autoattack_eps: Sequence[float] = (2.0, 3.0, 4.0, 5.0, 6.0), masking_eps: float = 5.0,
                  device: str = "cpu") -> tuple[pd.DataFrame, pd.DataFrame]:
    """The AutoAttack agreement (:func:`autoattack_agreement`) and the masking table with Square
    (:func:`masking_table`) of one model on ``x`` (its first ``n`` test images), cached as one-model
    tables ``results/<dataset>/robustness/{agreement,masking}-<id>.csv`` with the parameters notebook
    04 uses, so the notebook reuses them (:func:`per_model_rows`); AutoAttack's outcome on each image
    it attacked goes to ``agreement-<id>-examples.csv`` beside the table. For background runs
    (``python -m crossholder.evaluation ... --checks``).
    """
    code = PROTOCOLS["strongest"]["code"]
    ids = {defense: model_id}
    aa_params = {"n": len(x), "eps": list(autoattack_eps), "grid": list(eps_list)}
    agree_params = {"models": ids, **aa_params}
    per_image_csv = ex.cached_csv(f"{dataset}/robustness/agreement", agree_params, seed=seed, profile=profile,
                                  code_version=code).with_suffix("")

    def _agree():
        table, per_image = autoattack_agreement(model, x, y, per_example, eps_list, autoattack_eps, dataset=dataset,
                                                defense=defense, seed=seed, progress=True, return_per_example=True)
        # AutoAttack's outcome per attacked image, beside the table (written first: the table marks it done)
        ex.atomic_write_text(Path(f"{per_image_csv}-examples.csv"), per_image.to_csv(index=False))
        return table

    agree, _, _ = ex.cached_table(f"{dataset}/robustness/agreement", agree_params, _agree,
                                  seed=seed, profile=profile, code_version=code, device=device)
    k = [round(e, 6) for e in eps_list].index(round(masking_eps, 6))
    mask_params = {"n": len(x), "eps": masking_eps, "grid": list(eps_list)}

    def _mask():
        sq = attacks_mod.square(model, x, y, to_pixel(masking_eps, dataset), seed=seed)
        return masking_table(per_example, k, defense=defense, square_fooled=sq.success.cpu().numpy())

    mask, _, _ = ex.cached_table(f"{dataset}/robustness/masking", {"models": ids, **mask_params}, _mask,
                                 seed=seed, profile=profile, code_version=code, device=device)
    return agree, mask


if __name__ == "__main__":
    main()
