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
# # 09 · Does the exact operator norm buy robustness? Cross-Hölder against |Hg| and CURE
#
# The paper argues (appendix C.1, Figure 3) that |Hg|, the norm of the Hessian along the gradient
# that CURE (Moosavi-Dezfooli et al., CVPR 2019) regularizes, is not a tight lower bound on the
# Hessian's operator norm |Hv*|, "therefore ... it is better to use the true operator norm". It never
# trains with |Hg|. Two ablations test the claim:
#
# * **`cross_holder_hg`**: eq. (5) with v_j = ĝ_j, the unit gradient of margin j, in place of v*_j:
#   the same code path and the same exact Hessian-vector product; only the direction differs. Its λ2
#   is tuned at Cross-Hölder's λ1 (1×, 3×, 9× Cross-Hölder's λ2).
# * **`cure`**: CURE's regularizer ‖∇ℓ(x + h z) − ∇ℓ(x)‖² on the loss, z the unit gradient (the L2
#   steepest direction, where CURE's L∞ form uses the gradient's sign), h in pixel L2 units ramped
#   over the first 3 epochs (`crossholder.regularizers.cure_loss`); grid γ ∈ {0.25, 1, 4} × h ∈ {0.5, 1.5} px.
#
# Both are selected by the paper's rule on the validation split (notebook 03's machinery), and the
# registered model must also meet the 88% / 99% clean-accuracy criterion on the test set. This
# notebook reads the results files only. **Where the study stands**: the grids and the curvature
# ratios below are in; the `strongest` curves of the new models, their AutoAttack agreement and the
# two claims are still being computed (`python -m crossholder.jobs evaluate --dataset mnist
# --defense cross_holder_hg ...`), and their section says so until they land.

# %% tags=["parameters"]
results_root: "Optional[str]" = None  # project root whose results/ the tables read (None: results/ of this repository, or CROSSHOLDER_RESULTS)

# %%
from crossholder import notebooks

notebooks.check_parameters(globals())  # an unknown or mistyped parameter fails here, before any work

# %%
from pathlib import Path

import pandas as pd

from crossholder import hessian_tables, plotting, selection

root = None if results_root is None else Path(results_root)
pd.set_option("display.width", 200)

# %% [markdown]
# ## The grids (validation split, 500 images, PGD at Madry et al.'s step)
#
# `score` = worst-case adversarial accuracy at ε = 3 plus at ε = 4 (paper units), the paper's
# selection rule; `winner`: the best admissible point on the validation split; `selected`: the best
# point admissible on both splits (what `results/models.json` registers). These are selection
# scores, not the verdict: that is the `strongest` evaluation on 1,000 test images below.

# %%
# NBVAL_CHECK_OUTPUT
cols = ["defense", "lam1", "lam2", "gamma", "h", "run_id", "clean_val_acc", "clean_test_acc", "worst_min_3",
        "worst_min_4", "score", "admissible", "admissible_test", "winner", "selected"]
for ds in ("mnist", "fashion_mnist"):
    table, missing = selection.read_ablation_table(ds, root)
    if table is None:
        print(f"{ds}: no ablation grid written yet")
        continue
    print(f"{ds}:")
    print(table.reindex(columns=cols).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"points still to score: {missing or 'none'}\n")

# %% [markdown]
# ## Where the curvature lies: |Hv*| / |Hg| per trained model
#
# Per image, the Hessian's operator norm (Lanczos, 20 products) over its norm along the gradient,
# runner-up margin, first 1,000 test images. A ratio of 1 means the gradient is the top-curvature
# direction, so |Hg| would be the operator norm; a large ratio means curvature the gradient
# direction does not see. Figure 3 of the paper shows the gap on one undefended model; here it is
# for every registered model, including the one trained to suppress |Hg| itself (boxes: quartiles;
# whiskers: 5th and 95th percentiles). The tables come from `python -m crossholder.hessian_tables`
# (cached per model: `results/<dataset>/hessian/norms-<defense>-<id>.csv`).

# %%
# NBVAL_CHECK_OUTPUT
norms = hessian_tables.load_defense_norms(root)
print(hessian_tables.ratio_summary(norms).to_string(index=False, float_format=lambda v: f"{v:.4g}"))

# %%
fig = plotting.ratio_figure(norms, name="curvature_ratio" if root is None else None)

# %% [markdown]
# ## The verdict under `strongest` (pending)
#
# The curves of all six defenses per data set, the two claims ("the exact operator norm regularizes
# better than |Hg|": Cross-Hölder above `cross_holder_hg` from ε = 3 on; "Cross-Hölder above CURE",
# the same range) and their paired exact McNemar tests at ε = 4, 5, 6 will be read here from
# `results/<dataset>/robustness/` once the `strongest` evaluations of the new models have finished.
