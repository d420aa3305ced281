"""The PGD step size, measured: robust accuracy against the L2 step at the paper's 50 steps × 10 restarts.

The paper gives no step size. Up to evaluation code version 1 the library used Madry et al.'s
``2.5 * eps / steps`` (= eps / 20 at 50 steps), which an independent check found too weak in L2
(issue 17). This script measures, on the six robust registered models (Cross-Lipschitz,
Cross-Hölder, adversarial training; MNIST and Fashion-MNIST), at ε = 3 and 5 (paper units), on the
first ``--n`` test images, the robust accuracy of PGD-CE, PGD-CW and their per-example worst case
for step sizes ``eps * f`` with ``f`` in ``--fractions`` (same seeds for every step, so the rows are
paired). Writes ``results/step-size.csv`` (tidy: dataset, defense, eps, eps_pixel, fraction, loss,
n, robust, accuracy) and its sidecar ``results/step-size.json`` (provenance); resumable per
(model, ε): the rows computed so far are kept in the CSV and skipped on a re-run.

Usage: ``python tools/step_size_study.py [--n 200] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import copy
import time

import pandas as pd
import torch

from crossholder import attacks, data, paths, store, sweeps, training

DEFENSES = ("cross_lipschitz", "cross_holder", "adversarial")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--eps", type=float, nargs="+", default=[3.0, 5.0])
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.05, 0.1, 0.25, 0.5])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--restarts", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = paths.results_dir() / "step-size.csv"
    side = out.with_suffix(".json")
    done = pd.read_csv(out) if out.exists() else pd.DataFrame()
    state = store.read_json(side, {}) or {}
    wall = float(state.get("wall_time_s", 0.0))
    params = {"n": args.n, "eps": args.eps, "fractions": args.fractions, "steps": args.steps,
              "restarts": args.restarts, "models": {}}
    for dataset in data.DATASETS:
        x, y = data.tensors(dataset, "test")
        x, y = x[:args.n], y[:args.n]
        for defense in DEFENSES:
            model, rec = training.load_registered(dataset, defense)
            params["models"][f"{dataset}/{defense}"] = rec["run_id"]
            model = copy.deepcopy(model).to(memory_format=torch.channels_last).eval()
            xc = x.contiguous(memory_format=torch.channels_last)
            for e in args.eps:
                if not done.empty and ((done["dataset"] == dataset) & (done["defense"] == defense)
                                       & (done["eps"] == e)).any():
                    continue
                t0 = time.perf_counter()
                ep = sweeps.to_pixel(e, dataset)
                rows = []
                for f in args.fractions:
                    robust = {}
                    for loss in attacks.LOSSES:
                        r = attacks.pgd(model, xc, y, ep, loss=loss, steps=args.steps, restarts=args.restarts,
                                        step_size=f * ep, seed=args.seed)
                        robust[loss] = ~r.success
                    robust["worst-per-example"] = robust["ce"] & robust["cw"]
                    for name, rb in robust.items():
                        att = name if name.startswith("worst") else f"pgd-{name}"
                        rows.append({"dataset": dataset, "defense": defense, "model": rec["run_id"], "eps": e,
                                     "eps_pixel": ep, "fraction": f, "attack": att, "n": args.n,
                                     "robust": int(rb.sum()), "accuracy": float(rb.float().mean())})
                wall += time.perf_counter() - t0
                done = pd.concat([done, pd.DataFrame(rows)], ignore_index=True)
                store.atomic_write_text(out, done.to_csv(index=False))
                store.atomic_write_json(side, store.provenance(params=params, seed=args.seed, profile="cpu",
                                                         wall_time_s=round(wall, 1),
                                                         files=[paths.relative_to_root(out)]))
                w = pd.DataFrame(rows)
                w = w[w["attack"] == "worst-per-example"]
                print(f"{dataset}/{defense} eps={e}: " + ", ".join(
                    f"eps*{f:g}: {a:.3f}" for f, a in zip(w["fraction"], w["accuracy"])), flush=True)
    print(done[done["attack"] == "worst-per-example"].pivot_table(
        index=["dataset", "defense", "eps"], columns="fraction", values="accuracy").to_string())


if __name__ == "__main__":
    main()
