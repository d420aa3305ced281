# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python (crossholder)
#     language: python
#     name: crossholder
# ---

# %% [markdown]
# # 10 · Theorem 2 measured: the paper's robustness bound per image, against the attacks
#
# The paper's reason to regularize curvature is its Theorem 2 (Corollary 1 for K classes): with
# t the predicted class, f^(j) = f_t − f_j and K_R the largest ‖H_{f^(j)}‖ within distance R of x,
# no perturbation shorter than
#
# max_{R>0} min{ R, min_{j≠t} f^(j)(x) / (‖∇f^(j)(x)‖ + (R/2) K_R) }
#
# changes the prediction. The paper never evaluates it. `crossholder.bounds` computes it three ways
# (`theorem2_radius`), each per test image, in pixels of [0, 1] images (L2):
#
# * **global** — a **certificate**: K is `curvature_bounds`, a sound upper bound on ‖H‖ over *all*
#   inputs (Singla & Feizi 2020, Theorem 4: layer Jacobian bounds times sup |σ''|, with exact float64
#   spectral norms of every layer), margins and gradients in float64.
# * **ball** — an **estimate**: K_R by projected ascent on the curvature within the R-ball (third-order
#   autograd). A lower estimate of K_R, so an *optimistic* radius.
# * **point** — an **estimate**: ‖H(x)‖ for every R, the naive local quadratic model; at least as
#   optimistic as the ball radius.
#
# Beside them, `witness_norm`: the smallest verified adversarial perturbation any attack of the
# `strongest` protocol found on the same image (notebook 04). A certified radius above a witness
# would be a bug (`bounds_tables.evaluate_bounds` raises); an estimate above it is counted: it shows
# where the estimate is wrong. `python -m crossholder.bounds_tables --dataset mnist --defense cross_holder`
# computes one model's table (first 1,000 test images, resumable); this notebook only reads them.

# %% tags=["parameters"]
results_root: "Optional[str]" = None  # project root whose results/ the tables read (None: results/ of this repository, or CROSSHOLDER_RESULTS)

# %%
from crossholder import notebooks

notebooks.check_parameters(globals())  # an unknown or mistyped parameter fails here, before any work

# %%
from pathlib import Path

import numpy as np
import pandas as pd

from crossholder import bounds_tables, data, plotting

root = None if results_root is None else Path(results_root)
pd.set_option("display.width", 200)

# %% [markdown]
# ## Per model: the global bound, the median radii and the witnesses
#
# Medians over the correctly classified images among the first 1,000 test images (pixels).
# `K_global`: the largest entry of `curvature_bounds` (logits per pixel²); `K_global / ‖H(x)‖`: per
# image, the global bound of the runner-up pair over that pair's Hessian norm at x, the median (the
# paper's appendix C.1 says the global bound "is not tight for most of the input examples": this is
# how far). The last three columns count images whose radius exceeds the witness norm (the
# certificate's must be 0).

# %%
# NBVAL_CHECK_OUTPUT
summary = bounds_tables.summary_table(root)
cols = ["dataset", "defense", "done", "correct", "K_global", "median_radius_global", "median_radius_ball",
        "median_radius_point", "median_witness_norm", "median_K_global_over_hessian_norm",
        "radius_global_above_witness", "radius_ball_above_witness", "radius_point_above_witness"]
print(summary.reindex(columns=cols).to_string(index=False, float_format=lambda v: f"{v:.4g}"))

# %% [markdown]
# ## Certified, estimated and attacked accuracy
#
# Per data set and defense: the accuracy each radius certifies or estimates (an image counts at ε if
# it is classified correctly and its radius exceeds ε) beside the `strongest` protocol's robust
# accuracy (no witness of norm ≤ ε; an upper bound on the true robust accuracy). Between the
# certified curve and the attacked one lies what neither theory nor attack decides; the estimates
# are not guarantees. Right: the radii and witness norms themselves.

# %%
eps_pixel = np.linspace(0.0, 2.5, 51)
for ds, label in (("mnist", "MNIST"), ("fashion_mnist", "Fashion-MNIST")):
    tables = {d: got[0] for d in ("none", "cross_lipschitz", "cross_holder", "adversarial")
              if (got := bounds_tables.load(ds, d, root)) is not None}
    if not tables:
        print(f"{label}: no bounds table yet")
        continue
    curves = {d: bounds_tables.accuracy_curves(t, eps_pixel) for d, t in tables.items()}
    fig = plotting.theorem2_figure(curves, tables, dataset_label=label,
                                   name=f"theorem2_{ds}" if root is None else None)

# %% [markdown]
# ## Does Cross-Hölder raise the Theorem 2 radius?
#
# Per image, on the images both models classify correctly: Cross-Hölder's radius against
# Cross-Lipschitz's and adversarial training's (how many images have the larger radius under each,
# the median ratio, and the exact two-sided sign test).

# %%
# NBVAL_CHECK_OUTPUT
rows = []
for ds in ("mnist", "fashion_mnist"):
    ch = bounds_tables.load(ds, "cross_holder", root)
    for other in ("cross_lipschitz", "adversarial"):
        ot = bounds_tables.load(ds, other, root)
        if ch is None or ot is None:
            rows.append({"dataset": ds, "vs": other, "column": "(not computed yet)"})
            continue
        for col in bounds_tables.RADII:
            rows.append({"dataset": ds, "vs": other, **bounds_tables.paired_radii(ch[0], ot[0], col)})
print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4g}"))

# %% [markdown]
# ## What the numbers say
#
# Read the tables above; the findings below are computed from them, not typed in.

# %%
# NBVAL_CHECK_OUTPUT
done = summary[summary["done"]]
if len(done):
    for _, r in done.iterrows():
        print(f"{r['dataset']}/{r['defense']}: certified median {r['median_radius_global']:.2g} px, ball estimate "
              f"{r['median_radius_ball']:.3g} px, point estimate {r['median_radius_point']:.3g} px, smallest witness "
              f"{r['median_witness_norm']:.3g} px; the global bound is {r['median_K_global_over_hessian_norm']:.3g}x "
              f"the curvature at x; estimates above the witness: ball {r['radius_ball_above_witness']}, "
              f"point {r['radius_point_above_witness']} of {r['correct']} images")
print(f"{len(done)} of {len(summary)} models have their bounds table; missing: "
      + (", ".join(f"{r['dataset']}/{r['defense']}" for _, r in summary[~summary['done']].iterrows()) or "none"))
