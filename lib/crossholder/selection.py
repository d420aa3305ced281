"""The paper's hyperparameter selection on the 5% validation split (appendix C.2), and the ε-unit test.

Procedure (the paper's): for each defense, a grid of hyperparameters; each grid point is trained
on the training split (95%) and judged on the validation split (5%, 3,000 images):

* admissible if its clean validation accuracy is at least 99% (MNIST) or 88% (Fashion-MNIST);
* the winner is the admissible point with the best sum of adversarial accuracy at ε = 3.0 and 4.0
  (paper units). The paper does not say which attack; we use its worst case (``worst-min``) and
  also report the per-example worst case.

Our grids bracket the paper's picks (:data:`crossholder.experiments.PAPER`). At the ``cpu`` profile a
grid point is trained exactly like a final model (10 epochs), so the winner's run is the final
model; its attack on the validation split is lighter than the final evaluation (:data:`SELECTION`).

Every grid point is scored once and cached as JSON (row + provenance) under
``results/<dataset>/selection/points/`` (:func:`score_point`), so the grid is resumable point by point
and can be spread over background jobs and sessions::

    python -m crossholder.selection --dataset fashion_mnist --defense adversarial --threads 1

The ε-unit test (:func:`eps_unit_test`): adversarial training at ε = 5.0 read as standardized
units (1.54 in pixels on MNIST) against ε = 5.0 read as pixels, 3 epochs each at ``cpu``
(:data:`EPS_UNIT_SETTINGS`); which one meets the 99% criterion tells which reading the paper can
have used.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from . import data as data_mod
from . import experiments as ex
from . import store
from . import sweeps, training

__all__ = ["GRIDS", "ABLATION_GRIDS", "ablation_table", "read_ablation_table", "THRESHOLD", "SELECTION", "SELECTION_TRAIN", "SELECTION_EPS", "SELECTION_CODE_VERSION", "EPS_UNIT_SETTINGS", "grid", "score_point", "missing_points", "write_table",
           "run_grid", "eps_unit_test", "select_points"]

SELECTION_CODE_VERSION = "1"  # bump when a change alters the numbers of cached grid points

THRESHOLD = {"mnist": 0.99, "fashion_mnist": 0.88}
SELECTION_EPS = (3.0, 4.0)
GRIDS: dict[str, dict[str, list[dict[str, float]]]] = {
    "mnist": {
        "adversarial": [{"eps": e} for e in (3.0, 4.0, 5.0, 6.0)],
        "cross_lipschitz": [{"lam1": v} for v in (0.05, 0.1, 0.2, 0.4)],
        "cross_holder": [{"lam1": a, "lam2": b} for a in (0.01, 0.02, 0.05) for b in (0.25, 0.5, 1.0)],
    },
    "fashion_mnist": {
        # 1.0 and 0.5 added below the paper's bracket: ε = 4.0 (1.41 pixels) leaves AT at 82% clean test
        # accuracy after 10 epochs here, far from the 88% criterion, and ε = 1.0 reached 85.9% val
        # after 3 epochs (results/fashion_mnist/selection/points/adversarial-530da0e66e.json)
        "adversarial": [{"eps": e} for e in (0.5, 1.0, 2.0, 3.0, 4.0, 5.0)],
        "cross_lipschitz": [{"lam1": v} for v in (0.05, 0.1, 0.15, 0.3)],
        "cross_holder": [{"lam1": a, "lam2": b} for a in (0.1, 0.2, 0.4) for b in (0.25, 0.5, 1.0)],
    },
}
#: The ablations' grids (issue 31), fixed before any of their runs and before any test-set result,
#: selected by the same rule. Kept apart from :data:`GRIDS`: notebook 03 and ``make selection`` score the
#: paper's three defenses; these run only when named (``jobs grid --defense cross_holder_hg``).
#:
#: * ``cross_holder_hg``: Cross-Hölder's registered λ1 (``experiments.FINAL``), λ2 at 1x, 3x and 9x
#:   its λ2 = 0.5. |Hg| <= |Hv*| always; on the registered MNIST models |Hg| / |Hv*| has median 0.52
#:   (undefended and Cross-Hölder) and 0.19 (Cross-Lipschitz) on 128 validation images, so 3x and 9x
#:   give |Hg| the penalty weight that Cross-Hölder's λ2 puts on |Hv*|.
#: * ``cure``: CURE's γ = 4 and a quarter and a sixteenth of it, with h = 0.5 and 1.5 pixels (our
#:   selection's ε = 3-4 is 0.92-1.23 pixels on MNIST, 1.06-1.41 on Fashion-MNIST): six points.
ABLATION_GRIDS: dict[str, dict[str, list[dict[str, float]]]] = {
    ds: {
        "cross_holder_hg": [{"lam1": ex.FINAL[ds]["cross_holder"]["lam1"], "lam2": b} for b in (0.5, 1.5, 4.5)],
        "cure": [{"gamma": g, "h": h} for h in (0.5, 1.5) for g in (0.25, 1.0, 4.0)],
    }
    for ds in ("mnist", "fashion_mnist")
}
#: Per profile and defense: training options of the grid points beyond the hyperparameters (part of a
#: point's identity when present). At ``cpu`` Cross-Hölder runs compiled (``regularized_loss(compiled=True)``,
#: about 1.4x faster per step here); Cross-Lipschitz stays eager so that the paper's pick is the
#: registered model's run.
SELECTION_TRAIN: dict[str, dict[str, dict[str, Any]]] = {
    "cpu": {"cross_holder": {"compiled": True}},
}
#: Per profile: training epochs of a grid point, validation examples attacked, PGD steps and restarts.
SELECTION: dict[str, dict[str, Any]] = {
    "smoke": {"epochs": 1, "n_attack": 32, "steps": 5, "restarts": 1, "points": 2},
    # 10 epochs = the final runs' protocol, so a grid point's training run *is* the final model of
    # those hyperparameters (same run id). A 3-epoch proxy was tried first and dropped: on
    # Fashion-MNIST it costs about 2 points of clean accuracy (AT at ε = 1.0: 85.9% val after 3
    # epochs), which decides admissibility against an 88% threshold.
    "cpu": {"epochs": 10, "n_attack": 500, "steps": 20, "restarts": 2, "points": None},
    "paper": {"epochs": 10, "n_attack": None, "steps": 50, "restarts": 10, "points": None},
}


#: Settings of the ε-unit test per profile (3 training epochs per unit at ``cpu``: the gap between the
#: two readings is tens of points, see results/mnist/selection/eps_unit-*.csv).
EPS_UNIT_SETTINGS: dict[str, dict[str, Any]] = {
    "smoke": dict(SELECTION["smoke"]),
    "cpu": {"epochs": 3, "n_attack": 500, "steps": 20, "restarts": 2, "points": None},
    "paper": dict(SELECTION["paper"]),
}


def grid(dataset: str, profile: str, defenses: tuple[str, ...] | None = None) -> list[tuple[str, dict[str, float]]]:
    """The ``(defense, hyperparameters)`` points for ``dataset`` (the first two per defense at ``smoke``).

    ``defenses=None``: the paper's three (:data:`GRIDS`); an ablation's grid (:data:`ABLATION_GRIDS`)
    only when it is named."""
    k = SELECTION[ex.check_profile(profile)]["points"]
    grids = {**GRIDS[data_mod.check_dataset(dataset)], **ABLATION_GRIDS[dataset]}
    for d in defenses or ():
        if d not in grids:
            raise ValueError(f"defense={d!r} has no grid; allowed values: {', '.join(map(repr, grids))}")
    names = list(GRIDS[dataset]) if defenses is None else [d for d in grids if d in defenses]
    return [(d, hp) for d in names for hp in grids[d][:k]]


def _point_path(dataset: str, defense: str, hp: dict[str, Any], profile: str, seed: int):
    params = {"dataset": dataset, "defense": defense, "hp": hp, "settings": SELECTION[profile],
              "eps": list(SELECTION_EPS), "seed": seed, "profile": profile, "code": SELECTION_CODE_VERSION}
    train_opts = SELECTION_TRAIN.get(profile, {}).get(defense)
    if train_opts:
        params["train"] = train_opts
    rid = store.run_id(params)
    return store.cache_dir(profile) / dataset / "selection" / "points" / f"{defense}-{rid}.json"


def score_point(dataset: str, defense: str, hp: dict[str, Any], profile: str = "cpu", *, seed: int = 0,
                device: str = "cpu", force: bool = False) -> dict[str, Any]:
    """Train one grid point on the training split and score it on the validation split (cached).

    Returns the table row: the hyperparameters, ``clean_val_acc`` (all 3,000 validation images),
    worst-case adversarial accuracies at ε = 3 and 4 (paper units) on the first ``n_attack``
    validation images, and ``score`` (their sum). The row and its provenance are cached in
    ``results/<dataset>/selection/points/<defense>-<id>.json``.
    """
    import time

    ex.check_profile(profile)
    path = _point_path(dataset, defense, hp, profile, seed)
    cached = store.read_json(path)
    if cached is not None and not force:
        return cached["row"]
    t0 = time.perf_counter()
    row = _score(dataset, defense, hp, profile, seed, device)
    record = {"row": row, "provenance": store.provenance(
        params={"dataset": dataset, "defense": defense, "hp": hp, "settings": SELECTION[profile],
                "train": SELECTION_TRAIN.get(profile, {}).get(defense, {}), "code": SELECTION_CODE_VERSION},
        seed=seed, profile=profile,
        wall_time_s=time.perf_counter() - t0, device=device)}
    store.atomic_write_json(path, record)
    return row


def _score(dataset: str, defense: str, hp: dict[str, Any], profile: str, seed: int,
           device: str = "cpu") -> dict[str, Any]:
    sel = SELECTION[profile]
    opts = SELECTION_TRAIN.get(profile, {}).get(defense, {})
    cfg = training.make_config(dataset, defense, profile=profile, seed=seed, epochs=sel["epochs"], **opts, **hp)
    run = training.train(cfg, register=False, progress=False, device=device)
    dev = ex.check_device(device)
    model = run.model.to(dev).eval()
    xv, yv = data_mod.tensors(dataset, "val")
    xv, yv = xv.to(dev), yv.to(dev)
    clean = training.accuracy(model, xv, yv)
    n = sel["n_attack"] or len(xv)
    # the selection score keeps Madry et al.'s step 2.5 eps / steps (step_fraction=None): the grids were
    # scored with it, and their cached points must stay reproducible (SELECTION_CODE_VERSION 1); it is a
    # criterion for choosing hyperparameters, not a robustness claim
    curve = sweeps.robustness_curve(model, xv[:n], yv[:n], [0.0, *SELECTION_EPS], steps=sel["steps"],
                                        restarts=sel["restarts"], dataset=dataset, defense=defense, seed=seed,
                                        progress=False, step_fraction=None)
    acc = curve.pivot_table(index="eps", columns="attack", values="accuracy")
    row: dict[str, Any] = {"defense": defense, **{k: float(v) for k, v in hp.items()}, "run_id": cfg.run_id,
                           "epochs": sel["epochs"], "clean_val_acc": clean, "n_attacked": n}
    for e in SELECTION_EPS:
        row[f"worst_min_{e:g}"] = float(acc.loc[e, "worst-min"])
        row[f"worst_per_example_{e:g}"] = float(acc.loc[e, "worst-per-example"])
    row["score"] = sum(row[f"worst_min_{e:g}"] for e in SELECTION_EPS)
    row["score_per_example"] = sum(row[f"worst_per_example_{e:g}"] for e in SELECTION_EPS)
    return row


_COLUMNS = ["defense", "eps", "lam1", "lam2", "gamma", "h", "run_id", "epochs", "clean_val_acc", "n_attacked", "worst_min_3",
            "worst_per_example_3", "worst_min_4", "worst_per_example_4", "score", "score_per_example"]


def missing_points(dataset: str, profile: str = "cpu", *, seed: int = 0,
                   defenses: tuple[str, ...] | None = None) -> list[tuple[str, dict[str, float]]]:
    """The grid points not scored yet (no cached JSON)."""
    return [(d, hp) for d, hp in grid(dataset, profile, defenses)
            if not _point_path(dataset, d, hp, profile, seed).exists()]


def run_grid(dataset: str, profile: str = "cpu", *, seed: int = 0, progress: bool = True,
             device: str = "cpu", defenses: tuple[str, ...] | None = None,
             cached_only: bool = False) -> pd.DataFrame:
    """Score every grid point (cached per point); mark admissible points, the winner and the paper's pick.

    ``defenses`` restricts the grid to some defenses (``None``: all of them). ``cached_only=True``
    computes nothing: the table of the points scored so far (winners among those only).
    """
    from tqdm.auto import tqdm

    todo = grid(dataset, profile, defenses)
    if cached_only:
        todo = [pt for pt in todo if pt not in missing_points(dataset, profile, seed=seed, defenses=defenses)]
        if not todo:
            return pd.DataFrame(columns=["defense", "clean_val_acc", "score", "admissible", "winner", "paper_pick"])
    rows = [score_point(dataset, d, hp, profile, seed=seed, device=device)
            for d, hp in tqdm(todo, desc=f"{dataset} grid", disable=not progress)]
    df = pd.DataFrame(rows)
    first = [c for c in _COLUMNS if c in df]
    df = df[first + [c for c in df if c not in first]]      # cached rows come back with sorted keys
    df["admissible"] = df["clean_val_acc"] >= THRESHOLD[dataset]
    df["winner"] = False
    df["paper_pick"] = False
    for defense, g in df.groupby("defense"):
        ok = g[g["admissible"]]
        if len(ok):
            df.loc[ok["score"].idxmax(), "winner"] = True
        pick = ex.PAPER[dataset].get(defense)
        if pick is None:    # an ablation: the paper has no pick
            continue
        match = (g[list(pick)] == pd.Series(pick)).all(axis=1)
        df.loc[g.index[match], "paper_pick"] = True
    return df


def write_table(df: pd.DataFrame, dataset: str, profile: str, *, seed: int = 0,
                variant: str | None = None) -> "Path":  # noqa: F821
    """``<results>/<dataset>/selection/grid-<profile>.csv`` (+ a JSON sidecar with the points still missing;
    each point's provenance is in its own file under ``selection/points/``). ``<results>`` is the folder
    of ``variant`` (:func:`crossholder.store.variant_dirs`); ``None``: the profile's default
    (:func:`crossholder.training.profile_variant`), so a smoke run never replaces the committed table.
    """
    from . import paths

    variant = training.profile_variant(profile, seed) if variant is None else variant
    path = store.variant_dirs(variant)[0] / dataset / "selection" / f"grid-{profile}.csv"
    missing = missing_points(dataset, profile, seed=seed)
    store.atomic_write_text(path, df.to_csv(index=False))
    store.atomic_write_json(path.with_suffix(".json"), store.summary_record(
        params={"dataset": dataset, "grid": grid(dataset, profile), "settings": SELECTION[profile],
                "train": SELECTION_TRAIN.get(profile, {}), "code": SELECTION_CODE_VERSION},
        seed=seed, profile=profile, points_scored=len(df), points_missing=[{"defense": d, **hp} for d, hp in missing],
        file=paths.relative_to_root(path)))
    return path


def ablation_table(dataset: str, profile: str = "cpu", *, seed: int = 0, write: bool = True) -> pd.DataFrame:
    """The ablations' grids (:data:`ABLATION_GRIDS`, issue 31) with each point's clean *test* accuracy
    and the registered pick, from the cached points only (nothing is trained).

    The paper's rule picks the admissible point (clean validation accuracy at :data:`THRESHOLD`) with
    the best score (``winner``). Issue 31 also asks the registered model to meet the criterion on the
    full test set, so ``selected`` is the best-scoring point admissible on both splits: on
    Fashion-MNIST |Hg|'s validation winner (λ2 = 1.5) reaches 87.58% test accuracy and the pick is
    λ2 = 0.5 (the rule was stated before any robustness was measured on the test set; only clean
    test accuracy enters it). :data:`crossholder.experiments.FINAL` names the ``selected`` points.

    With ``write`` the table goes to ``<results>/<dataset>/selection/ablations-<profile>.csv`` with a
    JSON sidecar naming the points still missing (a ``selected`` mark is final only when none is).
    """
    from . import paths

    df = run_grid(dataset, profile, seed=seed, progress=False, defenses=ex.ABLATIONS, cached_only=True)
    if not len(df):
        return df
    tests = []
    for d, rid in zip(df["defense"], df["run_id"]):
        side = store.read_json(store.cache_dir(profile) / dataset / "models" / f"{d}-{rid}.json", {}) or {}
        tests.append(side.get("clean_test_accuracy"))
    df.insert(df.columns.get_loc("clean_val_acc") + 1, "clean_test_acc", tests)
    df["admissible_test"] = df["clean_test_acc"].astype(float) >= THRESHOLD[dataset]
    df["selected"] = False
    for _, g in df.groupby("defense"):
        ok = g[g["admissible"] & g["admissible_test"]]
        if len(ok):
            df.loc[ok["score"].idxmax(), "selected"] = True
    df = df.drop(columns=["paper_pick"]).dropna(axis=1, how="all")
    missing = missing_points(dataset, profile, seed=seed, defenses=ex.ABLATIONS)
    if write:
        path = store.dataset_dir(dataset, training.profile_variant(profile, seed)) / "selection" / f"ablations-{profile}.csv"
        store.atomic_write_text(path, df.to_csv(index=False))
        store.atomic_write_json(path.with_suffix(".json"), store.summary_record(
            params={"dataset": dataset, "grid": ABLATION_GRIDS[dataset], "settings": SELECTION[profile],
                    "threshold": THRESHOLD[dataset], "code": SELECTION_CODE_VERSION,
                    "rule": "selected: best score among points admissible on the validation and the test split"},
            seed=seed, profile=profile, points_scored=len(df), points_missing=[{"defense": d, **hp} for d, hp in missing],
            file=paths.relative_to_root(path)))
    return df


def read_ablation_table(dataset: str, root=None, profile: str = "cpu") -> tuple[pd.DataFrame | None, list[dict]]:
    """The written :func:`ablation_table` under ``root`` (a project root; ``None``: this checkout's
    results) and the points its sidecar lists as missing; ``(None, [])`` before it is written."""
    from . import paths

    res = paths.results_under(root)
    path = res / dataset / "selection" / f"ablations-{profile}.csv"
    if not path.exists():
        return None, []
    side = store.read_json(path.with_suffix(".json"), {}) or {}
    return pd.read_csv(path), list(side.get("points_missing", []))


def eps_unit_test(dataset: str = "mnist", profile: str = "cpu", *, eps: float = 5.0, seed: int = 0,
                  device: str = "cpu") -> pd.DataFrame:
    """AT at ε read in standardized (paper) units against ε read in pixels: clean val accuracy of each."""
    sel = EPS_UNIT_SETTINGS[ex.check_profile(profile)]
    rows = []
    for unit in ("paper", "pixel"):
        cfg = training.make_config(dataset, "adversarial", profile=profile, seed=seed, epochs=sel["epochs"], eps=eps,
                                   eps_unit=unit)
        model = training.train(cfg, register=False, progress=False, device=device).model.eval()
        xv, yv = data_mod.tensors(dataset, "val")
        acc = training.accuracy(model, xv, yv)
        rows.append({"eps": eps, "unit": unit, "eps_pixel": cfg.eps_pixel, "epochs": sel["epochs"],
                     "clean_val_acc": acc, "meets_criterion": acc >= THRESHOLD[dataset], "run_id": cfg.run_id})
    return pd.DataFrame(rows)


def select_points(todo: list[tuple[str, dict[str, float]]], specs: list[str]) -> list[tuple[str, dict[str, float]]]:
    """The points of ``todo`` matching each ``"key=value,key=value"`` of ``specs``, in the order of ``specs``.

    A spec that matches no grid point raises (a typo would otherwise score nothing, silently).
    """
    out: list[tuple[str, dict[str, float]]] = []
    for spec in specs:
        want: dict[str, float] = {}
        for kv in spec.split(","):
            k, sep, v = kv.partition("=")
            try:
                if not sep:
                    raise ValueError(kv)
                want[k.strip()] = float(v)
            except ValueError:
                raise ValueError(f"point={spec!r}: expected KEY=NUMBER[,KEY=NUMBER], e.g. 'lam1=0.1,lam2=0.5'") from None
        hits = [(d, hp) for d, hp in todo if hp.keys() == want.keys() and all(hp[k] == want[k] for k in want)]
        if not hits:
            raise ValueError(f"point={spec!r} is not in the grid; its points: "
                             f"{', '.join(sorted({','.join(f'{k}={v:g}' for k, v in hp.items()) for _, hp in todo}))}")
        out += [h for h in hits if h not in out]
    return out


def main(argv: list[str] | None = None) -> None:
    """Score grid points in the background, resumably (each finished point is cached)."""
    import argparse

    import torch

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--dataset", required=True, choices=list(GRIDS))
    ap.add_argument("--defense", action="append", help="restrict to this defense (repeatable)")
    ap.add_argument("--profile", default="cpu", choices=list(SELECTION))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--point", action="append", metavar="KEY=VALUE[,KEY=VALUE]",
                    help="score only the grid points with these hyperparameters, in the order given "
                         "(repeatable), e.g. --point lam1=0.1,lam2=0.5")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    todo = grid(args.dataset, args.profile, tuple(args.defense) if args.defense else None)
    if args.point:
        todo = select_points(todo, args.point)
    for defense, hp in todo:
        row = score_point(args.dataset, defense, hp, args.profile, seed=args.seed, device=args.device)
        print(f"[selection] {args.dataset}/{defense} {hp}: clean val {row['clean_val_acc']:.4f}, "
              f"score {row['score']:.4f}", flush=True)


if __name__ == "__main__":
    main()
