"""The paper's figures, made from results files only (PNG and PDF in ``figures/``).

Every function takes a tidy DataFrame read from ``results/`` and writes
``figures/<name>.png`` and ``figures/<name>.pdf``; it returns the matplotlib figure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib


import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from . import paths, store  # noqa: E402

__all__ = ["save", "fig3a", "fig3b", "hessian_convergence", "direction_images", "robustness_panel", "strongest_figure", "seeds_figure",
           "theorem2_figure", "ratio_figure", "ABLATION_LABELS",
           "DEFENSE_LABELS", "DEFENSE_COLORS"]

DEFENSE_LABELS = {"none": "Undefended", "cross_lipschitz": "Cross-Lipschitz", "cross_holder": "Cross-Hölder",
                  "adversarial": "PGD adversarial training"}
DEFENSE_COLORS = {"none": "0.45", "cross_lipschitz": "tab:blue", "cross_holder": "tab:red",
                  "adversarial": "tab:green"}
plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 150, "axes.grid": True, "grid.alpha": 0.3,
                     "svg.hashsalt": "crossholder", "pdf.fonttype": 42})


def save(fig, name: str) -> list[Path]:
    """Write ``figures/<name>.png`` and ``.pdf`` (no timestamps in the PDF metadata). ``name`` may hold
    folders (``variants/smoke/fig1_mnist_worst_case``, :func:`crossholder.store.figure_name`)."""
    out = paths.figures_dir()
    files = [out / f"{name}.png", out / f"{name}.pdf"]
    files[0].parent.mkdir(parents=True, exist_ok=True)
    for f, meta in zip(files, ({"Software": None}, {"CreationDate": None, "Producer": None, "Creator": None})):
        store.atomic_write(f, lambda fh, f=f, meta=meta: fig.savefig(fh, format=f.suffix[1:], bbox_inches="tight",
                                                                     metadata=meta), binary=True)
    return files


def _bins(values: Sequence[np.ndarray], n: int = 60) -> np.ndarray:
    allv = np.concatenate([np.asarray(v) for v in values])
    hi = np.quantile(allv, 0.995)
    lo = min(0.0, float(allv.min()))
    return np.linspace(lo, hi, n + 1)


def fig3a(df: pd.DataFrame, name: str = "fig3a_hessian_norm_histograms"):
    """Figure 3a: overlaid histograms of |Hg| and |Hv*| (per test example)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    bins = _bins([df["hg"], df["hv"]])
    ax.hist(df["hg"], bins=bins, alpha=0.55, label=r"$|Hg|$ (Hessian times unit gradient)", color="tab:blue")
    ax.hist(df["hv"], bins=bins, alpha=0.55, label=r"$|Hv^*|$ (operator norm estimate)", color="tab:red")
    ax.set_xlabel(r"norm (logit / pixel$^2$, [0, 1] images; 0.5% largest not shown)")
    ax.set_ylabel("test examples")
    ax.set_title(f"Undefended CNN, MNIST test set (n = {len(df):,})")
    ax.legend()
    save(fig, name)
    return fig


def fig3b(df: pd.DataFrame, name: str = "fig3b_hessian_norm_difference"):
    """Figure 3b: histogram of |Hv*| - |Hg|."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.hist(df["diff"], bins=_bins([df["diff"]]), color="tab:purple", alpha=0.8)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel(r"$|Hv^*| - |Hg|$ (logit / pixel$^2$; 0.5% largest not shown)")
    ax.set_ylabel("test examples")
    ax.set_title("How much |Hg| underestimates the operator norm")
    save(fig, name)
    return fig


def hessian_convergence(conv: pd.DataFrame, name: str = "extra_hessian_norm_convergence"):
    """Median (and 90% quantile) relative error against the number of Hessian-vector products, per method."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    colors = {"ascent": "tab:orange", "power": "tab:blue", "lanczos": "tab:green"}
    for method, g in conv.groupby("method"):
        err = g.assign(rel_err=g["rel_err"].clip(lower=1e-16)).groupby("products")["rel_err"]
        med, q90 = err.median(), err.quantile(0.9)
        ax.plot(med.index, med.values, "o-", color=colors.get(method), label=f"{method} (median)")
        ax.plot(q90.index, q90.values, ":", color=colors.get(method), label=f"{method} (90% quantile)")
    ax.set_yscale("log")
    ax.set_xlabel("Hessian-vector products")
    ax.set_ylabel("relative error vs exact norm")
    ax.set_title(f"Convergence to the exact spectral norm ({conv['example'].nunique()} examples, float64)")
    ax.legend(fontsize=7, ncol=2)
    save(fig, name)
    return fig


def direction_images(images: pd.DataFrame, name: str = "extra_top_curvature_directions"):
    """Digits beside their top-curvature direction v*: ``images`` has ``example``, ``kind`` ('x' or 'v'), ``pixel``, ``value``."""
    examples = list(dict.fromkeys(images["example"]))
    fig, axes = plt.subplots(2, len(examples), figsize=(1.4 * len(examples), 3.0))
    axes = np.atleast_2d(axes).reshape(2, len(examples))
    for k, ex in enumerate(examples):
        for row, kind in enumerate(("x", "v")):
            sub = images[(images["example"] == ex) & (images["kind"] == kind)].sort_values("pixel")
            img = sub["value"].to_numpy().reshape(28, 28)
            ax = axes[row, k]
            if kind == "x":
                ax.imshow(img, cmap="gray_r", vmin=0, vmax=1)
            else:
                lim = np.abs(img).max()
                ax.imshow(img, cmap="RdBu_r", vmin=-lim, vmax=lim)
            ax.set_xticks([]), ax.set_yticks([])
            ax.grid(False)
        axes[0, k].set_title(f"#{ex}", fontsize=8)
    axes[0, 0].set_ylabel("input")
    axes[1, 0].set_ylabel(r"$v^*$")
    fig.tight_layout()
    save(fig, name)
    return fig


def robustness_panel(curves: pd.DataFrame, attack: str, *, dataset: str, std: float, name: str, title: str,
                     ax=None, overlay: str | None = None, overlay_label: str = ""):
    """Adversarial accuracy against ε (paper units) for one attack, one line per defense, with 95% bands.

    ``overlay``: a second attack drawn dashed per defense, without band (e.g. APGD-CE over PGD-CE);
    ``overlay_label`` names it in the legend. A second x-axis on top shows ε in pixel units
    (``ε_pixel = ε · std``).
    """
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
    else:
        fig = ax.figure
    sub = curves[curves["attack"] == attack]
    over = curves[curves["attack"] == overlay] if overlay else sub.iloc[:0]
    for defense in [d for d in DEFENSE_LABELS if d in set(sub["defense"])]:
        g = sub[sub["defense"] == defense].sort_values("eps")
        c = DEFENSE_COLORS[defense]
        ax.plot(g["eps"], g["accuracy"], "o-", ms=3, color=c, label=DEFENSE_LABELS[defense])
        ax.fill_between(g["eps"], g["ci_low"], g["ci_high"], color=c, alpha=0.18, lw=0)
        o = over[over["defense"] == defense].sort_values("eps")
        if len(o):
            ax.plot(o["eps"], o["accuracy"], "--", lw=1.2, color=c)
    if len(over):
        ax.plot([], [], "--", color="0.3", lw=1.2, label=overlay_label or overlay)
    _accuracy_axes(ax, std, title)
    ax.legend(fontsize=7, loc="lower left")
    if own:
        save(fig, name)
    return fig


def _accuracy_axes(ax, std: float, title: str) -> None:
    """Accuracy against ε in paper units, with a second x-axis on top in pixel units (``ε · std``)."""
    ax.set_xlabel(r"$\varepsilon$ (paper units: L2 on standardized inputs)")
    ax.set_ylabel("adversarial accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=10)
    top = ax.secondary_xaxis("top", functions=(lambda e: e * std, lambda p: p / std))
    top.set_xlabel(r"$\varepsilon$ (pixels of [0, 1] images)", fontsize=8)


def learning_curves(log: pd.DataFrame, *, title: str, name: str):
    """Loss terms and clean accuracies per epoch from a training log CSV."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2))
    for col, label in (("loss", "total loss"), ("ce", "cross-entropy"), ("regularizer", "λ1 · regularizer")):
        if col in log and log[col].abs().sum() > 0:
            a1.plot(log["epoch"], log[col], "o-", ms=3, label=label)
    a1.set_xlabel("epoch")
    a1.set_yscale("log")
    a1.legend(fontsize=8)
    a1.set_title("training loss (epoch mean)", fontsize=10)
    a2.plot(log["epoch"], log["train_acc"], "o-", ms=3, label="train (clean)")
    a2.plot(log["epoch"], log["val_acc"], "s-", ms=3, label="validation (clean)")
    a2.set_xlabel("epoch")
    a2.set_ylabel("accuracy")
    a2.legend(fontsize=8)
    a2.set_title("clean accuracy", fontsize=10)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    save(fig, name)
    return fig


def worst_case_figure(curves: pd.DataFrame, *, dataset: str, std: float, name: str, title: str):
    """Two panels: the paper's worst case (``worst-min``) and the per-example worst case."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.9), sharey=True)
    robustness_panel(curves, "worst-min", dataset=dataset, std=std, name=name, ax=axes[0],
                     title="paper's worst case: min of the two accuracies")
    robustness_panel(curves, "worst-per-example", dataset=dataset, std=std, name=name, ax=axes[1],
                     title="per-example worst case: robust to both attacks")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    save(fig, name)
    return fig


def strongest_figure(curves: pd.DataFrame, *, dataset: str, std: float, name: str, title: str):
    """Figures 1, 2, 4c, 5c: per defense the ``strongest`` curve (solid, 95% Wilson band) and the paper's
    worst case ``worst-min`` (dashed): the gap between them is robustness the paper's attack missed.

    Falls back to :func:`worst_case_figure` for curves without ``strongest`` rows (legacy protocol).
    """
    if "strongest" not in set(curves["attack"]):
        return worst_case_figure(curves, dataset=dataset, std=std, name=name, title=title)
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    strong, paper = curves[curves["attack"] == "strongest"], curves[curves["attack"] == "worst-min"]
    handles = []
    for defense in [d for d in DEFENSE_LABELS if d in set(strong["defense"])]:
        c = DEFENSE_COLORS[defense]
        g = strong[strong["defense"] == defense].sort_values("eps")
        ax.plot(g["eps"], g["accuracy"], "o-", ms=3, color=c)
        ax.fill_between(g["eps"], g["ci_low"], g["ci_high"], color=c, alpha=0.18, lw=0)
        p = paper[paper["defense"] == defense].sort_values("eps")
        ax.plot(p["eps"], p["accuracy"], "--", lw=1.2, color=c)
        handles.append(Line2D([], [], color=c, lw=6, alpha=0.6, label=DEFENSE_LABELS[defense]))
    handles += [Line2D([], [], color="0.2", marker="o", ms=3, label="strongest: no attack we run finds a witness"),
                Line2D([], [], color="0.2", ls="--", label="paper's worst case: min(PGD-CE, PGD-CW)")]
    ax.legend(handles=handles, fontsize=7, loc="lower left")
    _accuracy_axes(ax, std, title)
    fig.tight_layout()
    save(fig, name)
    return fig


def theorem2_figure(curves: dict[str, pd.DataFrame], radii: dict[str, pd.DataFrame], *, dataset_label: str,
                    name: str | None):
    """Theorem 2 on one data set, per defense: left, the accuracy each radius certifies (global, solid)
    or estimates (ball, dashed; point, dotted) beside the ``strongest`` protocol's robust accuracy
    (thick, light) against ε in pixels (:func:`crossholder.bounds_tables.accuracy_curves`); right,
    the distributions of the three radii and of the witness norm on the correctly classified images
    (log scale; ``inf`` witnesses left out).

    ``curves`` and ``radii``: defense -> the curves frame and the bounds table. ``name``: the figure's
    file name under ``figures/`` (``None``: drawn, not saved).
    """
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"radius_global": "-", "radius_ball": "--", "radius_point": ":"}
    for defense, cv in curves.items():
        c = DEFENSE_COLORS.get(defense, "k")
        s = cv[cv["curve"] == "strongest"]
        ax.plot(s["eps_pixel"], s["accuracy"], color=c, lw=5, alpha=0.25)
        for col, ls in styles.items():
            g = cv[cv["curve"] == col]
            ax.plot(g["eps_pixel"], g["accuracy"], ls, color=c, lw=1.4)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=DEFENSE_COLORS.get(d, "k"), lw=6, alpha=0.6, label=DEFENSE_LABELS.get(d, d))
               for d in curves]
    handles += [Line2D([], [], color="0.3", lw=5, alpha=0.25, label="strongest attack (upper bound on robustness)"),
                Line2D([], [], color="0.3", ls="-", label="Theorem 2, global K: certified"),
                Line2D([], [], color="0.3", ls="--", label="Theorem 2, K over the R-ball: estimate"),
                Line2D([], [], color="0.3", ls=":", label="Theorem 2, K at x: estimate")]
    ax.legend(handles=handles, fontsize=7, loc="upper right")
    ax.set_xlabel(r"$\varepsilon$ (pixels of [0, 1] images, L2)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{dataset_label}: certified, estimated and attacked accuracy", fontsize=10)
    pos, labels, data = [], [], []
    for k, (defense, t) in enumerate(radii.items()):
        ok = t[t["correct"].astype(bool)]
        for m, col in enumerate(list(styles) + ["witness_norm"]):
            v = ok[col].to_numpy(dtype=float)
            v = v[np.isfinite(v) & (v > 0)]
            data.append(v if len(v) else np.array([np.nan]))
            pos.append(k * 5 + m)
        labels.append((k * 5 + 1.5, DEFENSE_LABELS.get(defense, defense)))
    parts = bx.boxplot(data, positions=pos, widths=0.7, showfliers=False, patch_artist=True)
    shades = ["0.25", "0.5", "0.75", "gold"]
    for i, box in enumerate(parts["boxes"]):
        box.set_facecolor(shades[i % 4])
    bx.set_yscale("log")
    bx.set_xticks([p for p, _ in labels], [lab for _, lab in labels], fontsize=7, rotation=15)
    bx.set_ylabel("pixels (L2)")
    bx.legend([Line2D([], [], color=c, lw=6) for c in shades],
              ["global radius (certified)", "ball radius (estimate)", "point radius (estimate)",
               "smallest witness (attacks)"], fontsize=7, loc="lower right")
    bx.set_title("radii and witness norms, correctly classified images", fontsize=10)
    fig.tight_layout()
    if name:
        save(fig, name)
    return fig


ABLATION_LABELS = {**DEFENSE_LABELS, "cross_holder_hg": "Cross-Hölder with |Hg|", "cure": "CURE"}


def ratio_figure(tables: dict[tuple[str, str], pd.DataFrame], *, name: str | None):
    """|Hv*| / |Hg| per image (log scale), one box per registered model, one panel per data set
    (:func:`crossholder.hessian_tables.load_defense_norms`): how much of each model's curvature lies off
    its gradient direction. ``name``: file name under ``figures/`` (``None``: not saved)."""
    datasets = [ds for ds in ("mnist", "fashion_mnist") if any(k[0] == ds for k in tables)]
    fig, axes = plt.subplots(1, max(len(datasets), 1), figsize=(5.5 * max(len(datasets), 1), 3.8), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        keys = [k for k in tables if k[0] == ds]
        order = [d for d in ABLATION_LABELS if (ds, d) in keys]
        data = [(tables[(ds, d)]["hv"] / tables[(ds, d)]["hg"]).to_numpy() for d in order]
        ax.boxplot(data, showfliers=False, whis=(5, 95))
        ax.set_xticks(range(1, len(order) + 1), [ABLATION_LABELS[d] for d in order], fontsize=7, rotation=20)
        ax.set_yscale("log")
        ax.axhline(1.0, color="0.3", lw=0.8)
        ax.set_ylabel("|Hv*| / |Hg|  (1: the gradient is the top direction)")
        ax.set_title({"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}[ds] + ": first 1,000 test images",
                     fontsize=10)
    fig.tight_layout()
    if name:
        save(fig, name)
    return fig


SEED_STYLES = ("-", "--", ":", "-.")


def seeds_figure(table: pd.DataFrame, *, std: float, name: str, title: str, attack: str = "strongest"):
    """The seed study (:func:`crossholder.seeds.seeds_table`): per defense, the ``attack`` curve of each
    training seed (one line style per seed) and the band between the seeds' lowest and highest
    accuracy at each ε. ε in paper units (pixels on the top axis)."""
    from matplotlib.lines import Line2D

    sub = table[table["attack"] == attack]
    if sub.empty:
        raise ValueError(f"attack={attack!r} has no rows in the seeds table (attacks: {sorted(set(table['attack']))})")
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    seed_list = sorted(set(sub["seed"]))
    handles = []
    for defense in [d for d in DEFENSE_LABELS if d in set(sub["defense"])]:
        c = DEFENSE_COLORS[defense]
        g = sub[sub["defense"] == defense]
        span = g.groupby("eps")["accuracy"].agg(["min", "max"]).sort_index()
        ax.fill_between(span.index, span["min"], span["max"], color=c, alpha=0.18, lw=0)
        for i, s in enumerate(seed_list):
            gs = g[g["seed"] == s].sort_values("eps")
            if len(gs):
                ax.plot(gs["eps"], gs["accuracy"], SEED_STYLES[i % len(SEED_STYLES)], lw=1.2, color=c)
        handles.append(Line2D([], [], color=c, lw=6, alpha=0.6,
                              label=f"{DEFENSE_LABELS[defense]} ({g['seed'].nunique()} seeds)"))
    handles += [Line2D([], [], color="0.2", ls=SEED_STYLES[i % len(SEED_STYLES)], label=f"seed {s}")
                for i, s in enumerate(seed_list)]
    ax.legend(handles=handles, fontsize=7, loc="lower left")
    _accuracy_axes(ax, std, title)
    fig.tight_layout()
    save(fig, name)
    return fig
