"""Result tables as Markdown, generated from the committed results files (never typed by hand).

Each ``*_table()`` reads ``results/`` and returns a Markdown table; the analysis notebooks show
them (``IPython.display.Markdown``) and the README embeds some between markers:

    .venv/bin/python -m crossholder.reports          # rewrite the marked sections of README.md
    .venv/bin/python -m crossholder.reports --check  # exit 1 if README.md is out of date

Sections between ``<!-- table:NAME -->`` and ``<!-- /table:NAME -->`` markers are replaced (the names
of :data:`TABLES`):

* ``figure3``: ``results/mnist/hessian/norms-*.csv`` of the ``cpu`` profile (notebook 01's claims);
* ``models``: ``results/models.json`` (clean test accuracy, hyperparameters, training wall time);
* ``robustness``: ``results/<dataset>/robustness.csv`` at a few ε: ``strongest`` and, in parentheses,
  the paper's PGD (per-example worst case); for legacy curves the per-example and the paper's worst case;
* ``claims``: ``results/<dataset>/claims.csv`` (notebook 04's verdicts); ``verdicts``: the same, each
  claim once, the paper's PGD and ``strongest`` side by side;
* ``masking``: ``results/<dataset>/robustness/masking-*.csv`` (gradient masking, measured, per model);
* ``seed_curves``, ``claims_seeds``, ``paired_seeds``: ``results/<dataset>/seeds.csv``, ``claims-seeds.csv``,
  ``paired-seeds.csv`` (the seed study, ``python -m crossholder.seeds``); ``seed_checks``: the
  AutoAttack agreement and Square (``agreement-*.csv``, ``masking-*.csv``) of every model in
  ``results/<dataset>/seeds.json``;
* ``paired``: ``results/<dataset>/paired.csv`` (exact McNemar tests of Cross-Hölder against the others);
* ``step_size``: ``results/step-size.csv`` (``tools/step_size_study.py``: PGD's step, measured);
* ``autoattack``: ``results/<dataset>/robustness/autoattack-*.csv`` of the models in ``robustness.json``;
* ``agreement``: ``results/<dataset>/robustness/agreement-*.csv`` (AutoAttack against the ``strongest``
  sweep, per registered model, the newest sweep version);
* ``selection``: ``results/<dataset>/selection/grid-cpu.csv`` (notebook 03's grid points scored so far);
* ``all_classes``: the MNIST Cross-Lipschitz runs trained on every class (the paper's form) next to the
  registered runner-up run: sidecars in ``results/mnist/models/`` and their curves in
  ``results/mnist/robustness/`` (the ``cpu`` protocol, found by the model's run id);
* ``speed``: ``results/mnist/benchmarks/step-cost.json`` and ``step-cost-history.csv``
  (``benchmarks/bench_training.py``);
* ``fidelity``: ``results/mnist/benchmarks/fidelity-frontier.csv`` (``benchmarks/bench_fidelity.py``) and
  the ``fidelity_median`` column of every fast Cross-Hölder training log with its sidecar;
* ``fidelity_robustness``: every MNIST fast Cross-Hölder runner-up run
  (its lowest epoch fidelity, weight distance to the registered run and, if evaluated, its curve
  paired with the registered run's).

``tests/test_notebooks.py`` runs the check, so the README cannot drift from the CSVs.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pandas as pd

from . import paths
from .paths import project_root

ROOT = project_root()
NAMES = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}
DEFENSE_NAMES = {"none": "none", "cross_lipschitz": "Cross-Lipschitz", "cross_holder": "Cross-Hölder",
                 "adversarial": "PGD adversarial training"}
HEADLINE_EPS = (2.0, 3.0, 4.0, 5.0, 6.0)


def _results(root: Path | None) -> Path:
    """The results folder the tables read: ``<root>/results`` for a project root given explicitly (the
    analysis notebooks' ``results_root``), else :func:`crossholder.paths.results_dir` (which honours
    ``CROSSHOLDER_RESULTS``)."""
    return paths.results_under(root)


def _hyper(h: dict) -> str:
    d = h["defense"]
    if d == "cross_lipschitz":
        return f"λ1 = {h['lam1']:g}, {h['classes'].replace('_', '-')}"
    if d == "cross_holder":
        return (f"λ1 = {h['lam1']:g}, λ2 = {h['lam2']:g}, {h['classes'].replace('_', '-')}, {h['mode']} mode"
                + (", compiled" if h.get("compiled") else ""))
    if d == "adversarial":
        return f"ε = {h['eps']:g} (paper units)"
    return ""


def models_table(root: Path | None = None) -> str:
    reg = json.loads((_results(root) / "models.json").read_text())
    lines = ["| data set | defense | hyperparameters | clean test accuracy | training wall time |",
             "|---|---|---|---|---|"]
    for ds in NAMES:
        for d in DEFENSE_NAMES:
            rec = reg.get(f"{ds}/{d}")
            if rec is None:
                lines.append(f"| {NAMES[ds]} | {DEFENSE_NAMES[d]} | | not trained yet | |")
                continue
            wall = rec.get("provenance", {}).get("wall_time_s")
            wall_s = f"{wall / 60:.0f} min" if wall else ""
            lines.append(f"| {NAMES[ds]} | {DEFENSE_NAMES[d]} | {_hyper(rec['hyperparameters'])} | "
                         f"{100 * rec['clean_test_accuracy']:.2f}% | {wall_s} |")
    return "\n".join(lines)


def robustness_table(root: Path | None = None) -> str:
    """Robust accuracy (%) at :data:`HEADLINE_EPS`: the column ``judged on`` says what each row shows,
    ``strongest (the paper's PGD, per-example worst case)`` or, for a legacy curve, ``per-example
    worst case (the paper's worst-min)``."""
    lines = ["| data set | defense | n | judged on | " + " | ".join(f"ε = {e:g}" for e in HEADLINE_EPS) + " |",
             "|---|---|---|---|" + "---|" * len(HEADLINE_EPS)]
    for ds in NAMES:
        f = _results(root) / ds / "robustness.csv"
        if not f.exists():
            lines.append(f"| {NAMES[ds]} | (not evaluated yet) | | |" + " |" * len(HEADLINE_EPS))
            continue
        c = pd.read_csv(f)
        for d in DEFENSE_NAMES:
            sub = c[c["defense"] == d]
            if sub.empty:
                continue
            cells = []
            # strongest (the paper's PGD, per-example worst case) where strongest ran, else the legacy
            # per-example worst case (the paper's worst-min)
            first, second = (("strongest", "worst-per-example") if "strongest" in set(sub["attack"])
                             else ("worst-per-example", "worst-min"))
            for e in HEADLINE_EPS:
                pe = sub[(sub["attack"] == first) & (abs(sub["eps"] - e) < 1e-9)]
                wm = sub[(sub["attack"] == second) & (abs(sub["eps"] - e) < 1e-9)]
                cells.append("" if pe.empty else f"{100 * pe['accuracy'].iloc[0]:.1f} ({100 * wm['accuracy'].iloc[0]:.1f})")
            mode = "strongest (PGD)" if first == "strongest" else "PGD per example (worst-min)"
            lines.append(f"| {NAMES[ds]} | {DEFENSE_NAMES[d]} | {int(sub['n'].iloc[0])} | {mode} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines)


def claims_table(root: Path | None = None, *, evidence: bool = True, worst_min: bool = True) -> str:
    """``results/<dataset>/claims.csv`` (notebook 04's verdicts), each claim under each attack it is
    judged on, with its evidence (notebook 07)."""
    cols = ["claim", "the paper says", "attack", "supported", "beyond the 95% CIs"] + (["evidence"] if evidence else [])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for ds in NAMES:
        f = _results(root) / ds / "claims.csv"
        if not f.exists():
            lines.append(f"| {NAMES[ds]} | not evaluated yet |" + " |" * (len(cols) - 2))
            continue
        for _, r in pd.read_csv(f).iterrows():
            if r["attack"] == "worst-min" and not worst_min:
                continue
            sup = {True: "**yes**", False: "**no**"}.get(_bool(r["supported"]), "not evaluated")
            ci = {True: "yes", False: "no"}.get(_bool(r.get("beyond_ci")), "")
            cells = [r["claim"], _cell(r["statement"]), r["attack"], sup, ci] + ([_cell(r["evidence"])] if evidence else [])
            lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def verdicts_table(root: Path | None = None) -> str:
    """The README's verdict table: each claim once, judged side by side under the paper's protocol
    (its PGD attack, or for the worst-case claims the per-example worst case of its two PGD attacks)
    and under ``strongest`` (every attack we run), where ``claims.csv`` holds ``strongest`` rows. A
    cell is the verdict on the point estimates, then whether it also holds with the 95% Wilson
    intervals. "The paper's PGD" of a worst-case claim is the per-example worst case of its two
    attacks (the paper's ``worst-min``, never below it, is in :func:`claims_table`). The evidence is
    in :func:`claims_table` (notebook 07).

    Once a ``results/<dataset>/claims-seeds.csv`` exists (``python -m crossholder.seeds``), a last
    column says in how many of the evaluated training seeds the claim holds under ``strongest``, on
    the point estimates (``k of m``: a claim refuted in every seed reads ``0 of m``;
    :func:`claims_seeds_table` has each seed's verdict), on the first ``n`` test images
    of ``seeds.csv`` (named in the header), while the other columns stand on seed 0's full curves."""
    from crossholder.claims import CLAIMS

    seeds = {ds: pd.read_csv(_results(root) / ds / "claims-seeds.csv") for ds in NAMES
             if (_results(root) / ds / "claims-seeds.csv").exists()}

    def held(ds: str, cid: str) -> str:
        if ds not in seeds:
            return "not run yet"
        r = seeds[ds][(seeds[ds]["claim"] == cid) & (seeds[ds]["attack"] == "strongest")]
        if r.empty or not int(r["seeds"].iloc[0]):
            return "not evaluated"
        return f"{int(r['supported_in'].iloc[0])} of {int(r['seeds'].iloc[0])}"

    def cell(r, missing: str = "not evaluated") -> str:
        if r is None:
            return missing
        sup = _bool(r["supported"])
        if sup is None:
            return "not evaluated"
        ci = _bool(r.get("beyond_ci"))
        return ("**yes**" if sup else "**no**") + {True: ", beyond CIs", False: ", within CIs"}.get(ci, "")

    extra = bool(seeds)
    ns = {int(n) for ds in seeds if (_results(root) / ds / "seeds.csv").exists()
          for n in pd.read_csv(_results(root) / ds / "seeds.csv")["n"].unique()}
    head = f" holds in (seeds, n = {ns.pop()}) |" if len(ns) == 1 else " holds in (seeds) |"
    lines = ["| claim | the paper says | the paper's PGD | strongest |" + (head if extra else ""),
             "|---|---|---|---|" + ("---|" if extra else "")]
    for ds in NAMES:
        f = _results(root) / ds / "claims.csv"
        if not f.exists():
            lines.append(f"| {NAMES[ds]} | not evaluated yet | | |" + (" |" if extra else ""))
            continue
        df = pd.read_csv(f)
        attack_of = {c[0]: c[2] for c in CLAIMS[ds]}
        strong = "strongest" in set(df["attack"])
        for cid, g in df.groupby("claim", sort=False):
            by = {r["attack"]: r for _, r in g.iterrows()}
            paper = by.get({"worst": "worst-per-example"}.get(attack_of.get(cid), attack_of.get(cid)))
            lines.append(f"| {cid} | {_cell(g['statement'].iloc[0])} | {cell(paper)} | "
                         f"{cell(by.get('strongest'), 'not evaluated' if strong else 'not run yet')} |"
                         + (f" {held(ds, cid)} |" if extra else ""))
    return "\n".join(lines)


def _newest_check(root: Path | None, ds: str, kind: str, defense: str, run_id: str) -> tuple[int, dict, pd.DataFrame] | None:
    """The rows of model ``run_id`` (a ``defense`` model of data set ``ds``) in the newest table
    ``results/<ds>/robustness/<kind>-*.csv`` (one- or multi-model) of the ``cpu`` profile that checked it: the
    highest code version of the sweep, then the largest ``n``, then the last file name.
    ``(code, params, rows)``, or ``None`` when no such table checked that model."""
    best: tuple[tuple[int, int], dict, pd.DataFrame] | None = None
    for f in sorted((_results(root) / ds / "robustness").glob(f"{kind}-*.json")):
        meta = json.loads(f.read_text())
        params = meta.get("params", {})
        if (meta.get("profile") != "cpu" or params.get("models", {}).get(defense) != run_id
                or not f.with_suffix(".csv").exists()):
            continue
        key = (int(params.get("code", 0)), int(params.get("n", 0)))
        table = pd.read_csv(f.with_suffix(".csv"))
        rows = table[table["defense"] == defense]
        if len(rows) and (best is None or key >= best[0]):
            best = (key, params, rows)
    return None if best is None else (best[0][0], best[1], best[2])


def _newest_per_model(root: Path | None, kind: str) -> dict[tuple[str, str], tuple[int, dict, pd.DataFrame]]:
    """:func:`_newest_check` for each registered model (``results/models.json``), by ``(dataset,
    defense)``; models no table checked are left out. Values: ``(code, params, rows)``."""
    models = json.loads((_results(root) / "models.json").read_text())
    found: dict[tuple[str, str], tuple[int, dict, pd.DataFrame]] = {}
    for ds in NAMES:
        for defense in DEFENSE_NAMES:
            run_id = models.get(f"{ds}/{defense}", {}).get("run_id")
            hit = _newest_check(root, ds, kind, defense, run_id) if run_id else None
            if hit is not None:
                found[(ds, defense)] = hit
    return found


def masking_table(root: Path | None = None) -> str:
    """Gradient masking, measured (notebook 04, ``strongest`` protocol): per registered model, at the
    table's ε (paper units), on its first ``n`` test images: how many images the paper's PGD (either
    loss) fools, how many more each stronger attack fools beyond it (APGD-T and FAB-T only where
    the sweep runs them, :func:`crossholder.sweeps.strong_sweep`), and the black-box Square
    attack (no gradients): fooled, beyond PGD, beyond ``strongest``. From
    ``results/<dataset>/robustness/masking-*.csv`` of the ``cpu`` profile, the newest code version
    per model (then the largest ``n``). The last column reads it: Square beyond ``strongest`` would
    mean every gradient attack is blinded (masking); Square beyond PGD alone, that PGD's gradients
    are; neither is no sign of masking, weak evidence on its own since Square (5,000 queries) fools
    fewer images than PGD."""
    found = _newest_per_model(root, "masking")
    stronger = ("apgd-ce", "fab", "fab-t", "apgd-t", "strongest")
    lines = ["| data set | defense | ε | n | PGD fools | beyond PGD: " + " / ".join(stronger)
             + " | Square fools (beyond PGD, beyond strongest) | reading |", "|---|---|---|---|---|---|---|---|"]
    for ds in NAMES:
        for defense in DEFENSE_NAMES:
            if (ds, defense) not in found:
                continue
            _, params, rows = found[(ds, defense)]
            eps = float(params.get("eps", float("nan")))
            by = rows.set_index("attack")
            n = int(rows["n"].iloc[0])
            pgd = int(by.loc["strongest", "fooled"] - by.loc["strongest", "beyond_pgd"])
            beyond = " / ".join(str(int(by.loc[a, "beyond_pgd"])) if a in by.index else "–" for a in stronger)
            sq = by.loc["square"] if "square" in by.index else None
            if sq is None:
                square, reading = "not run", ""
            else:
                square = f"{int(sq['fooled'])} ({int(sq['beyond_pgd'])}, {int(sq['beyond_strongest'])})"
                extra = int(by.loc["strongest", "beyond_pgd"])
                if sq["beyond_strongest"] > 0:
                    reading = f"**masking**: Square fools {int(sq['beyond_strongest'])} that no gradient attack does"
                elif sq["beyond_pgd"] > 0:
                    reading = (f"PGD's gradients partly blind: Square fools {int(sq['beyond_pgd'])} PGD misses "
                               "(the other gradient attacks find them)")
                else:
                    reading = "no sign of masking: Square finds nothing beyond PGD" + (
                        f"; the stronger attacks fool {100 * extra / n:.1f}% more of the images" if extra else "")
            lines.append(f"| {NAMES[ds]} | {DEFENSE_NAMES[defense]} | {eps:g} | {n} | {pgd} | {beyond} | {square} | {reading} |")
    return "\n".join(lines) if len(lines) > 2 else "(no masking table yet)"


#: the attacks a paired test is judged on (``paired.csv``'s ``attack``) and their names in the tables
_JUDGED_ON = {"worst-per-example": "the paper's PGD", "strongest": "strongest"}


def paired_table(root: Path | None = None, *, judged_on: tuple[str, ...] = ("worst-per-example", "strongest")) -> str:
    """``results/<dataset>/paired.csv`` (notebook 04, ``strongest`` protocol): Cross-Hölder against
    Cross-Lipschitz and against adversarial training on the same ``n`` images, per ε (paper units):
    the difference in robust accuracy Δ = Cross-Hölder − the other (points) and the exact McNemar
    p-value, judged on the paper's PGD (per-example worst case, ``"worst-per-example"``) and on
    ``"strongest"``: the rows of the attacks in ``judged_on``. Twelve tests per data set, uncorrected.

    Raises:
        ValueError: ``judged_on`` names an attack other than those two.
    """
    if not judged_on or set(judged_on) - set(_JUDGED_ON):
        raise ValueError(f"judged_on={judged_on!r}; allowed: a non-empty subset of {tuple(_JUDGED_ON)!r}")
    lines = []
    eps_all: list[float] = []
    body = []
    for ds in NAMES:
        f = _results(root) / ds / "paired.csv"
        if not f.exists():
            body.append((ds, None, None, None))
            continue
        df = pd.read_csv(f)
        eps_all += [e for e in df["eps"].drop_duplicates() if e not in eps_all]
        for (b, att), g in df.groupby(["b", "attack"], sort=False):
            if att in judged_on:
                body.append((ds, b, att, g.set_index("eps")))
    head = "| data set | Cross-Hölder vs | judged on | n | " + " | ".join(f"ε = {e:g}" for e in eps_all) + " |"
    lines += [head, "|---|---|---|---|" + "---|" * len(eps_all)]
    for ds, b, att, g in body:
        if g is None:
            lines.append(f"| {NAMES[ds]} | not evaluated yet | | |" + " |" * len(eps_all))
            continue
        cells = ["" if e not in g.index else
                 f"{100 * (g.loc[e, 'a_robust'] - g.loc[e, 'b_robust']) / g.loc[e, 'n']:+.1f} ({_p(g.loc[e, 'p_value'])})"
                 for e in eps_all]
        lines.append(f"| {NAMES[ds]} | {DEFENSE_NAMES[b]} | {_JUDGED_ON[att]} | {int(g['n'].iloc[0])} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_strongest_table(root: Path | None = None) -> str:
    """:func:`paired_table`'s ``strongest`` rows only (the README's, for length)."""
    return paired_table(root, judged_on=("strongest",))


def seed_curves_table(root: Path | None = None) -> str:
    """``results/<dataset>/seeds.csv`` (``python -m crossholder.seeds``): ``strongest`` robust accuracy
    (%) of each defense and training seed at ε = 3, 4, 5, 6 (paper units), on the same first ``n``
    test images; the last row per defense is the mean and the range over its seeds."""
    eps = (3.0, 4.0, 5.0, 6.0)
    lines = ["| data set | defense | seed | n | " + " | ".join(f"ε = {e:g}" for e in eps) + " |",
             "|---|---|---|---|" + "---|" * len(eps)]
    for ds in NAMES:
        f = _results(root) / ds / "seeds.csv"
        if not f.exists():
            lines.append(f"| {NAMES[ds]} | not computed yet (`make seeds`) | | |" + " |" * len(eps))
            continue
        t = pd.read_csv(f)
        t = t[t["attack"] == "strongest"]
        for d in DEFENSE_NAMES:
            g = t[t["defense"] == d]
            if g.empty:
                continue
            acc = g.pivot_table(index="seed", columns="eps", values="accuracy") * 100
            n = int(g["n"].iloc[0])
            for seed, row in acc.iterrows():
                lines.append(f"| {NAMES[ds]} | {DEFENSE_NAMES[d]} | {seed} | {n} | "
                             + " | ".join(f"{row[e]:.1f}" if e in row.index else "" for e in eps) + " |")
            if len(acc) > 1:
                lines.append(f"| {NAMES[ds]} | {DEFENSE_NAMES[d]} | mean (range) | {n} | " + " | ".join(
                    f"{acc[e].mean():.1f} ({acc[e].min():.1f}–{acc[e].max():.1f})" if e in acc.columns else ""
                    for e in eps) + " |")
    return "\n".join(lines)


def claims_seeds_table(root: Path | None = None) -> str:
    """``results/<dataset>/claims-seeds.csv``: each claim judged on each training seed's curves
    (``strongest`` and the paper's PGD), how many seeds support it, and per seed (``*``: the verdict
    also holds with the 95% intervals)."""
    lines = ["| claim | the paper says | judged on | holds in | per seed |", "|---|---|---|---|---|"]
    for ds in NAMES:
        f = _results(root) / ds / "claims-seeds.csv"
        if not f.exists():
            lines.append(f"| {NAMES[ds]} | not computed yet (`make seeds`) | | | |")
            continue
        for _, r in pd.read_csv(f).iterrows():
            if r["attack"] == "worst-min":
                continue
            held = f"{int(r['supported_in'])} of {int(r['seeds'])}" if r["seeds"] else "not evaluated"
            per = "" if pd.isna(r["per_seed"]) else r["per_seed"]
            lines.append(f"| {r['claim']} | {_cell(r['statement'])} | {r['attack']} | {held} | {per} |")
    return "\n".join(lines)


def paired_seeds_table(root: Path | None = None) -> str:
    """``results/<dataset>/paired-seeds.csv``: Cross-Hölder against the others, the exact McNemar test
    pooled over training seeds (:func:`crossholder.seeds.pooled_paired`: the null is that on these
    fixed images either defense is equally likely to be the robust one): Δ (points, over image-seed
    pairs), p, how many seeds alone give p < 0.05 in the pooled direction, and each seed's
    discordant counts ``only Cross-Hölder / only the other``."""
    lines = ["| data set | Cross-Hölder vs | judged on | ε | seeds | Δ (p) | p < 0.05 alone | per seed |",
             "|---|---|---|---|---|---|---|---|"]
    for ds in NAMES:
        f = _results(root) / ds / "paired-seeds.csv"
        if not f.exists():
            lines.append(f"| {NAMES[ds]} | not computed yet (`make seeds`) | | | | | | |")
            continue
        for _, r in pd.read_csv(f).iterrows():
            d = 100 * (r["a_robust"] - r["b_robust"]) / r["n"]
            lines.append(f"| {NAMES[ds]} | {DEFENSE_NAMES[r['b']]} | {_JUDGED_ON.get(r['attack'], r['attack'])} | "
                         f"{r['eps']:g} | {int(r['seeds'])} | {d:+.1f} ({_p(r['p_value'])}) | "
                         f"{int(r['significant_in'])} of {int(r['seeds'])} | {r['per_seed']} |")
    return "\n".join(lines)


def seed_checks_table(root: Path | None = None) -> str:
    """AutoAttack against the ``strongest`` sweep for every model of the seed study (the models in
    ``results/<dataset>/seeds.json``), from ``results/<dataset>/robustness/agreement-*.csv`` and
    ``masking-*.csv`` (the newest table per model, :func:`_newest_check`): per defense and training
    seed, on the model's first ``n`` test images, ``robust / missed`` per ε (paper units): the images
    the sweep calls robust and how many of those AutoAttack fools (bold: more than 1% of ``n``); then
    the black-box Square attack at the masking table's ε: the images it fools beyond ``strongest``
    (bold when > 0: gradient masking). "not checked" where no agreement table checked the model
    (``python -m crossholder.jobs evaluate ... --checks N``)."""
    rows, missing = [], []
    for ds in NAMES:
        f = _results(root) / ds / "seeds.json"
        if not f.exists():
            missing.append(ds)
            continue
        models = json.loads(f.read_text())["params"]["models"]
        for defense in DEFENSE_NAMES:
            for seed, run_id in sorted((int(k.rsplit("/", 1)[1]), v) for k, v in models.items()
                                       if k.rsplit("/", 1)[0] == defense):
                rows.append((ds, defense, seed, _newest_check(root, ds, "agreement", defense, run_id),
                             _newest_check(root, ds, "masking", defense, run_id)))
    eps = sorted({float(e) for *_, agree, _ in rows if agree for e in agree[2]["eps"]})
    if rows and not eps:
        return "(no model of the seed study checked by AutoAttack yet: `python -m crossholder.jobs seeds --checks 100`)"
    cols = ["data set", "defense", "seed", "n", *(f"ε = {e:g}" for e in eps), "Square beyond strongest"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for ds, defense, seed, agree, mask in rows:
        square = "not run"
        if mask is not None and "square" in set(mask[2]["attack"]):
            sq = mask[2].set_index("attack").loc["square"]
            square = f"{int(sq['beyond_strongest'])} of {int(sq['n'])} at ε = {float(mask[1].get('eps', float('nan'))):g}"
            square = f"**{square}**" if sq["beyond_strongest"] > 0 else square
        if agree is None:
            cells, n = ["not checked"] + [""] * (len(eps) - 1), ""
        else:
            n, cells = int(agree[2]["n"].iloc[0]), _agreement_cells(agree[2], eps)
        lines.append("| " + " | ".join([NAMES[ds], DEFENSE_NAMES[defense], str(seed), str(n), *cells, square]) + " |")
    lines += [f"| {NAMES[ds]} | not computed yet (`make seeds`) |" + " |" * (len(cols) - 2) for ds in missing]
    return "\n".join(lines)


def _cell(text: str) -> str:
    """Markdown table cell: a literal ``|`` (as in |Hg|) would end the cell, ``*`` start emphasis."""
    return str(text).replace("|", "\\|").replace("*", "\\*")


def _bool(v) -> bool | None:
    if isinstance(v, str):
        return {"True": True, "False": False}.get(v)
    if v is None or (isinstance(v, float) and v != v):
        return None
    return bool(v)


def figure3_table(root: Path | None = None) -> str:
    from crossholder import hessian_tables

    lines = ["| claim (Figure 3, appendix C.1) | ours | supported |", "|---|---|---|"]
    for side in sorted((_results(root) / "mnist" / "hessian").glob("norms-*.json")):
        if json.loads(side.read_text()).get("profile") != "cpu":
            continue
        for _, r in hessian_tables.figure3_claims(pd.read_csv(side.with_suffix(".csv"))).iterrows():
            lines.append(f"| {_cell(r['claim'])} | {_cell(r['ours'])} | {'**yes**' if r['supported'] else '**no**'} |")
        break
    return "\n".join(lines)


def autoattack_table(root: Path | None = None) -> str:
    lines = ["| data set | defense | n | ε | AutoAttack | our PGD (per-example worst case) | gap |",
             "|---|---|---|---|---|---|---|"]
    for ds in NAMES:
        side = _results(root) / ds / "robustness.json"
        if not side.exists():
            continue
        model_ids = json.loads(side.read_text())["params"]["models"]
        for f in sorted((_results(root) / ds / "robustness").glob("autoattack-*.json")):
            meta = json.loads(f.read_text())
            if meta.get("params", {}).get("models") != model_ids or meta.get("profile") != "cpu":
                continue
            for _, r in pd.read_csv(f.with_suffix(".csv")).iterrows():
                lines.append(f"| {NAMES[ds]} | {DEFENSE_NAMES[r['defense']]} | {int(r['n'])} | {r['eps']:g} | "
                             f"{100 * r['autoattack']:.0f}% | {100 * r['ours_worst_per_example']:.0f}% | "
                             f"{int(round(100 * r['gap'])):+d} |")
    return "\n".join(lines)


def _agreement_cells(rows: pd.DataFrame, eps: list[float]) -> list[str]:
    """One model's agreement rows as ``robust / missed`` cells at each of ``eps`` ("" where not
    checked); bold where more than 1% of its ``n`` images are missed."""
    by, n, cells = rows.set_index("eps"), int(rows["n"].iloc[0]), []
    for e in eps:
        if e not in by.index:
            cells.append("")
            continue
        r = by.loc[e]
        cell = f"{int(r['robust'])} / {int(r['missed'])}"
        cells.append(f"**{cell}**" if r["missed"] > 0.01 * n else cell)
    return cells


def agreement_table(root: Path | None = None) -> str:
    """AutoAttack against the ``strongest`` sweep, per registered robust model: on its first ``n`` test
    images, how many images the sweep calls robust and how many of those AutoAttack fools (``missed``),
    per ε; from ``results/<dataset>/robustness/agreement-*.csv`` of the ``cpu`` profile, the highest
    code version of the sweep found for each model (:func:`_newest_per_model`; a ``sweep`` column
    names it when the models' versions differ). Bold: more than 1% of ``n`` missed (the target)."""
    found = {k: (code, rows) for k, (code, _, rows) in _newest_per_model(root, "agreement").items()}
    eps = sorted({float(e) for _, rows in found.values() for e in rows["eps"]})
    mixed = len({code for code, _ in found.values()}) > 1
    lines = ["| data set | defense | n | " + ("sweep | " if mixed else "") + " | ".join(f"ε = {e:g}" for e in eps) + " |",
             "|---|---|---|" + ("---|" if mixed else "") + "---|" * len(eps)]
    for ds in NAMES:
        for defense in DEFENSE_NAMES:
            if (ds, defense) not in found:
                continue
            code, rows = found[(ds, defense)]
            n = int(rows["n"].iloc[0])
            cells = _agreement_cells(rows, eps)
            lines.append(f"| {NAMES[ds]} | {DEFENSE_NAMES[defense]} | {n} | " + (f"v{code} | " if mixed else "")
                         + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 2 else "(no AutoAttack agreement yet)"


def selection_table(root: Path | None = None) -> str:
    """The scored grid points of notebook 03 (``results/<dataset>/selection/grid-cpu.csv``)."""
    lines = ["| data set | defense | hyperparameters | clean val accuracy | worst case ε = 3 / 4 | admissible | "
             "winner (of the points scored) | paper's pick |", "|---|---|---|---|---|---|---|---|"]
    for ds in NAMES:
        f = _results(root) / ds / "selection" / "grid-cpu.csv"
        side = f.with_suffix(".json")
        t = pd.read_csv(f) if f.exists() else pd.DataFrame()
        missing = len(json.loads(side.read_text()).get("points_missing", [])) if side.exists() else None
        if t.empty:
            lines.append(f"| {NAMES[ds]} | no point scored yet{f' ({missing} missing)' if missing else ''} | | | | | | |")
            continue
        order = {d: i for i, d in enumerate(DEFENSE_NAMES)}
        t = t.assign(_o=t["defense"].map(order)).sort_values(["_o", *[c for c in ("eps", "lam1", "lam2") if c in t]])
        for _, r in t.iterrows():
            hp = ", ".join(f"{sym} = {r[c]:g}" for c, sym in (("eps", "ε"), ("lam1", "λ1"), ("lam2", "λ2"))
                           if c in r and r[c] == r[c])
            lines.append(f"| {NAMES[ds]} | {DEFENSE_NAMES[r['defense']]} | {hp} | {100 * r['clean_val_acc']:.2f}% | "
                         f"{100 * r['worst_min_3']:.1f} / {100 * r['worst_min_4']:.1f} | "
                         f"{'yes' if _bool(r['admissible']) else 'no'} | {'**yes**' if _bool(r['winner']) else ''} | "
                         f"{'yes' if _bool(r['paper_pick']) else ''} |")
        if missing:
            lines.append(f"| {NAMES[ds]} | ({missing} grid point{'' if missing == 1 else 's'} not scored yet) | | | | | | |")
    return "\n".join(lines)


def _curve_side(root: Path | None, ds: str, defense: str, run_id: str) -> Path | None:
    """The provenance file of the full-grid ``cpu``-protocol curve (n = 300, 50 steps x 10 restarts) of ``run_id``."""
    for side in sorted((_results(root) / ds / "robustness").glob(f"{defense}-*.json")):
        prm = json.loads(side.read_text()).get("params", {})
        if prm.get("model") == run_id and prm.get("n") == 300 and prm.get("steps") == 50 and prm.get("restarts") == 10:
            return side
    return None


def _headline(curve: pd.DataFrame) -> str:
    """The per-example worst-case accuracies (%) of a curve at :data:`HEADLINE_EPS`, comma-separated."""
    pe = curve[curve["attack"] == "worst-per-example"]
    return ", ".join(f"{100 * pe[abs(pe['eps'] - e) < 1e-9]['accuracy'].iloc[0]:.1f}" for e in HEADLINE_EPS)


def _p(p_value: float) -> str:
    """A p-value as the tables print it."""
    return "< 0.001" if p_value < 0.001 else format(p_value, ".3f" if p_value < 0.01 else ".2f")


def _curve_of(root: Path | None, ds: str, defense: str, run_id: str) -> pd.DataFrame | None:
    """That curve (:func:`_curve_side`), if computed."""
    side = _curve_side(root, ds, defense, run_id)
    return None if side is None else pd.read_csv(side.with_suffix(".csv"))


def _class_forms(root: Path | None) -> dict[str, list[tuple[str, dict]]]:
    """Per gradient regularizer: ``(run id, record)`` of the registered MNIST model first, then every all-class run."""
    reg = json.loads((_results(root) / "models.json").read_text())
    out: dict[str, list[tuple[str, dict]]] = {}
    for defense in ("cross_lipschitz", "cross_holder"):
        registered = reg[f"mnist/{defense}"]
        out[defense] = [(registered["run_id"], registered)]
        for side in sorted((_results(root) / "mnist" / "models").glob(f"{defense}-*.json")):
            rec = json.loads(side.read_text())
            if rec["hyperparameters"].get("classes") == "all":
                out[defense].append((rec["run_id"], rec))
    return out


def all_classes_table(root: Path | None = None) -> str:
    """Runner-up class against every class (the paper's form) for the MNIST gradient regularizers."""
    registered = _class_forms(root)
    lines = ["| run | defense | classes | λ | clean test accuracy | training wall time | worst case (per example) at "
             + ", ".join(f"ε = {e:g}" for e in HEADLINE_EPS) + " |", "|---|---|---|---|---|---|---|"]
    for defense, runs in registered.items():
        for rid, rec in runs:
            hp = rec["hyperparameters"]
            c = _curve_of(root, "mnist", defense, rid)
            acc = "not evaluated yet" if c is None else _headline(c)
            wall = rec.get("provenance", {}).get("wall_time_s")
            lam = f"{hp['lam1']:g}" if defense == "cross_lipschitz" else f"{hp['lam1']:g}, {hp['lam2']:g}"
            lines.append(f"| {rid}{' (registered)' if rid == runs[0][0] else ''}"
                         f"{', compiled' if hp.get('compiled') else ''} | {DEFENSE_NAMES[defense]} | "
                         f"{hp['classes'].replace('_', '-')} | {lam} | {100 * rec['clean_test_accuracy']:.2f}% | "
                         f"{'' if not wall else f'{wall / 60:.0f} min'} | {acc} |")
    return "\n".join(lines)


def _examples_beside(side: Path, curve: pd.DataFrame) -> tuple[pd.DataFrame, list[float]]:
    """The per-example results written beside a curve's provenance file ``side``, and the curve's ε grid."""
    return (pd.read_csv(side.with_name(side.stem + "-examples.csv")),
            [float(e) for e in sorted(curve["eps"].unique())])


def _examples_of(root: Path | None, ds: str, defense: str, run_id: str) -> tuple[pd.DataFrame, list[float]] | None:
    """Per-example results and the ε grid of that curve (:func:`_curve_side`), if computed."""
    side = _curve_side(root, ds, defense, run_id)
    return None if side is None else _examples_beside(side, pd.read_csv(side.with_suffix(".csv")))


def all_classes_paired_table(root: Path | None = None) -> str:
    """Paired comparisons (same 300 images, exact McNemar) of the all-class runs against the other forms."""
    from crossholder.claims import paired_comparison

    forms = {f"{DEFENSE_NAMES[d]}, {'all classes' if rec['hyperparameters']['classes'] == 'all' else 'runner-up'}":
             (d, rid) for d, runs in _class_forms(root).items() for rid, rec in runs}
    pairs = [("Cross-Hölder, all classes", "Cross-Lipschitz, all classes"),
             ("Cross-Hölder, all classes", "Cross-Hölder, runner-up"),
             ("Cross-Lipschitz, all classes", "Cross-Lipschitz, runner-up"),
             ("Cross-Hölder, runner-up", "Cross-Lipschitz, all classes")]
    lines = ["| model A | model B | ε | robust for both | only A | only B | exact McNemar p |", "|---|---|---|---|---|---|---|"]
    for a, b in pairs:
        if a not in forms or b not in forms:
            continue
        ea, eb = _examples_of(root, "mnist", *forms[a]), _examples_of(root, "mnist", *forms[b])
        if ea is None or eb is None or ea[1] != eb[1]:
            continue
        for e in (5.0, 6.0):
            r = paired_comparison(ea[0], eb[0], ea[1].index(e))
            lines.append(f"| {a} | {b} | {e:g} | {r['both']} | {r['only_a']} | {r['only_b']} | "
                         f"{_p(r['p_value'])} |")
    return "\n".join(lines)


STRATEGY_NAMES = {"warm_power": "kept direction, power steps",
                  "warm_power_bf16": "kept direction, power steps in bfloat16",
                  "warm_lanczos": "kept direction, Lanczos", "cold_power": "fresh direction, power steps"}


def _schedule(hp: dict) -> str:
    """A fast Cross-Hölder run's products per visit, in words (from its hyperparameters)."""
    steps = f"{hp['inner_iters']}"
    if hp.get("warmup_epochs"):
        steps = (f"{max(hp['inner_iters'], hp['warmup_iters'])} in epochs 1–{hp['warmup_epochs']}, then "
                 f"{hp['inner_iters']};")
    if hp.get("power_dtype", "float32") != "float32":
        steps += f" in {hp['power_dtype']}"
    steps += " + the training product"
    if hp.get("backward_step"):
        steps += " + the backward step"
    return steps


def _flat_weights(root: Path | None, checkpoint: str):
    """All parameters of a committed checkpoint as one flat float64 tensor."""
    import torch

    from crossholder import models

    return torch.cat([p.detach().double().flatten() for p in models.load((paths.project_root() if root is None else Path(root)) / checkpoint).parameters()])


def fidelity_robustness_table(root: Path | None = None) -> str:
    """Does fidelity change the trained model? Every MNIST fast Cross-Hölder runner-up run: its seed,
    schedule, λ, lowest epoch fidelity, how far its weights lie from the registered run's and, where its
    ``paper-v1`` curve on the first 300 images exists (:func:`_curve_side`), its robustness paired
    (exact McNemar) against the registered run's; a run without one says whether it has a
    ``strongest`` curve instead (the seed study's). Closest first."""
    from crossholder.claims import paired_comparison

    reg = json.loads((_results(root) / "models.json").read_text())["mnist/cross_holder"]
    base = _examples_of(root, "mnist", "cross_holder", reg["run_id"])
    theta_reg = _flat_weights(root, reg["checkpoint"])
    curve_params = [json.loads(f.read_text()).get("params", {})
                    for f in (_results(root) / "mnist" / "robustness").glob("cross_holder-*.json")]
    with_strongest = {prm.get("model") for prm in curve_params if prm.get("protocol") == "strongest"}
    rows = []
    for side in sorted((_results(root) / "mnist" / "models").glob("cross_holder-*.json")):
        rec = json.loads(side.read_text())
        hp, rid = rec["hyperparameters"], rec["run_id"]
        log = _results(root) / "mnist" / "training" / f"cross_holder-{rid}.csv"
        if hp.get("classes") != "runner_up" or hp.get("mode") != "fast" or not log.exists():
            continue
        dist = float((_flat_weights(root, rec["checkpoint"]) - theta_reg).norm() / theta_reg.norm())
        curve_side = _curve_side(root, "mnist", "cross_holder", rid)
        acc = "no `paper-v1` curve" + (" (its `strongest` curve: notebook 08)" if rid in with_strongest else "")
        paired = ""
        if curve_side is not None:
            c = pd.read_csv(curve_side.with_suffix(".csv"))
            acc = _headline(c)
            ex = _examples_beside(curve_side, c)
            if rid == reg["run_id"]:
                paired = "(the registered run)"
            elif base is not None and ex[1] == base[1]:
                pairs = [paired_comparison(ex[0], base[0], ex[1].index(e)) for e in (5.0, 6.0)]
                paired = "; ".join(f"{r['only_a']}, {r['only_b']} ({_p(r['p_value'])})" for r in pairs)
        fid = float(pd.read_csv(log)["fidelity_median"].min())
        rows.append((dist, f"| {rid}{' (registered)' if rid == reg['run_id'] else ''}"
                           f"{', compiled' if hp.get('compiled') else ''} | {hp['seed']} | {hp['lam1']:g}, {hp['lam2']:g} | "
                           f"{_schedule(hp)} | {fid:.2f} | {dist:.3f} | {100 * rec['clean_test_accuracy']:.2f}% | "
                           f"{acc} | {paired} |"))
    lines = ["| run | seed | λ1, λ2 | power steps per visit | lowest epoch fidelity | ‖θ − θ_registered‖ / ‖θ_registered‖ | "
             "clean test accuracy | worst case (per example; `paper-v1`, first 300 images) at " + ", ".join(f"ε = {e:g}" for e in HEADLINE_EPS)
             + " | against the registered run at ε = 5; 6: images robust only for this run, only for the registered "
             "(exact McNemar p) |", "|---|---|---|---|---|---|---|---|---|"]
    return "\n".join(lines + [r for _, r in sorted(rows, key=lambda t: t[0])])


def fidelity_table(root: Path | None = None) -> str:
    """Fidelity against products per visit (the frontier) and epoch by epoch in the training runs."""
    f = _results(root) / "mnist" / "benchmarks" / "fidelity-frontier.csv"
    t = pd.read_csv(f)
    epochs = sorted(t["epoch"].unique())
    lines = ["| inner loop (next visit) | products per visit | " + " | ".join(f"after epoch {e}" for e in epochs) + " |",
             "|---|---|" + "---|" * len(epochs)]
    for strat, name in STRATEGY_NAMES.items():
        g = t[t["strategy"] == strat]
        for k in sorted(g["products_per_visit"].unique()):
            if strat == "warm_lanczos" and k < 3:   # a Krylov space of one product is the kept direction itself
                continue
            if strat == "warm_power_bf16" and k < 2:   # no power step: nothing is computed in bfloat16
                continue
            vals = [g[(g["products_per_visit"] == k) & (g["epoch"] == e)]["fidelity_median"] for e in epochs]
            lines.append(f"| {name} | {k} | " + " | ".join(f"{float(v.iloc[0]):.3f}" for v in vals) + " |")
    lines += ["", "| run | data set | λ1, λ2 | power steps per visit | fidelity after epoch 1, 2, … | mean epoch time | "
              "clean test accuracy |", "|---|---|---|---|---|---|---|"]
    for ds in NAMES:
        for log in sorted((_results(root) / ds / "training").glob("cross_holder-*.csv")):
            side = _results(root) / ds / "models" / (log.stem + ".json")
            lg = pd.read_csv(log)
            if not side.exists() or "fidelity_median" not in lg:
                continue
            rec = json.loads(side.read_text())
            hp = rec["hyperparameters"]
            steps = _schedule(hp)
            fid = ", ".join(f"{v:.2f}" for v in lg["fidelity_median"])
            lines.append(f"| {log.stem}{' (compiled)' if hp.get('compiled') else ''} | {NAMES[ds]} | "
                         f"{hp['lam1']:g}, {hp['lam2']:g} | {steps} | {fid} | {lg['epoch_time_s'].mean() / 60:.1f} min | "
                         f"{100 * rec['clean_test_accuracy']:.2f}% |")
    return "\n".join(lines)


def spectrum_table(root: Path | None = None) -> str:
    """Medians of the exact top of the input-Hessian spectrum, and ||H v_k|| against |v_k^T H v_k| (bench_spectrum)."""
    f = _results(root) / "mnist" / "hessian" / "spectrum-top.csv"
    t = pd.read_csv(f)
    steps = sorted(int(c.split("_")[1]) for c in t.columns if c.startswith("norm_") and c.endswith("_over_op_norm"))
    lines = ["| MNIST model | ‖H‖₂ | \\|λ₂\\| / \\|λ₁\\| | largest \\|λ\\| of the other sign / \\|λ₁\\| | "
             + " | ".join(f"‖Hv‖, \\|vᵀHv\\| after {k} power step{'s' if k > 1 else ''}" for k in steps) + " |",
             "|---|---|---|---|" + "---|" * len(steps)]
    for model, g in t.groupby("model", sort=True):
        med = g.median(numeric_only=True)
        cells = [f"{med[f'norm_{k}_over_op_norm']:.2f}, {med[f'rayleigh_{k}_over_op_norm']:.2f}" for k in steps]
        lines.append(f"| {model.split('/')[1]} ({g['checkpoint'].iloc[0].split('/')[-1].removesuffix('.pt')}) | "
                     f"{med['op_norm']:.3g} | {med['second_over_first']:.2f} | {med['opposite_sign_over_first']:.2f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def speed_table(root: Path | None = None) -> str:
    """Step costs of compiled fast Cross-Hölder: the latest run (``step-cost.json``) and the range over
    every recorded run (``step-cost-history.csv``), both written by ``benchmarks/bench_training.py``."""
    bench = _results(root) / "mnist" / "benchmarks"
    d = json.loads((bench / "step-cost.json").read_text())["summary"]
    hist = pd.read_csv(bench / "step-cost-history.csv") if (bench / "step-cost-history.csv").exists() else None

    def x(key: str) -> str:
        if key not in d:
            return "not measured"
        cell = f"{d[key]:.2f}×"
        if hist is not None and key in hist and hist[key].notna().sum() > 1:
            h = hist[key].dropna()
            cell += f" ({h.min():.2f}–{h.max():.2f}, {len(h)} runs)"
        return cell

    def verdict(k32: str, k16: str, target: float) -> str:
        def ok(k: str) -> str:
            if k not in d:
                return "never"
            vals = [d[k]] if hist is None or k not in hist else list(hist[k].dropna()) + [d[k]]
            return "always" if max(vals) <= target else ("sometimes" if min(vals) <= target else "never")
        if k32 not in d:
            return "not measured"
        a, b = ok(k32), (ok(k16) if k16 in d else "never")
        if a == "always":
            return f"≤ {target:g}×: met"
        if b == "always":
            return f"≤ {target:g}×: met in bfloat16 only"
        if "sometimes" in (a, b):
            return f"≤ {target:g}×: met in some runs only"
        return f"≤ {target:g}×: **not met**"

    ru, al = "cross_holder_fast_runner_up", "cross_holder_fast_all"
    lines = ["| compiled fast Cross-Hölder step | power steps in float32 | power steps in bfloat16 | target |",
             "|---|---|---|---|",
             f"| runner-up class, 1 power step (the default), × a plain step | {x(ru + '_vs_plain')} | "
             f"{x(ru + '_bf16_vs_plain')} | {verdict(ru + '_vs_plain', ru + '_bf16_vs_plain', 4)} |",
             f"| runner-up class, the training product alone, × a plain step | {x(ru + '_0_vs_plain')} | "
             "(no power step) | |",
             f"| runner-up class, 4 power steps (the warm-up epochs), × a plain step | {x(ru + '_4_vs_plain')} | "
             f"{x(ru + '_4_bf16_vs_plain')} | |",
             f"| all classes, 1 power step, × all-class Cross-Lipschitz | {x(al + '_vs_cross_lipschitz_all')} | "
             f"{x(al + '_bf16_vs_cross_lipschitz_all')} | "
             f"{verdict(al + '_vs_cross_lipschitz_all', al + '_bf16_vs_cross_lipschitz_all', 3.5)} |",
             f"| runner-up class, backward step + the training product (2 products per visit, as many as the "
             f"default), × a plain step | {x(ru + '_0_bstep_vs_plain')} | (no power step) | "
             f"{verdict(ru + '_0_bstep_vs_plain', '-', 4)} |",
             f"| runner-up class, 1 power step + the training product + backward step (3 products per visit), "
             f"× a plain step | {x(ru + '_bstep_vs_plain')} | | |",
             f"| all classes, backward step + the training product (2 products per visit), × all-class "
             f"Cross-Lipschitz | {x(al + '_0_bstep_vs_cross_lipschitz_all')} | (no power step) | "
             f"{verdict(al + '_0_bstep_vs_cross_lipschitz_all', '-', 3.5)} |",
             "", f"Latest run first, then the range over the runs in `step-cost-history.csv`. Faithful "
             f"Algorithm 1: {d['cross_holder_faithful_vs_plain']:.0f}× a plain step ({d['best_plain_step_ms']:.1f} ms, "
             f"{d['threads']} thread). Compiled Cross-Lipschitz: {x('cross_lipschitz_runner_up_vs_plain')} "
             f"(runner-up), {x('cross_lipschitz_all_vs_plain')} (all classes) a plain step; PGD adversarial "
             f"training (10 steps): {x('adversarial_10_steps_vs_plain')}."]
    return "\n".join(lines)


def step_size_table(root: Path | None = None) -> str:
    """PGD's robust accuracy against its step (``results/step-size.csv``, ``tools/step_size_study.py``)."""
    f = _results(root) / "step-size.csv"
    if not f.exists():
        return "(not measured yet)"
    df = pd.read_csv(f)
    fr = sorted(df["fraction"].unique())
    head = " | ".join(f"ε/{1 / x:g}" + (" (Madry: 2.5 ε / 50)" if abs(x - 0.05) < 1e-9 else "") for x in fr)
    lines = [f"| data set | defense | ε | n | {head} |", "|---|---|---|---|" + "---|" * len(fr)]
    for (ds, d, e, att), g in df.groupby(["dataset", "defense", "eps", "attack"], sort=False):
        if att != "worst-per-example":
            continue
        acc = g.set_index("fraction")["accuracy"]
        best = acc.min()
        cells = " | ".join((f"**{100 * acc[x]:.1f}**" if acc[x] == best else f"{100 * acc[x]:.1f}") for x in fr)
        lines.append(f"| {NAMES[ds]} | {DEFENSE_NAMES[d]} | {e:g} | {int(g['n'].iloc[0])} | {cells} |")
    return "\n".join(lines)


TABLES = {"step_size": step_size_table, "speed": speed_table, "all_classes": all_classes_table, "all_classes_paired": all_classes_paired_table, "fidelity": fidelity_table, "fidelity_robustness": fidelity_robustness_table, "spectrum": spectrum_table, "selection": selection_table, "figure3": figure3_table, "autoattack": autoattack_table, "agreement": agreement_table, "models": models_table, "robustness": robustness_table, "claims": claims_table,
          "verdicts": verdicts_table, "paired": paired_table, "paired_strongest": paired_strongest_table,
          "masking": masking_table, "seed_curves": seed_curves_table, "claims_seeds": claims_seeds_table,
          "paired_seeds": paired_seeds_table, "seed_checks": seed_checks_table}


def render(readme: str, root: Path | None = None) -> str:
    """``readme`` with every marked section replaced by its freshly generated table.

    Raises:
        ValueError: a marker names no table of :data:`TABLES`.
    """
    unknown = sorted(set(re.findall(r"<!-- table:(\w+) -->", readme)) - set(TABLES))
    if unknown:
        raise ValueError(f"unknown table marker(s) {unknown}; known: {sorted(TABLES)}")
    for name, fn in TABLES.items():
        pat = re.compile(rf"(<!-- table:{name} -->\n)(?:.*?\n)?(<!-- /table:{name} -->)", re.S)
        if not pat.search(readme):
            continue
        table = fn(root)
        readme = pat.sub(lambda m: m.group(1) + table + "\n" + m.group(2), readme)
    return readme


def main(argv: list[str]) -> int:
    path = ROOT / "README.md"
    old = path.read_text()
    new = render(old, ROOT)     # the README shows this checkout's results/, whatever CROSSHOLDER_RESULTS says
    if "--check" in argv:
        if new != old:
            print("README.md's tables differ from results/: run .venv/bin/python -m crossholder.reports")
            return 1
        return 0
    path.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
