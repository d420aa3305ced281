"""Theorem 2's radii of a registered model on the test set, beside the attacks' witnesses (cached, resumable).

One row per test image in ``results/<dataset>/bounds/<defense>-<run id>.csv`` (the model's run id):

* ``index``, ``label``, ``pred`` (the predicted class ``t``), ``correct``;
* ``radius_global`` (a certificate), ``radius_ball`` and ``radius_point`` (estimates), pixel L2:
  :func:`crossholder.bounds.theorem2_radius` with each ``curvature``; each bounds the perturbations
  that change the *prediction* ``t``, so on a misclassified image it says nothing about the label;
* ``witness_norm``: the smallest verified witness any attack of the ``strongest`` protocol found
  (``min_norm_strongest`` of the model's evaluation, :func:`crossholder.evaluation.first_rows_so_far`;
  0 for a misclassified image, ``inf`` where no attack succeeded up to the largest ε);
* ``hessian_norm``: ``‖H_{f^(j)}(x)‖`` of the runner-up ``j`` (Lanczos), ``K_global``: the global bound of
  the same pair, and ``R_ball``: the maximizing R of the ball radius.

A sidecar ``.json`` holds the global bound (its largest entry and the ``(K, K)`` matrix), the
layers' spectral norms, the settings, the violation count and provenance. On a correctly
classified image every witness changes the prediction, so ``radius_global > witness_norm`` there
is a bug (:func:`evaluate_bounds` raises); the estimates may exceed it, and are counted.

Command line: ``python -m crossholder.bounds_tables --dataset mnist --defense cross_holder [--n 1000]``
(``--until K`` stops after the chunks below image K; run again to go on).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from . import bounds
from . import data as data_mod
from . import experiments as ex
from . import paths, store
from .errors import not_allowed

__all__ = ["BOUNDS_CODE_VERSION", "SETTINGS", "RADII", "bounds_path", "evaluate_bounds", "load", "summary_table",
           "accuracy_curves", "paired_radii", "main"]

#: Version of this table's computation (part of the sidecar; a change recomputes).
BOUNDS_CODE_VERSION = "1"
#: The settings of the three radii (:func:`crossholder.bounds.theorem2_radius`).
SETTINGS: dict[str, Any] = {"lanczos_iters": 20, "grid": [0.25, 0.5, 0.75, 1.0], "steps": 20, "restarts": 0,
                            "step": 0.25, "seed": 0}


def bounds_path(dataset: str, defense: str, run_id: str, profile: str = "cpu") -> Path:
    """``<cache>/<dataset>/bounds/<defense>-<run id>.csv`` (:func:`crossholder.store.cache_dir`)."""
    return store.cache_dir(profile) / dataset / "bounds" / f"{defense}-{run_id}.csv"


def _witness(dataset: str, defense: str, n: int, profile: str) -> pd.DataFrame:
    from . import evaluation

    rows = evaluation.first_rows_so_far(dataset, defense, n, profile=profile)
    if rows is None:
        raise FileNotFoundError(f"{dataset}/{defense}: the strongest evaluation of its first {n} test images is not "
                                f"there yet; run `python -m crossholder.evaluation --dataset {dataset} "
                                f"--defense {defense}` first")
    return rows


def _chunk_rows(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, start: int, K_global: torch.Tensor,
                witness: np.ndarray) -> pd.DataFrame:
    glob = bounds.theorem2_radius(model, x, curvature="global", K_global=K_global)
    point = bounds.theorem2_radius(model, x, curvature="point", lanczos_iters=SETTINGS["lanczos_iters"])
    ball = bounds.theorem2_radius(model, x, curvature="ball", **SETTINGS)
    t = point.pred
    marg = point.margins.clone()
    marg[torch.arange(len(t)), t] = torch.inf
    runner = marg.argmin(1)                                 # the runner-up: smallest margin
    idx = torch.arange(len(t))
    # the certificate's float64 forward can pick another class than the float32 model only at a near-tie,
    # where 0 is the honest radius
    glob_radius = torch.where(glob.pred == t, glob.radius, torch.zeros_like(glob.radius))
    return pd.DataFrame({
        "index": np.arange(start, start + len(x)), "label": y.numpy(), "pred": t.numpy(),
        "correct": (t == y).numpy(),
        "radius_global": glob_radius.numpy(), "radius_ball": ball.radius.numpy(), "radius_point": point.radius.numpy(),
        "witness_norm": witness,
        "hessian_norm": point.K[idx, runner].numpy(), "K_global": K_global.double()[t, runner].numpy(),
        "R_ball": ball.R.numpy()})


def evaluate_bounds(dataset: str, defense: str, *, n: int = 1000, chunk: int = 100, profile: str = "cpu",
                    until: int | None = None, progress: bool = True) -> tuple[pd.DataFrame | None, dict[str, Any]]:
    """The bounds table of the model registered as ``"<dataset>/<defense>"`` on the first ``n`` test
    images (module docstring). Cached: a finished table is read back; an unfinished one resumes at its
    first missing chunk (the partial rows are kept in the scratch folder, atomically).

    Returns ``(table, sidecar)``; with ``until`` the table is ``None`` until every chunk is done.

    Raises:
        AssertionError: a certified radius above a verified witness on a correctly classified image (a bug).
        FileNotFoundError: the model's ``strongest`` evaluation of these images is missing.
        ValueError: bad ``n``, ``chunk`` or ``until``.
    """
    from tqdm.auto import tqdm

    from . import training

    for name, v in (("n", n), ("chunk", chunk)):
        if int(v) != v or v < 1:
            raise not_allowed(name, v, "an integer >= 1")
    if until is not None and (int(until) != until or until < 1):
        raise not_allowed("until", until, "None or an integer >= 1")
    ex.check_profile(profile)
    model, rec = training.load_registered(dataset, defense, training.profile_variant(profile, 0))
    model.eval()
    csv = bounds_path(dataset, defense, rec["run_id"], profile)
    side_path = csv.with_suffix(".json")
    params = {"dataset": dataset, "defense": defense, "model": rec["run_id"], "n": n, "chunk": chunk,
              "settings": SETTINGS, "code": BOUNDS_CODE_VERSION}
    if csv.exists() and side_path.exists():
        side = store.read_json(side_path)
        if store.plain(side.get("params", {})) == store.plain(params):
            return pd.read_csv(csv), side
        raise ValueError(f"{paths.relative_to_root(csv)} holds another computation ({side.get('params')}); "
                         f"delete it (and its .json) to recompute with {params}")
    x, y = data_mod.tensors(dataset, "test")
    x, y = x[:n], y[:n]
    wit = _witness(dataset, defense, n, profile)
    if not np.array_equal(wit["label"].to_numpy(), y.numpy()):
        raise ValueError(f"{dataset}/{defense}: the evaluation's labels are not the first {n} test labels")
    witness = wit["min_norm_strongest"].to_numpy(dtype=float)
    t0 = time.perf_counter()
    K_global, details = bounds.curvature_bounds(model, tuple(x.shape[1:]), return_details=True)
    k_time = time.perf_counter() - t0
    partial = paths.scratch_dir() / f"bounds-{dataset}-{defense}-{rec['run_id']}.csv"
    state_path = partial.with_suffix(".json")
    done = pd.read_csv(partial) if partial.exists() else pd.DataFrame()
    state = store.read_json(state_path, {}) or {}
    if len(done) and store.plain(state.get("params", {})) != store.plain(params):
        done, state = pd.DataFrame(), {}                       # another computation's rows: start over
    wall = float(state.get("wall_time_s", 0.0))
    starts = [s for s in range(0, n, chunk) if s >= len(done) and (until is None or s < until)]
    for s in tqdm(starts, desc=f"{dataset}/{defense} bounds", disable=not progress):
        t1 = time.perf_counter()
        part = _chunk_rows(model, x[s:s + chunk], y[s:s + chunk], s, K_global, witness[s:s + chunk])
        done = pd.concat([done, part], ignore_index=True) if len(done) else part
        wall += time.perf_counter() - t1
        store.atomic_write_text(partial, done.to_csv(index=False))
        store.atomic_write_json(state_path, {"params": params, "wall_time_s": round(wall, 1)})
    if len(done) < n:
        return None, {"params": params, "rows_done": len(done), "wall_time_s": round(wall, 1)}
    ok = done["correct"].astype(bool)
    violations = int((ok & (done["radius_global"] > done["witness_norm"])).sum())
    if violations:
        raise AssertionError(f"{dataset}/{defense}: {violations} correctly classified image(s) have a certified "
                             f"radius above a verified witness: a bug in crossholder.bounds")
    counts = {c: int((ok & (done[c] > done["witness_norm"])).sum()) for c in ("radius_ball", "radius_point")}
    side = store.provenance(
        params=params, seed=0, profile=profile, wall_time_s=round(wall + k_time, 1), device="cpu",
        run_id=rec["run_id"], file=paths.relative_to_root(csv), rows=len(done),
        K_global_max=float(K_global.max()), K_global=K_global.tolist(), curvature_bound_time_s=round(k_time, 1),
        spectral_norms=details["spectral_norms"], activations=details["activations"],
        global_violations=violations, estimates_above_witness=counts)
    store.atomic_write_text(csv, done.to_csv(index=False))
    store.atomic_write_json(side_path, side)
    partial.unlink(missing_ok=True)
    state_path.unlink(missing_ok=True)
    return pd.read_csv(csv), side


# ---------------------------------------------------------------- reading the tables (notebook 10)
#: The radius columns and what each is.
RADII = {"radius_global": "certified (global K)", "radius_ball": "estimate (K over the R-ball)",
         "radius_point": "estimate (K at x)"}


def load(dataset: str, defense: str, root: Path | None = None) -> tuple[pd.DataFrame, dict[str, Any]] | None:
    """The finished bounds table of the model registered as ``"<dataset>/<defense>"`` (``results/models.json``
    under ``root``'s results, default :func:`crossholder.paths.results_dir`) and its sidecar; ``None``
    while it is not there yet."""
    res = paths.results_under(root)
    rec = (store.read_json(res / "models.json", {}) or {}).get(f"{dataset}/{defense}")
    if rec is None:
        return None
    csv = res / dataset / "bounds" / f"{defense}-{rec['run_id']}.csv"
    if not csv.exists():
        return None
    return pd.read_csv(csv), store.read_json(csv.with_suffix(".json"), {})


def summary_table(root: Path | None = None, defenses: tuple[str, ...] = ex.DEFENSES) -> pd.DataFrame:
    """One row per registered model: whether its bounds table is there, ``K_global`` (the largest pair),
    the median of each radius and of the witness norm over the correctly classified images (pixels),
    the median of ``K_global / ‖H(x)‖`` (runner-up pair; how loose the global bound is per image),
    and how many correctly classified images have each radius above their witness (``global``: must be 0)."""
    rows = []
    for ds in data_mod.DATASETS:
        for d in defenses:
            got = load(ds, d, root)
            if got is None:
                rows.append({"dataset": ds, "defense": d, "done": False})
                continue
            t, side = got
            ok = t[t["correct"].astype(bool)]
            row = {"dataset": ds, "defense": d, "done": True, "n": len(t), "correct": len(ok),
                   "K_global": side.get("K_global_max")}
            for c in RADII:
                row[f"median_{c}"] = ok[c].median()
            row["median_witness_norm"] = ok["witness_norm"].median()
            row["median_K_global_over_hessian_norm"] = (ok["K_global"] / ok["hessian_norm"]).median()
            for c in RADII:
                row[f"{c}_above_witness"] = int((ok[c] > ok["witness_norm"]).sum())
            rows.append(row)
    return pd.DataFrame(rows)


def accuracy_curves(table: pd.DataFrame, eps_pixel: np.ndarray) -> pd.DataFrame:
    """Accuracy at each ε (pixels) that each radius certifies or estimates (correct and radius > ε) beside
    the ``strongest`` protocol's robust accuracy (correct and no witness of norm ≤ ε), on the table's
    images. Long format: ``eps_pixel``, ``curve`` (a :data:`RADII` key or ``"strongest"``), ``accuracy``."""
    ok = table["correct"].astype(bool).to_numpy()
    rows = []
    for e in np.asarray(eps_pixel, dtype=float):
        for c in RADII:
            rows.append({"eps_pixel": e, "curve": c, "accuracy": float((ok & (table[c].to_numpy() > e)).mean())})
        rows.append({"eps_pixel": e, "curve": "strongest",
                     "accuracy": float((ok & (table["witness_norm"].to_numpy() > e)).mean())})
    return pd.DataFrame(rows)


def paired_radii(a: pd.DataFrame, b: pd.DataFrame, column: str) -> dict[str, Any]:
    """Per image, model ``a``'s radius against ``b``'s (``column``), on the images both classify
    correctly: how many are larger under each, ties, the median ratio ``a / b``, and the exact
    two-sided sign test (:func:`crossholder.stats.mcnemar_exact` on the two counts).

    Raises:
        ValueError: tables of other images, or an unknown column.
    """
    from .stats import mcnemar_exact

    if column not in RADII:
        raise not_allowed("column", column, list(RADII))
    if not np.array_equal(a["index"].to_numpy(), b["index"].to_numpy()) or \
            not np.array_equal(a["label"].to_numpy(), b["label"].to_numpy()):
        raise ValueError("paired_radii needs two tables of the same images (index and label)")
    both = a["correct"].astype(bool).to_numpy() & b["correct"].astype(bool).to_numpy()
    ra, rb = a[column].to_numpy()[both], b[column].to_numpy()[both]
    a_larger, b_larger = int((ra > rb).sum()), int((rb > ra).sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = float(np.median(ra / rb)) if both.any() else float("nan")
    return {"column": column, "n": int(both.sum()), "a_larger": a_larger, "b_larger": b_larger,
            "ties": int(both.sum()) - a_larger - b_larger, "median_ratio": ratio,
            "p_value": mcnemar_exact(a_larger, b_larger)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Theorem 2's radii (global, ball, point) of a registered model "
                                 "against the strongest protocol's witnesses (resumable)")
    ap.add_argument("--dataset", required=True, choices=data_mod.DATASETS)
    ap.add_argument("--defense", required=True, choices=ex.ALL_DEFENSES)
    ap.add_argument("--n", type=int, default=1000, help="the first N test images (default 1000)")
    ap.add_argument("--until", type=int, default=None, help="stop after the chunks below test image K")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    table, side = evaluate_bounds(args.dataset, args.defense, n=args.n, until=args.until)
    if table is None:
        print(f"{side['rows_done']} of {args.n} images done ({side['wall_time_s']} s); run again to go on")
        return
    ok = table[table["correct"].astype(bool)]
    print(f"K_global = {side['K_global_max']:.4g}; medians over correctly classified images (pixels): "
          + ", ".join(f"{c} {ok[c].median():.4g}" for c in ("radius_global", "radius_ball", "radius_point",
                                                           "witness_norm")))


if __name__ == "__main__":
    main()
