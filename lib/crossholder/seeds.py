"""Verdicts across training seeds: every registered configuration trained with seeds 0, 1 and 2
(``python -m crossholder.jobs seeds``, ``make seeds``) and evaluated with the ``strongest`` protocol
on the same first ``n`` test images.

* :func:`models_by_seed`: each seed's registered model, checked to be seed 0's configuration;
* :func:`per_examples_by_seed`: each model's per-example rows (the ``-examples.csv`` of its
  ``strongest`` evaluation, or the first ``n`` rows of a larger one: each chunk of 100 images is
  attacked independently, so these are the rows a run on ``n`` images gives);
* :func:`seeds_table`: the tidy table of ``results/<dataset>/seeds.csv`` (defense, seed, attack, ε,
  n, robust, accuracy, 95% Wilson interval);
* :func:`claims_across_seeds`: each claim of :data:`crossholder.claims.CLAIMS` judged on each
  seed's curves: "holds in k of 3 seeds";
* :func:`pooled_paired`: the exact McNemar test of two defenses pooled over seeds (each seed's
  discordant images added up: a stratified sign test, paired within each seed).

Seed ``s`` is both the model's training seed and its attacks' seed
(:func:`crossholder.evaluation.evaluate_registered`). ε in the paper's units.
"""

from __future__ import annotations

import io
from typing import Any, Sequence

import numpy as np
import pandas as pd

from . import data as data_mod
from . import claims, stats, sweeps
from . import evaluation as ev
from . import experiments as ex
from . import store

__all__ = ["models_by_seed", "per_examples_by_seed", "seeds_table", "claims_across_seeds", "pooled_paired", "write", "SEEDS", "SEEDS_N"]

#: The training seeds of the seed study (seed 0: the registered models).
SEEDS = (0, 1, 2)
#: Images per seed: the first 500 test images (seed 0's 1,000-image curves contribute their first 500).
SEEDS_N = 500


def models_by_seed(dataset: str, *, seeds: Sequence[int] = SEEDS, profile: str = "cpu",
                   defenses: Sequence[str] = ex.DEFENSES) -> dict[tuple[str, int], dict[str, Any]]:
    """The registry record (``results/models.json`` for seed 0, ``results/variants/<profile>-seed=<s>/``
    for the others) of each (defense, seed) model trained so far; a pair not registered yet is absent.

    Raises:
        ValueError: a seed's model was not trained with that seed, or its hyperparameters differ from
            seed 0's in anything but the seed (the seeds would not be one configuration).
    """
    from . import training

    data_mod.check_dataset(dataset)
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for s in seeds:
        reg = store.read_json(training.registry_path(training.profile_variant(profile, s)), {}) or {}
        for d in defenses:
            rec = reg.get(f"{dataset}/{ex.check_defense(d)}")
            if rec is None:
                continue
            hp = dict(rec.get("hyperparameters", {}))
            if hp.get("seed") != s:
                raise ValueError(f"{dataset}/{d} registered for seed {s} (run {rec.get('run_id')}) was trained "
                                 f"with seed {hp.get('seed')!r}")
            out[(d, s)] = rec
    for (d, s), rec in out.items():
        ref = out.get((d, 0))
        if s == 0 or ref is None:
            continue
        mine = {k: v for k, v in rec["hyperparameters"].items() if k != "seed"}
        base = {k: v for k, v in ref["hyperparameters"].items() if k != "seed"}
        if mine != base:
            diff = sorted(k for k in set(mine) | set(base) if mine.get(k) != base.get(k))
            raise ValueError(f"{dataset}/{d} of seed {s} (run {rec['run_id']}) differs from seed 0's "
                             f"(run {ref['run_id']}) in {diff}: retrain it with `python -m crossholder.jobs "
                             f"train --dataset {dataset} --defense {d} --seed {s}`")
    return out


def per_examples_by_seed(dataset: str, *, seeds: Sequence[int] = SEEDS, n: int = SEEDS_N, profile: str = "cpu",
                         defenses: Sequence[str] = ex.DEFENSES,
                         models: dict[tuple[str, int], dict[str, Any]] | None = None
                         ) -> tuple[dict[tuple[str, int], pd.DataFrame], list[tuple[str, int]]]:
    """The ``strongest`` per-example rows of the first ``n`` test images for each (defense, seed) model
    whose evaluation has them (finished, or in progress with those chunks done), and the list of the
    (defense, seed) pairs still missing (not trained, or not evaluated that far). Seed 0 reads the
    profile's evaluation (1,000 images at ``cpu``), the others an evaluation on ``n`` images
    (``jobs seeds --n 500``); the model is the one :func:`models_by_seed` finds registered
    (``models``: its result when the caller already has it).

    Raises:
        ValueError: ``n < 1``, or :func:`models_by_seed`'s checks fail.
    """
    data_mod.check_dataset(dataset)
    if n < 1:
        raise ValueError(f"n={n!r} must be >= 1 (test images per seed)")
    recs = models_by_seed(dataset, seeds=seeds, profile=profile, defenses=defenses) if models is None else models
    found, missing = {}, []
    for d in defenses:
        for s in seeds:
            rows = None
            if (d, s) in recs:
                rows = ev.first_rows_so_far(dataset, d, n, profile=profile, seed=s, n_examples=0 if s == 0 else n,
                                            run_id=recs[(d, s)]["run_id"])
            if rows is None:
                missing.append((d, s))
            else:
                found[(d, s)] = rows
    return found, missing


def seeds_table(per_examples: dict[tuple[str, int], pd.DataFrame], eps: Sequence[float], *,
                dataset: str) -> pd.DataFrame:
    """Tidy curves per (defense, seed): columns ``defense, seed, attack, eps, eps_pixel, n, robust,
    accuracy, ci_low, ci_high`` (:func:`crossholder.sweeps.curve_from_sweeps`), for ``eps`` the
    grid (paper units) the per-example rows were computed on.

    Raises:
        ValueError: the frames are not all on the same images (their ``index`` columns differ).
    """
    frames = list(per_examples.items())
    if not frames:
        return pd.DataFrame(columns=["defense", "seed", "attack", "eps", "eps_pixel", "n", "robust", "accuracy",
                                     "ci_low", "ci_high"])
    ref = frames[0][1]["index"].to_numpy()
    out = []
    for (d, s), per in frames:
        if not np.array_equal(per["index"].to_numpy(), ref):
            raise ValueError(f"per_examples[({d!r}, {s})] is not on the same images as the others "
                             f"(n = {len(per)} against {len(ref)}, or a different 'index' order)")
        c = sweeps.curve_from_sweeps(per, list(eps), sweeps.to_pixel(list(eps), dataset), defense=d)
        c.insert(1, "seed", s)
        out.append(c)
    return pd.concat(out, ignore_index=True)


def claims_across_seeds(table: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Each claim of ``dataset`` (:func:`crossholder.claims.claims_table`) judged on every seed's
    curves in ``table`` (:func:`seeds_table`): columns ``claim, statement, attack, seeds`` (the seeds
    with every defense the claim names), ``supported_in`` (how many of them support it),
    ``clear_for_in`` (supported, and beyond the 95% intervals), ``clear_against_in`` (refuted beyond
    the intervals) and ``per_seed`` (e.g. ``"0: yes*, 1: no, 2: yes"``; ``*``: beyond the intervals)."""
    rows = {}
    for s, g in table.groupby("seed"):
        for _, r in claims.claims_table(g.drop(columns="seed"), dataset).iterrows():
            key = (r["claim"], r["attack"])
            rec = rows.setdefault(key, {"claim": r["claim"], "statement": r["statement"], "attack": r["attack"],
                                        "seeds": 0, "supported_in": 0, "clear_for_in": 0, "clear_against_in": 0,
                                        "per_seed": []})
            if r["supported"] is None or pd.isna(r["supported"]):
                continue
            sup, clear = bool(r["supported"]), bool(r["beyond_ci"])
            rec["seeds"] += 1
            rec["supported_in"] += int(sup)
            rec["clear_for_in"] += int(sup and clear)
            rec["clear_against_in"] += int(not sup and clear)
            rec["per_seed"].append(f"{s}: {'yes' if sup else 'no'}{'*' if clear else ''}")
    for rec in rows.values():
        rec["per_seed"] = ", ".join(rec["per_seed"])
    return pd.DataFrame(list(rows.values()))


def pooled_paired(per_examples: dict[tuple[str, int], pd.DataFrame], eps: Sequence[float], *, dataset: str,
                  attacks: Sequence[str] = ("worst-per-example", "strongest"), pairs=claims.PAIRS,
                  eps_points: Sequence[float] = claims.PAIRED_EPS, alpha: float = 0.05) -> pd.DataFrame:
    """Exact McNemar tests of each pair of ``pairs`` (Cross-Hölder against the others) pooled over the
    seeds both defenses have: the discordant images of every seed (robust for one model only, each
    seed's two models on the same images) are added up and tested as one sign test,
    ``p = min(1, 2 P(X <= min(only_a, only_b)))``, ``X ~ Binomial(only_a + only_b, 1/2)``.

    The null hypothesis is that on each of these fixed images, with independently trained models
    per seed, either defense is equally likely to be the robust one. The same images recur in every
    seed, so ``n`` (image-seed pairs) overstates the sample size for a claim about images in
    general; ``per_seed`` keeps each seed's ``only_a/only_b`` so a disagreement between seeds stays
    visible, and so do ``per_seed_p`` (each seed's own exact McNemar p-value) and ``significant_in``
    (how many seeds alone give p < ``alpha`` in the pooled direction): one seed with a large effect
    can carry the pooled p-value while the others show none. No correction for the several tests
    (pairs × attacks × ε) is applied. Columns ``dataset, a, b, attack, eps, seeds, n, a_robust,
    b_robust, only_a, only_b, p_value, per_seed, per_seed_p, significant_in``."""
    grid = [round(float(e), 6) for e in eps]
    rows = []
    for a, b in pairs:
        common = sorted({s for d, s in per_examples if d == a} & {s for d, s in per_examples if d == b})
        if not common:
            continue
        for attack in attacks:
            for e in eps_points:
                if round(e, 6) not in grid:
                    raise ValueError(f"eps={e!r} is not on the grid {list(eps)!r}")
                k = grid.index(round(e, 6))
                tot = {"both": 0, "only_a": 0, "only_b": 0, "neither": 0}
                per_seed, per_seed_p, signs = [], [], []
                for s in common:
                    c = claims.paired_comparison(per_examples[(a, s)], per_examples[(b, s)], k, attack)
                    for key in tot:
                        tot[key] += c[key]
                    per_seed.append(f"{s}: {c['only_a']}/{c['only_b']}")
                    p_s = stats.mcnemar_exact(c["only_a"], c["only_b"])
                    per_seed_p.append(f"{s}: {p_s:.2g}")
                    signs.append(np.sign(c["only_a"] - c["only_b"]) if p_s < alpha else 0)
                pooled_sign = np.sign(tot["only_a"] - tot["only_b"])
                rows.append({"dataset": dataset, "a": a, "b": b, "attack": attack, "eps": e, "seeds": len(common),
                             "n": sum(tot.values()), "a_robust": tot["both"] + tot["only_a"],
                             "b_robust": tot["both"] + tot["only_b"], "only_a": tot["only_a"],
                             "only_b": tot["only_b"],
                             "p_value": stats.mcnemar_exact(tot["only_a"], tot["only_b"]), "per_seed": ", ".join(per_seed),
                             "per_seed_p": ", ".join(per_seed_p),
                             "significant_in": int(sum(1 for g in signs if g != 0 and g == pooled_sign))})
    return pd.DataFrame(rows)


def write(dataset: str, *, seeds: Sequence[int] = SEEDS, n: int = SEEDS_N, profile: str = "cpu") -> dict[str, Any]:
    """Write the seed study of ``dataset`` from the per-example rows found so far:
    ``results/<dataset>/seeds.csv`` (:func:`seeds_table`, with a provenance sidecar ``seeds.json``
    whose ``params.models`` maps each ``"<defense>/<seed>"`` to its training run id, and
    ``params.missing`` lists the pairs not there yet; the sidecar's own ``seed`` is 0, the study's
    seeds are ``params.seeds``), ``claims-seeds.csv`` (:func:`claims_across_seeds`),
    ``paired-seeds.csv`` (:func:`pooled_paired`) and ``figures/seeds_<dataset>.png``/``.pdf``
    drawn from ``seeds.csv``. Returns ``{"found": [...], "missing": [...]}``. Nothing is written when
    no model has its rows yet."""
    from . import plotting
    from .reports import NAMES

    eps = ev.eps_grid(profile)
    recs = models_by_seed(dataset, seeds=seeds, profile=profile)
    found, missing = per_examples_by_seed(dataset, seeds=seeds, n=n, profile=profile, models=recs)
    status = {"found": sorted(found), "missing": missing}
    if not found:
        return status
    folder = store.dataset_dir(dataset, store.variant_name(profile))   # results/<dataset> at cpu
    table = seeds_table(found, eps, dataset=dataset)
    csv = table.to_csv(index=False)
    table = pd.read_csv(io.StringIO(csv))                      # everything below from the file's contents
    claims = claims_across_seeds(table, dataset)
    paired = pooled_paired(found, eps, dataset=dataset)          # computed before anything is written
    store.atomic_write_text(folder / "seeds.csv", csv)
    store.atomic_write_json(folder / "seeds.json", store.provenance(
        params={"dataset": dataset, "seeds": list(seeds), "n": n, "eps": eps, "protocol": "strongest",
                "models": {f"{d}/{s}": recs[(d, s)]["run_id"] for d, s in sorted(found)},
                "missing": [f"{d}/{s}" for d, s in missing]},
        seed=0, profile=profile))
    store.atomic_write_text(folder / "claims-seeds.csv", claims.to_csv(index=False))
    store.atomic_write_text(folder / "paired-seeds.csv", paired.to_csv(index=False))
    plotting.seeds_figure(table, std=data_mod.MEAN_STD[dataset][1], name=f"seeds_{dataset}",
                          title=f"{NAMES[dataset]}: strongest, per training seed (the first {n} test images)\n"
                                "band: the range between the seeds, not a confidence interval")
    return status


def main(argv: list[str] | None = None) -> None:
    """``python -m crossholder.seeds [--dataset D ...] [--n 500]``: write the seed study's tables and
    figures from the evaluations found so far (``python -m crossholder.jobs seeds`` runs them)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m crossholder.seeds", description=main.__doc__)
    ap.add_argument("--dataset", action="append", choices=data_mod.DATASETS)
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    ap.add_argument("--n", type=int, default=SEEDS_N)
    ap.add_argument("--profile", default="cpu", choices=list(ex.PROFILES))
    args = ap.parse_args(argv)
    for ds in args.dataset or data_mod.DATASETS:
        st = write(ds, seeds=args.seeds, n=args.n, profile=args.profile)
        print(f"{ds}: {len(st['found'])} models with their first {args.n} images, missing: "
              f"{', '.join(f'{d}/seed {s}' for d, s in st['missing']) or 'none'}")


if __name__ == "__main__":
    main()
