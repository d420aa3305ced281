"""Writes the notebooks' source cells (run once when a notebook's cells change; outputs come from papermill).

``python tools/build_notebooks.py [NAME ...]`` rewrites notebooks/NN_*.ipynb without outputs;
`make figures` then executes them. Keeping the cells here makes reviewing changes easy.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat as nbf

ROOT = Path(__file__).resolve().parents[1]
KERNEL = {"display_name": "Python (crossholder)", "language": "python", "name": "crossholder"}


def md(text: str):
    return nbf.v4.new_markdown_cell(text.strip())


def code(text: str, tags: list[str] | None = None):
    c = nbf.v4.new_code_cell(text.strip())
    if tags:
        c.metadata["tags"] = tags
    return c


NOTEBOOKS: dict[str, list] = {}

NOTEBOOKS["01_hessian_norm_estimation"] = [
    md("""
# 01 · Hessian operator norm estimation (the paper's appendix C.1 and Figure 3)

For an undefended paper CNN on MNIST and every test image we compute two curvature numbers of the
margin f^(j) = f_t − f_j, with t the predicted class and j the runner-up (the second-largest logit,
the paper's footnote 2):

* **|Hg|** = ‖H ĝ‖₂ with ĝ = ∇f^(j)/‖∇f^(j)‖₂: the proxy of Moosavi-Dezfooli et al. (2019);
* **|Hv\\*|** = ‖H v\\*‖₂ with v\\* found by the paper's projected gradient ascent (T = 10, o = 0.1):
  the operator norm ‖H‖₂→₂ the paper regularizes.

Both are lower bounds of ‖H‖₂ (any unit vector gives one), computed with exact Hessian-vector
products, never the full Hessian. Units: logits per pixel² of [0, 1] images (the paper does not give
its units, so absolute values need not match its Figure 3).

Beyond the paper: a Lanczos estimate for every example (how far the paper's ascent is from the
norm), convergence of the three estimators against the exact norm from full float64 Hessians,
and pictures of the top-curvature directions.
"""),
    code("""
profile: str = "cpu"  # "smoke" (CI: seconds, tiny subsets), "cpu" (default) or "paper"
device: str = "cpu"  # only "cpu" is used by this notebook
seed: int = 0  # seed of the undefended model's training and of the starting vectors
method: str = "ascent"  # |Hv*| estimator: "ascent" (the paper's), "power" or "lanczos"
iters: int = 10  # the paper's T (ascent steps; products for power / lanczos)
step: float = 0.1  # the paper's ascent step o
lanczos_iters: int = 20  # Lanczos products of the extra estimate per example (0: skip)
exact_n: int = 0  # examples with a full float64 Hessian (0: 2 at smoke, 16 at cpu, 32 at paper)
n_images: int = 8  # digits shown beside their top-curvature direction
""", tags=["parameters"]),
    code("""
import pandas as pd
import torch

from crossholder import data, experiments, hessian, plotting, training

prof = experiments.PROFILES[experiments.check_profile(profile)]
if method not in hessian.METHODS:
    raise ValueError(f"method={method!r}; allowed values: {hessian.METHODS}")
n_test = prof["hessian_n"]  # None: the whole test set
exact_n = exact_n or {"smoke": 2, "cpu": 16, "paper": 32}[profile]
torch.manual_seed(seed)
pd.set_option("display.precision", 4)
"""),
    md("## The undefended model\nTrained once by the library (notebook 02's loop, defense `none`) and cached in `results/`."),
    code("""
run = training.train(training.make_config("mnist", "none", profile=profile, seed=seed), register=True, progress=False)
model = run.model.eval()
print(f"checkpoint: {run.record['checkpoint']}")
print(f"clean test accuracy: {run.record['clean_test_accuracy']:.4f}")
"""),
    md("## |Hg| and |Hv\\*| for every test image"),
    code("""
x, y = data.tensors("mnist", "test")
if n_test is not None:
    x, y = x[:n_test], y[:n_test]
params = {"model": run.record["run_id"], "n": len(x), "method": method, "iters": iters, "step": step,
          "lanczos_iters": lanczos_iters}
norms, norms_csv, norms_meta = experiments.cached_table(
    "mnist/hessian/norms", params,
    lambda: hessian.norm_table(model, x, y, method=method, iters=iters, step=step,
                               lanczos_iters=lanczos_iters or None, seed=seed),
    seed=seed, profile=profile, code_version=hessian.CODE_VERSION)
print(f"{len(norms)} examples from {norms_meta['file']} "
      f"(computed in {norms_meta['wall_time_s']} s)")
"""),
    code("""
fig = plotting.fig3a(norms)
"""),
    code("""
fig = plotting.fig3b(norms)
"""),
    md("Quantiles and histogram mode of each quantity (logit / pixel²):"),
    code("""
# NBVAL_CHECK_OUTPUT
print(hessian.norm_summary(norms).round(3).to_string())
"""),
    md("""
The paper's statements about Figure 3, checked on our numbers. The "mode around 5" is in the
paper's unstated units and for its model; ours is for pixel units and our model, so only the
shape of the comparison carries over.
"""),
    code("""
# NBVAL_CHECK_OUTPUT
claims = hessian.figure3_claims(norms)
print(claims.to_string(index=False))
"""),
    md("""
How good is the paper's estimator? Every value is a lower bound of the norm, so the larger is the
better. We compare the paper's ascent (T = 10, o = 0.1) with a Lanczos estimate:
"""),
    code("""
# NBVAL_CHECK_OUTPUT
if "hv_lanczos" in norms:
    gap = (norms["hv_lanczos"] - norms["hv"]) / norms["hv_lanczos"]
    print(f"Lanczos ({lanczos_iters} products) above the paper's ascent by a median {gap.median():.2%} "
          f"(90% quantile {gap.quantile(0.9):.2%}); ascent below |Hg| on {(norms['diff'] < 0).mean():.2%} of examples")
"""),
    md("## Beyond the paper: convergence against the exact norm\nFull input Hessians (784 × 784, float64) of a subsample give the exact spectral norm."),
    code("""
m64 = training.models_mod.paper_cnn("mnist").double()
m64.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
m64.eval()
x64 = x[:exact_n].double()
with torch.no_grad():
    t64 = m64(x64).argmax(1)
conv, conv_csv, _ = experiments.cached_table(
    "mnist/hessian/convergence", {"model": run.record["run_id"], "n": exact_n, "step": step},
    lambda: hessian.convergence_table(m64, x64, t64, step=step, seed=seed),
    seed=seed, profile=profile, code_version=hessian.CODE_VERSION)
fig = plotting.hessian_convergence(conv)
"""),
    code("""
# NBVAL_CHECK_OUTPUT
table = conv.groupby(["products", "method"])["rel_err"].median().unstack("method")
print(table.map(lambda v: f"{v:.1e}").to_string())
"""),
    md("## Top-curvature directions\nThe direction v\\* (Lanczos, 30 products) beside its digit: red and blue are the two signs."),
    code("""
imgs, _, _ = experiments.cached_table(
    "mnist/hessian/directions", {"model": run.record["run_id"], "n": n_images},
    lambda: hessian.direction_frame(model, x[:n_images], iters=30, seed=seed),
    seed=seed, profile=profile, code_version=hessian.CODE_VERSION)
fig = plotting.direction_images(imgs)
"""),
]


def build(name: str) -> None:
    nb = nbf.v4.new_notebook()
    nb.cells = NOTEBOOKS[name]
    nb.metadata["kernelspec"] = KERNEL
    nb.metadata["language_info"] = {"name": "python"}
    nbf.write(nb, ROOT / "notebooks" / f"{name}.ipynb")


if __name__ == "__main__":
    for n in sys.argv[1:] or list(NOTEBOOKS):
        build(n)
        print(f"wrote notebooks/{n}.ipynb")
