"""Soundness checks of an evaluation: Carlini et al.'s sanity checks, AutoAttack from scratch against our
curves, and the gradient-masking table with the black-box Square attack."""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import attacks as attacks_mod
from . import store
from .attacks import LOSSES, pgd
from .sweeps import EVAL_CODE_VERSION, robust_at, robust_both, to_pixel

__all__ = ["ScaledLogits", "sanity_checks", "per_model_rows", "autoattack_check", "autoattack_agreement",
           "masking_table", "strong_checks"]


# ---------------------------------------------------------------- sanity checks (Carlini et al. 2019)
class ScaledLogits(nn.Module):
    """``factor * model(x)``: the CW margin's PGD is invariant to it, cross-entropy's is not."""

    def __init__(self, model: nn.Module, factor: float) -> None:
        super().__init__()
        self.model, self.factor = model, factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.factor * self.model(x)


def per_model_rows(kind: str, dataset: str, models: dict[str, str], params: dict[str, Any], compute_one, *,
                   seed: int, profile: str, code_version: str = EVAL_CODE_VERSION) -> pd.DataFrame:
    """A table of ``kind`` (``"sanity"``, ``"autoattack"``) over several models, reusing earlier tables.

    ``models`` maps each defense to its model's run id; ``params`` are the table's other parameters
    (as passed to :func:`crossholder.store.cached_table` beside ``models``). A defense's rows
    are copied from an earlier ``results/<dataset>/robustness/<kind>-*.csv`` whose sidecar has the same
    parameters, seed, profile and code version and the same run id for that defense (each model's rows
    are computed independently, with the same seed, so they are what a recomputation gives);
    otherwise ``compute_one(defense)`` computes them. Only the models that changed are attacked again.
    """
    import json

    folder = store.cache_dir(profile) / dataset / "robustness"
    want = json.loads(json.dumps({**params, "code": code_version}))
    frames = []
    for defense, rid in models.items():
        rows = None
        for side in sorted(folder.glob(f"{kind}-*.json")):
            meta = store.read_json(side) or {}
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
    bb = float(attacks_mod.random_noise_attack(model, x, y, ep, queries=steps * restarts, seed=seed).float().mean())
    wb = min(base.values())
    rows.append({"check": "black-box random noise does not beat white-box PGD", "reference": wb, "value": bb,
                 "passed": bb >= wb})
    out = pd.DataFrame(rows)
    out.insert(0, "defense", defense)
    out["eps"] = eps
    out["n"] = n
    return out


# ---------------------------------------------------------------- independent check: AutoAttack
def _check_autoattack_points(x_adv: torch.Tensor, x: torch.Tensor, eps_pixel: float) -> None:
    """AutoAttack's points must lie in the ε-ball (relative slack 1e-4 for its float32 projection) and the
    [0, 1] box (:func:`crossholder.attacks.ball_and_box_problems`).

    Raises:
        crossholder.attacks.AttackVerificationError (a RuntimeError): naming what is wrong.
    """
    problems = attacks_mod.ball_and_box_problems(x_adv, x, eps_pixel, rtol=1e-4)
    if problems:
        raise attacks_mod.AttackVerificationError("AutoAttack returned points outside the ε-ball or the [0, 1] box: "
                                                  + "; ".join(problems))


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
        _check_autoattack_points(x_adv, x, ep)
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
            _check_autoattack_points(x_adv, xs, ep)
            delta = (x_adv - xs).flatten(1).norm(dim=1)
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
    code = EVAL_CODE_VERSION
    ids = {defense: model_id}
    aa_params = {"n": len(x), "eps": list(autoattack_eps), "grid": list(eps_list)}
    agree_params = {"models": ids, **aa_params}
    per_image_csv = store.cached_csv(f"{dataset}/robustness/agreement", agree_params, seed=seed, profile=profile,
                                  code_version=code).with_suffix("")

    def _agree():
        table, per_image = autoattack_agreement(model, x, y, per_example, eps_list, autoattack_eps, dataset=dataset,
                                                defense=defense, seed=seed, progress=True, return_per_example=True)
        # AutoAttack's outcome per attacked image, beside the table (written first: the table marks it done)
        store.atomic_write_text(Path(f"{per_image_csv}-examples.csv"), per_image.to_csv(index=False))
        return table

    agree, _, _ = store.cached_table(f"{dataset}/robustness/agreement", agree_params, _agree,
                                  seed=seed, profile=profile, code_version=code, device=device)
    k = [round(e, 6) for e in eps_list].index(round(masking_eps, 6))
    mask_params = {"n": len(x), "eps": masking_eps, "grid": list(eps_list)}

    def _mask():
        sq = attacks_mod.square(model, x, y, to_pixel(masking_eps, dataset), seed=seed)
        return masking_table(per_example, k, defense=defense, square_fooled=sq.success.cpu().numpy())

    mask, _, _ = store.cached_table(f"{dataset}/robustness/masking", {"models": ids, **mask_params}, _mask,
                                 seed=seed, profile=profile, code_version=code, device=device)
    return agree, mask
