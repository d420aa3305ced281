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
results_root: "Optional[str]" = None  # project root whose results/ the tables read (None: results/ of this repository, or CROSSHOLDER_RESULTS)

# %%
from crossholder import notebooks

notebooks.check_parameters(globals())  # an unknown or mistyped parameter fails here, before any work

# %%
from pathlib import Path

from IPython.display import Markdown, display

from crossholder import paths, reports

root = None if results_root is None else Path(results_root)

# %% [markdown]
# ## Robust accuracy per seed
#
# `strongest` robust accuracy (%) of each defense and training seed, ε in the paper's units; the
# row `mean (range)` spans the seeds found so far.

# %%
# NBVAL_CHECK_OUTPUT
display(Markdown(reports.seed_curves_table(root)))

# %% [markdown]
# **Where the study stands** (`results/<dataset>/seeds.json` lists the models, and any still
# missing): both data sets have all three seeds of all four models.
#
# On MNIST the three seeds keep the order of the four defenses at every ε ≥ 4: adversarial training,
# Cross-Hölder, Cross-Lipschitz, none (half-integer ε included, `seeds.csv`). At ε = 3–6 they differ
# by at most 11.0 points for the undefended model (ε = 3), 10.6 for Cross-Lipschitz (ε = 4.5), 12.2
# for Cross-Hölder (ε = 5) and 1.6 for adversarial training (ε = 4.5). Seeds 0 and 1 alone differed by
# at most 2.8, 5.0, 5.4 and 1.6: two seeds understated the spread, and three may too (read these
# ranges as lower bounds on the variation with the seed, training and attacks together). Seed 2 is the
# one apart: its undefended model is the most robust of the three (up to 8.2 points above the better
# of seeds 0 and 1, at ε = 3 and 3.5), its Cross-Lipschitz and Cross-Hölder models the least robust
# from ε = 4 on (up to 6.4 points below the worse of the two at ε = 4.5, and 6.8 at ε = 5). Within
# seed 2, Cross-Hölder is still 17.2 points above Cross-Lipschitz at ε = 5 (311 against 225 of 500
# images; 18.0 and 21.4 in seeds 0 and 1).
#
# On Fashion-MNIST, at ε = 3–6, Cross-Hölder's seeds agree more closely than on MNIST (at most 3.0
# points apart, at ε = 4 and 5.5; 12.2 on MNIST), Cross-Lipschitz's about as closely (8.4 at ε = 3.5;
# 10.6) and adversarial training's less so (4.8 at ε = 4; 1.6); the undefended model is at 0–1.2% from
# ε = 3 on. Cross-Hölder leads in every seed: it is above both Cross-Lipschitz and adversarial
# training at every ε ≥ 1.5 in all three seeds, by 13.8–17.8 points over Cross-Lipschitz at ε = 5 and
# 14.6–16.4 over adversarial training at ε = 4 (our adversarial training model is trained at ε = 1:
# the paper's ε = 4 misses its own 88% clean-accuracy rule here, README "Selection"). As on MNIST,
# seed 2's Cross-Lipschitz model is the least robust of its three from ε = 2 on. In seeds 0 and 1,
# Cross-Lipschitz and adversarial training trade places between ε = 2 and 5, and Cross-Lipschitz is
# ahead at ε = 5–6; in seed 2 adversarial training is ahead at every ε of 2–6 (by 1 and 3 images
# at ε = 5.5 and 6).

# %% [markdown]
# Each defense's `strongest` curve per seed, the band between the seeds (drawn by
# `python -m crossholder.seeds` from `seeds.csv`; absent until `make seeds` has run):
#
# ![seeds, MNIST](../figures/seeds_mnist.png)
# ![seeds, Fashion-MNIST](../figures/seeds_fashion_mnist.png)

# %% [markdown]
# ## Are the seed curves strong enough?
#
# AutoAttack (standard L2, from scratch; APGD-CE, APGD-T, FAB-T, Square) against each seed model's
# `strongest` sweep on its first test images (`python -m crossholder.jobs seeds --n 500 --checks 100`;
# seed 0, the registered models, on 200): `robust / missed` is how many images the sweep calls robust
# at that ε and how many of those AutoAttack still fools; the last column, how many images the
# black-box Square attack fools that no gradient attack of the sweep does (gradient masking would
# show there).

# %%
# NBVAL_CHECK_OUTPUT
display(Markdown(reports.seed_checks_table(root)))

# %% [markdown]
# All 24 models are checked. On each one's first 100 images (seed 0: 200), AutoAttack fools 2 of the
# images the sweep calls robust in all, each within the 1% target, one on each side of the
# Cross-Hölder–Cross-Lipschitz comparison: one of 200 for the registered MNIST Cross-Hölder model at
# ε = 6 (its curve 0.5 points too high there), one of 100 for MNIST Cross-Lipschitz seed 1 at ε = 4 (1
# point), with a witness on the ε-ball's surface (1.2324 pixels, where the sweep's smallest was
# 1.2801; image 4 of `results/mnist/robustness/agreement-8e63eaf0b0-examples.csv`). Square, run at
# ε = 5, finds nothing beyond `strongest` for any model. This bounds the curves' error only loosely (0
# misses in 100 is still consistent with about 3%, and images 100–499 are unchecked), but both misses
# are far below the 5–26-point gaps between the defenses discussed here.

# %% [markdown]
# ## The paper's claims, per seed
#
# Each claim judged on each seed's curves, as in notebook 04 (thresholds in
# `crossholder.claims.CLAIMS`): in how many seeds it holds on the point estimates; `*` marks a
# seed where the verdict also holds with the 95% Wilson intervals. The two bars differ, as the claims
# do: "A above B" is supported beyond the intervals when they separate at half of its ε range or more,
# and refuted beyond them when they separate the other way at any one ε (`claims.claims_table`).

# %%
# NBVAL_CHECK_OUTPUT
display(Markdown(reports.claims_seeds_table(root)))

# %% [markdown]
# On MNIST every verdict of seed 0 repeats in seeds 1 and 2 except M2 in seed 1, most beyond the
# intervals. The exception comes from the claim's strict every-ε rule, not from a reversal: "Cross-Hölder ≥ Cross-Lipschitz at every ε of
# 3.5–6" fails in seed 1 at ε = 3.5 alone, by 7 of 500 images under PGD-CE (459 against 466) and 1
# under `strongest` (459 against 460), well inside the intervals; from ε = 4 on Cross-Hölder is
# ahead in all three seeds (`seeds.csv`). The verdicts that matter most for the method hold in all
# three seeds under `strongest`, beyond the intervals: Cross-Hölder above Cross-Lipschitz after ε = 4
# (M4, M6 supported; under the paper's PGD-CW, M4 holds in seed 0 on the point estimates only) and
# below adversarial training (M3, M7 refuted, so they count 0 seeds in the README's column, which
# counts the seeds where the paper's claim holds).
#
# On Fashion-MNIST both of the paper's claims fail in all three seeds, as in seed 0, for different
# reasons. F2 ("Cross-Hölder below adversarial training up to ε = 4") is refuted beyond the intervals
# in each seed: under `strongest` Cross-Hölder is the more robust from ε = 1 on. F1 ("Cross-Hölder
# above Cross-Lipschitz", at every ε of 0.5–6) fails by 1 to 3 of 500 images at ε = 0.5 or 1 only,
# within the intervals, under each attack it is judged on (worst-min, worst-per-example, `strongest`;
# `seeds.csv`); from ε = 1.5 on Cross-Hölder is ahead in all three seeds. The every-ε rule reads the
# paper's wording literally; the paired tests below show the size of the lead where it matters.

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

# %% [markdown]
# Under `strongest`, each of the six tests per data set is significant alone in all three seeds, in
# the pooled direction (`paired-seeds.csv`). On MNIST Cross-Hölder is above Cross-Lipschitz (+6.7,
# +18.9 and +16.3 points at ε = 4, 5 and 6) and below adversarial training (−4.7, −15.9, −25.9); on
# Fashion-MNIST it is above both (+17.1, +15.3, +11.8 over Cross-Lipschitz; +15.2, +15.7, +12.3 over
# adversarial training).
