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
# # 08 · Three training seeds: do the verdicts hold beyond one trained model?
#
# An analysis notebook: it computes nothing and only shows tables generated from the committed files
# in `results/` (`crossholder.reports`). The paper trains each model once; a verdict that flips with
# the training seed is not a property of the method. `make seeds` trains every registered
# configuration again with seeds 1 and 2 (`python -m crossholder.jobs seeds`, Ray tasks, resumable),
# evaluates each with the `strongest` protocol on the first 500 test images (seed 0, the registered
# models, contributes the first 500 of its 1,000), then writes the seed study
# (`python -m crossholder.seeds`): `results/<dataset>/seeds.csv`, `claims-seeds.csv`,
# `paired-seeds.csv` and `figures/seeds_<dataset>.png`. Seed s is both the training seed and the
# attacks' seed.

# %% tags=["parameters"]
results_root: str = ""  # project root whose results/ the tables read ("": this repository)

# %%
from crossholder import notebooks

notebooks.check_parameters(globals())  # an unknown or mistyped parameter fails here, before any work

# %%
from pathlib import Path

from IPython.display import Markdown, display

from crossholder import paths, reports

root = Path(results_root) if results_root else paths.project_root()

# %% [markdown]
# ## Robust accuracy per seed
#
# `strongest` robust accuracy (%) of each defense and training seed, ε in the paper's units; the
# row `mean (range)` spans the seeds found so far.

# %%
# NBVAL_CHECK_OUTPUT
display(Markdown(reports.seed_curves_table(root)))

# %% [markdown]
# Each defense's `strongest` curve per seed, the band between the seeds (drawn by
# `python -m crossholder.seeds` from `seeds.csv`; absent until `make seeds` has run):
#
# ![seeds, MNIST](../figures/seeds_mnist.png)
# ![seeds, Fashion-MNIST](../figures/seeds_fashion_mnist.png)

# %% [markdown]
# ## The paper's claims, per seed
#
# Each claim judged on each seed's curves, as in notebook 04 (thresholds in
# `crossholder.evaluation.CLAIMS`): in how many seeds it holds on the point estimates; `*` marks a
# seed where the verdict also holds with the 95% Wilson intervals. The two bars differ, as the claims
# do: "A above B" is supported beyond the intervals when they separate at half of its ε range or
# more, and refuted beyond them when they separate the other way at any one ε (`evaluation.claims_table`).

# %%
# NBVAL_CHECK_OUTPUT
display(Markdown(reports.claims_seeds_table(root)))

# %% [markdown]
# ## Cross-Hölder against the others, pooled over seeds
#
# The exact McNemar test with every seed's discordant images added up (Δ in points over all
# image-seed pairs). Its null: on these fixed images, either defense is equally likely to be the
# robust one. The same images recur in every seed, so the pooled count overstates the sample size
# for images in general, and one seed with a large effect can carry the pooled p-value: the column
# `p < 0.05 alone` counts the seeds whose own test is significant in the pooled direction, and the
# per-seed counts show whether the seeds agree. No correction for the 12 tests per data set.

# %%
# NBVAL_CHECK_OUTPUT
display(Markdown(reports.paired_seeds_table(root)))
