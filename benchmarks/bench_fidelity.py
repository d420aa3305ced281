"""How many Hessian-vector products per visit fast mode needs for a given fidelity, epoch by epoch.

Fast Cross-Hölder keeps one direction per training example between epochs and spends a few
Hessian-vector products on it at every visit (``inner_iters`` power steps, then the training
product, whose normalized result is kept for the next visit). This script measures, on real
training states, what the *next* visit would reach with other inner loops, against a cold-start
Lanczos estimate with 50 products on the same examples (the fidelity of issue 5):

* ``warm_power``: the kept direction, ``k - 1`` power steps, then the training product (``k``
  products per visit; ``k = 2`` is the default, ``k = 1`` is ``inner_iters = 0``);
* ``warm_lanczos``: a Krylov space of ``k - 1`` products from the kept direction, then the
  training product on its top Ritz vector (``k`` products per visit; the value is ``||H v||`` at
  the Ritz vector, what training would use, not the Ritz value);
* ``warm_power_bf16``: as ``warm_power``, with the ``k - 1`` power steps in bfloat16
  (``regularized_loss(power_dtype="bfloat16")``, the training code path; the training product in
  float32);
* ``cold_power``: a fresh Gaussian direction and ``k`` products (no kept directions at all).

The states come from the MNIST Cross-Hölder run of the ``cpu`` profile (fast, runner-up,
compiled where ``torch.compile`` works), trained here epoch by epoch in a scratch folder (results/
is not touched; about 7 minutes an epoch on one core) and kept in
``<scratch>/bench_fidelity/state-e<epoch>.pt`` so a second run only measures. Caveat: every
strategy is measured from the store that the default inner loop built; a strategy with more
products per visit would also have kept better directions, so its numbers are conservative, and
the ``k = 1`` row is optimistic for a run that used ``k = 1`` throughout.

Usage: ``python benchmarks/bench_fidelity.py [--epochs 3] [--probe 256]``. Writes
``results/mnist/benchmarks/fidelity-frontier.csv`` (+ ``.json`` provenance); the last line printed
is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

import pandas as pd
import torch

from crossholder import data, experiments, models, paths, regularizers, store, training
from crossholder.hessian import HVPOperator, flat_norm, operator_norm


def _states(epochs: int, store_dir, compiled: bool) -> list:
    """Paths of the saved training states after epochs 1..``epochs`` (trained here when missing)."""
    out = [store_dir / f"state-e{e}.pt" for e in range(1, epochs + 1)]
    if all(p.exists() for p in out):
        return out
    cfg = training.make_config("mnist", "cross_holder", profile="cpu", compiled=compiled)
    with tempfile.TemporaryDirectory() as tmp, \
            paths.environment(CROSSHOLDER_RESULTS=tmp, CROSSHOLDER_SCRATCH=store_dir / "scratch"):
        for e, p in enumerate(out, start=1):
            if p.exists():
                continue
            training.train(cfg, progress=True, max_epochs=e, threads=torch.get_num_threads())
            tmp_copy = p.with_suffix(".tmp")
            shutil.copy(training.run_paths(cfg)["state"], tmp_copy)
            os.replace(tmp_copy, p)
    return out


def _warm_lanczos(model, x, y, v0, k: int) -> torch.Tensor:
    """``||H v||`` at the top Ritz vector of a ``k - 1``-product Krylov space from ``v0`` (``k`` products)."""
    if k == 1:
        r = operator_norm(model, x, y, "runner_up", method="power", iters=1, v0=v0)
        return r.norm
    r = operator_norm(model, x, y, "runner_up", method="lanczos", iters=k - 1, v0=v0)
    H = HVPOperator(model, x, y, "runner_up")
    with torch.no_grad():
        return flat_norm(H(r.v))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--probe", type=int, default=256, help="training examples probed (the first n)")
    ap.add_argument("--max-products", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    for name in ("epochs", "probe", "max_products", "threads"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 1")
    torch.set_num_threads(args.threads)
    experiments.tune_allocator()
    t0 = time.perf_counter()
    compiled = regularizers.compile_available()[0]
    store_dir = paths.scratch_dir() / "bench_fidelity"
    store_dir.mkdir(parents=True, exist_ok=True)
    states = _states(args.epochs, store_dir, compiled)
    x, y = data.tensors("mnist", "train")
    xb, yb = x[: args.probe], y[: args.probe]
    rows = []
    for epoch, path in enumerate(states, start=1):
        st = torch.load(path, weights_only=True, map_location="cpu")
        model = models.paper_cnn("mnist")
        model.load_state_dict(st["model"])
        model.eval()
        dirs = regularizers.DirectionStore(len(x), 1, (1, 28, 28))
        dirs.load_state_dict(st["store"])
        v0 = dirs.get(torch.arange(args.probe), torch.Generator().manual_seed(0))[:, 0]
        cold = operator_norm(model, xb, yb, "runner_up", method="lanczos", iters=50, seed=0).norm.clamp_min(1e-30)

        def add(strategy: str, k: int, est: torch.Tensor) -> None:
            ratio = est / cold
            rows.append({"epoch": epoch, "strategy": strategy, "products_per_visit": k,
                         "fidelity_median": float(ratio.median()), "fidelity_q10": float(ratio.quantile(0.1))})

        for k in range(1, args.max_products + 1):
            add("warm_power", k, operator_norm(model, xb, yb, "runner_up", method="power", iters=k, v0=v0).norm)
            add("warm_lanczos", k, _warm_lanczos(model, xb, yb, v0, k))
            add("warm_power_bf16", k, regularizers.warm_norm(model, xb, yb, v0, k - 1, power_dtype="bfloat16"))
            add("cold_power", k, operator_norm(model, xb, yb, "runner_up", method="power", iters=k, seed=1).norm)
    df = pd.DataFrame(rows)
    out = paths.results_dir() / "mnist" / "benchmarks" / "fidelity-frontier.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    store.atomic_write_text(out, df.to_csv(index=False))
    store.atomic_write_json(out.with_suffix(".json"), store.provenance(
        params={"epochs": args.epochs, "probe": args.probe, "max_products": args.max_products,
                "run": training.make_config("mnist", "cross_holder", profile="cpu", compiled=compiled).relevant(),
                "reference": "cold Lanczos, 50 products, seed 0", "probe_examples": "first n training examples",
                "class": "runner-up of the label"},
        seed=0, profile="cpu", wall_time_s=time.perf_counter() - t0))
    wide = df.pivot_table(index=["strategy", "products_per_visit"], columns="epoch", values="fidelity_median")
    print("median fidelity (||H v|| / cold Lanczos-50) by epoch, probe of", args.probe, "training examples:")
    print(wide.round(3).to_string())
    first = df[df["epoch"] == 1]
    need = {s: int(g.loc[g["fidelity_median"] >= 0.95, "products_per_visit"].min())
            if (g["fidelity_median"] >= 0.95).any() else None for s, g in first.groupby("strategy")}
    print(json.dumps({"products_for_0.95_at_epoch_1": need, "file": str(paths.relative_to_root(out))}))


if __name__ == "__main__":
    main()
