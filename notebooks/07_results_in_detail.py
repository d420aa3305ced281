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
# # 07 · The results in detail: Figure 3, the models, the selection, the attacks, the claims
#
# An analysis notebook: it computes nothing and only shows tables generated from the committed files in `results/` (`crossholder.reports`), with what we read in them. The runs behind them are named in each table's source (`crossholder.reports`) and in the text.

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
# ## Figure 3: |Hg| is not the Hessian's operator norm
#
# On the undefended MNIST CNN, all 10,000 test images, the runner-up margin (notebook 01):

# %%
# NBVAL_CHECK_OUTPUT
display(Markdown(reports.figure3_table(root)))

# %% [markdown]
# ![Figure 3a](../figures/fig3a_hessian_norm_histograms.png)
#
# Beyond the paper: on the trained network the paper's estimator (projected ascent, T = 10, o = 0.1,
# 21 Hessian-vector products) is within a median 0.05% of a 20-product Lanczos estimate (90% quantile
# 3.4%); Lanczos with 10 products is within 3.9e-6 (median) of the exact norm from the full
# 784 × 784 Hessian, power iteration with 10 products within 2.3e-3
# ([figure](../figures/extra_hessian_norm_convergence.png)). On an *untrained* network (‖H‖ ≈ 5e-4)
# the ascent's absolute step o = 0.1 barely moves v: the step is not scale-free.

# %% [markdown]
# ## The models
#
# `results/models.json`, `cpu` profile, seed 0; the paper's admissibility criterion is ≥ 99% clean
# accuracy on MNIST and ≥ 88% on Fashion-MNIST, and all eight models meet it. The hyperparameters
# are the paper's picks except for Fashion-MNIST adversarial training and Cross-Hölder: the paper's
# picks (ε = 4; λ1 = 0.2, λ2 = 0.5) reach only 82.0% and 86.8% clean test accuracy here, so the
# registered models are the admissible winners of our grid (next section). Wall times are one
# thread on a shared 2-core CPU.

# %%
# NBVAL_CHECK_OUTPUT
display(Markdown(reports.models_table(root)))

# %% [markdown]
# ## Hyperparameter selection (notebook 03)
#
# The paper's procedure (appendix C.2) at the `cpu` profile: every grid point is a full 10-epoch
# training run on the 57,000-image training split (Cross-Hölder compiled), judged on the 3,000-image
# validation split; admissible if its clean validation accuracy is ≥ 99% (MNIST) / ≥ 88%
# (Fashion-MNIST); the winner is the admissible point with the best sum of worst-case (paper's
# minimum) adversarial accuracy at ε = 3 and 4 on 500 validation images (L2 PGD, 20 steps × 2
# restarts, both losses). The whole grid is 17 + 19 training runs, about 10 h of this machine per
# data set, so it fills point by point (`python -m crossholder.selection --dataset ... --point ...`,
# cached under `results/<dataset>/selection/points/`). Both grids are complete; from
# `results/<dataset>/selection/grid-cpu.csv`:

# %%
# NBVAL_CHECK_OUTPUT
display(Markdown(reports.selection_table(root)))

# %% [markdown]
# **The MNIST grid is complete (17 points).** The paper's pick wins for adversarial training (ε = 5,
# 1.918; ε = 6 ties on the score but fails the 99% criterion). For Cross-Lipschitz λ1 = 0.4 scores
# 1.904 against the paper's 0.2 at 1.890; for Cross-Hölder (0.05, 0.5) scores 1.894 against the
# paper's (0.02, 0.5) at 1.872. Those margins are 7 and 11 of the 1,000 attacked (image, ε) pairs,
# and the standard error of one accuracy at n = 500 is about 1 point, so the grid does not separate
# the winners from the paper's picks. Every Cross-Hölder point is admissible (99.20–99.30%
# validation accuracy) and scores between 1.858 and 1.894; within each λ2, a larger λ1 scores
# higher. The accuracy criterion would allow stronger regularization than the paper chose.
#
# **The Fashion-MNIST grid is complete (19 points).** Here the 88% criterion decides every row. Clean
# validation accuracy falls monotonically as ε, λ1 or λ2 grows (Cross-Hölder: from 89.07% at
# (0.1, 0.25) to 81.10% at (0.4, 1)), while the score rises up to the strongest settings, so each
# winner is the strongest admissible point: Cross-Lipschitz λ1 = 0.15 (the paper's pick, 1.076);
# Cross-Hölder (0.1, 0.5) (1.176), where the paper's (0.2, 0.5) reaches 87.20%; adversarial
# training ε = 1 (1.004), where the paper's ε = 4 reaches 81.87%. Only two Cross-Hölder points and
# two AT points are admissible at all. Under our ε unit, then, the paper's Fashion-MNIST picks for
# AT and Cross-Hölder fail its own criterion (the ε-unit item of "Where the paper is silent" below), and the
# registered models are the grid's winners.
#
# The registered models (`results/models.json`, what notebook 04 evaluates) follow
# `crossholder.experiments.FINAL`: the paper's pick, unless the grid shows that pick inadmissible and
# has an admissible winner; tests check both that FINAL departs from the paper only for such a
# winner and that `models.json` holds exactly the runs FINAL names.

# %% [markdown]
# ## Figures 1, 2, 4, 5: adversarial accuracy against ε
#
# Every curve, table and verdict of this section stands on the `strongest` protocol
# (`crossholder.sweeps.PROTOCOLS`, the default of notebook 04 and of `evaluate_model`), on the
# first 1,000 test images at the `cpu` profile: the paper's PGD (50 steps × 10 restarts, CE and CW)
# at step ε/4, plus APGD-CE, APGD-T, the minimum-norm attack FAB and its targeted version FAB-T
# (PyPI `pyautoattack`); an image counts as robust at ε only if no attack found a verified witness
# of norm ≤ ε. Beside it, the paper's protocol: its PGD alone (the same runs at step ε/4),
# per-example worst case. Our first curves, `paper-v1` (the paper's PGD at Madry et al.'s step
# 2.5 ε / steps, 300 images), are kept as notebook 04's `protocol="paper-v1"` variant; the
# AutoAttack table below shows how far they were off.
#
# PGD's step, measured (the paper gives none): robust accuracy (%) of the paper's PGD (50 steps ×
# 10 restarts, CE and CW, per-example worst case) on the first 200 test images, for steps ε/20
# (Madry et al.'s 2.5 ε / steps, the step of `paper-v1`), ε/10, ε/4 and ε/2; the lowest (strongest)
# in bold:

# %%
# NBVAL_CHECK_OUTPUT
display(Markdown(reports.step_size_table(root)))

# %% [markdown]
# Robust accuracy (%) under `strongest`, in parentheses the paper's PGD (per-example worst case),
# on the same images:

# %%
# NBVAL_CHECK_OUTPUT
display(Markdown(reports.robustness_table(root)))

# %% [markdown]
# From ε = 3 on every defense is clearly more robust than the undefended model (MNIST: 72.2% of the
# images at ε = 3 and 18.8% at ε = 5, against 94–96% and 52–84% for the defenses; Fashion-MNIST:
# 0.8% at ε = 3, against 53–62%). On both data sets Cross-Hölder is above Cross-Lipschitz from
# ε = 4 on, by 5.6 to 18.1 points on MNIST and 11.3 to 17.4 on Fashion-MNIST. PGD adversarial
# training is above Cross-Hölder on MNIST at every ε ≥ 4, by 4.9 points at ε = 4 and 25.8 at
# ε = 6: there the paper has Cross-Hölder ahead. On Fashion-MNIST Cross-Hölder is above our AT
# model (trained at ε = 1.0, 0.35 pixels, the strongest admissible one) by 12.8 to 14.8 points at
# ε = 4 to 6, where the paper has AT ahead up to ε = 4. The paper's pick, AT at ε = 4, meets its
# own ≥ 88% rule there; here it reaches 81.9% validation accuracy (the grid's ε = 2 misses the
# rule too). That model's legacy curve (`paper-v1`, 300 images) is kept in
# `results/fashion_mnist/robustness/adversarial-05812b5e49.csv`: it is above Cross-Hölder's
# `paper-v1` curve from ε = 3 on and below it at ε ≤ 2, so it matches the paper's Figure 2
# ordering only at ε = 3 to 4.
#
# **Paired tests** on the same 1,000 images (`results/<dataset>/paired.csv`): Δ = Cross-Hölder − the
# other, in points, and the exact McNemar p-value (twelve tests per data set, uncorrected):

# %%
# NBVAL_CHECK_OUTPUT
display(Markdown(reports.paired_table(root)))

# %% [markdown]
# **Gradient masking, measured** (beyond the paper; `results/<dataset>/robustness/masking-*.csv`):
# at ε = 5 on the first 200 test images, how many images the paper's PGD fools, how many more each
# stronger attack fools beyond it, and the black-box Square attack (5,000 queries, no gradients):

# %%
# NBVAL_CHECK_OUTPUT
display(Markdown(reports.masking_table(root)))

# %% [markdown]
# Square finds no image that PGD misses, on any model, at ε = 5: no sign that the PGD robustness of
# any defense rests on masked gradients. Square fools fewer images than PGD on every model but the
# undefended Fashion-MNIST one (all 200 for both), so its silence is weak evidence alone; the
# AutoAttack agreement below is the stronger check. PGD at its fixed budget still under-explores:
# the stronger gradient attacks lower the paper's PGD (per-example worst case) by up to 8.3 points
# (MNIST Cross-Lipschitz at ε = 5.5; 7.1 for MNIST Cross-Hölder, 2.9 for MNIST adversarial
# training, at most 4.0 on Fashion-MNIST), and the paper's `worst-min` (dashed in the figures) by
# up to 12.2, 9.0 and 3.1 points (at most 5.4 on Fashion-MNIST). Most of the images PGD misses are
# found by FAB-T, the targeted minimum-norm attack (14 of 16 for MNIST Cross-Lipschitz, 5 of 7 for
# MNIST Cross-Hölder at ε = 5).
#
# **Our first curves against an independent attack** (history, `paper-v1`): AutoAttack's standard
# L2 version (APGD-CE, APGD-T, FAB-T, Square) on the first 50 test images of each model, against
# the legacy per-example worst case (the paper's PGD at step 2.5 ε / steps) on the same images
# (`gap` = ours − AutoAttack, in points):

# %%
# NBVAL_CHECK_OUTPUT
display(Markdown(reports.autoattack_table(root)))

# %% [markdown]
# At ε = 5 the legacy PGD overstated the robustness of the two gradient regularizers on MNIST (by
# 18 and 26 points) and of Cross-Lipschitz on Fashion-MNIST (14), far more than that of
# adversarial training (2–4). The Carlini et al. sanity checks all pass
# (`results/<dataset>/robustness/sanity-*.csv`): they did not catch this; AutoAttack's targeted
# attacks did. This is what the step ε/4 and the `strongest` sweep fix.
#
# **The `strongest` sweep, checked by AutoAttack** (first 200 test images of each robust model;
# `robust / missed`: images the sweep calls robust / how many of those AutoAttack still fools;
# target ≤ 2 of 200 at every ε; bold: above it). Version 2 of the sweep missed up to 6 images on
# MNIST; all nine Cross-Lipschitz misses were found by AutoAttack's targeted FAB
# (`tools/agreement_misses.py`, `misses-cross_lipschitz.csv`); version 3
# adds FAB-T over the 9 most likely other classes. AutoAttack's outcome on each image it attacked
# is in `agreement-*-examples.csv` beside each table.

# %%
# NBVAL_CHECK_OUTPUT
display(Markdown(reports.agreement_table(root)))

# %% [markdown]
# ![Figure 1: MNIST, worst case](../figures/fig1_mnist_worst_case.png)
# ![Figure 2: Fashion-MNIST, worst case](../figures/fig2_fashion_mnist_worst_case.png)
#
# Solid: `strongest`, with its 95% Wilson band; dashed: the paper's worst case (the minimum of the
# PGD-CE and PGD-CW accuracies). Panels per attack: `figures/fig4a_…`, `fig4b_…`, `fig4c_…` (MNIST) and `fig5a_…` to `fig5c_…`
# (Fashion-MNIST), PNG and PDF, drawn by notebook 04 from `results/<dataset>/robustness.csv`.

# %% [markdown]
# ## The paper's claims against our curves
#
# `supported`: the claim holds on our point estimates (thresholds in `crossholder.claims.CLAIMS`;
# "quite effective" is read as accuracy ≥ 0.7); `beyond the 95% CIs`: the verdict also holds with
# the Wilson intervals (otherwise the difference is within sampling noise at n = 1,000). Each claim
# is judged on the paper's attack (both worst cases for the worst-case claims: the paper's
# `worst-min` and the per-example one) and on `strongest`.

# %%
# NBVAL_CHECK_OUTPUT
display(Markdown(reports.claims_table(root)))

# %% [markdown]
# The two protocols agree on every verdict. On MNIST, M1, M2, M4, M5 and M6 are supported beyond
# the intervals: Cross-Hölder's advantage over Cross-Lipschitz is larger under `strongest` than
# under the paper's PGD, because the stronger attacks lower Cross-Lipschitz more. M3 and M7 are
# refuted beyond the intervals: adversarial training is ahead of Cross-Hölder at every ε > 4. On
# Fashion-MNIST, F1 holds at 11 of 12 ε; at ε = 0.5 Cross-Hölder trails by 0.5 points (85.6%
# against 86.1%, within the intervals), so the strict verdict is "no" but the data do not
# contradict the claim beyond ε = 0.5. F2 is refuted beyond the intervals against our admissible
# adversarial training model. These are one training seed per model; notebook 08 asks whether
# they hold across seeds.
