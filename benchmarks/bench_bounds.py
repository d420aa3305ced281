"""Cost of Theorem 2's radii (crossholder.bounds) on the paper CNN, measured side by side in one run.

Prints:
1. the time of :func:`crossholder.bounds.curvature_bounds` for the paper CNN (target: at most a minute),
   with the layers' spectral norms;
2. per image, on one batch of the registered MNIST Cross-Hölder model, the time of each radius
   (``global``, ``point``, ``ball`` at :data:`crossholder.bounds_tables.SETTINGS`), and the ball radius
   of 1,000 images extrapolated (target: at most an hour on this machine's two cores);
3. the ratio of each to the ``global`` radius's cost, and the machine's load average (other work on
   the cores slows every number alike).

The last line is one JSON object, also written with the provenance to ``results/mnist/benchmarks/bounds.json``.
Usage: ``python benchmarks/bench_bounds.py [--n 20] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from crossholder import bounds, bounds_tables, data, paths, store, training


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20, help="images in the timed batch")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, rec = training.load_registered("mnist", "cross_holder")
    model.eval()
    x, _ = data.tensors("mnist", "test")
    xb = x[: args.n]
    print(f"model: registered mnist/cross_holder {rec['run_id']}; threads: {torch.get_num_threads()}; "
          f"batch: {args.n} images")
    t0 = time.perf_counter()
    K, details = bounds.curvature_bounds(model, (1, 28, 28), return_details=True)
    k_time = time.perf_counter() - t0
    print(f"curvature_bounds: {k_time:.1f} s (target <= 60 s); K_global = {float(K.max()):.4g}; "
          f"spectral norms {[round(s, 3) for s in details['spectral_norms']]}")
    per_image = {}
    for curvature in ("global", "point", "ball"):
        kw = dict(bounds_tables.SETTINGS) if curvature == "ball" else {}
        t0 = time.perf_counter()
        res = bounds.theorem2_radius(model, xb, curvature=curvature, K_global=K, **kw)
        per_image[curvature] = (time.perf_counter() - t0) / args.n
        print(f"{curvature}: {per_image[curvature]:.4f} s per image; median radius {float(res.radius.median()):.4g} px")
    ball_1000_min = 1000 * per_image["ball"] / 60
    print(f"ball radius of 1,000 images: {ball_1000_min:.1f} min at {torch.get_num_threads()} threads "
          f"(target <= 60 min on two cores)")
    summary = {"threads": torch.get_num_threads(), "n": args.n, "curvature_bounds_s": round(k_time, 2),
               "seconds_per_image": {k: round(v, 5) for k, v in per_image.items()},
               "ratio_to_global": {k: round(v / per_image["global"], 1) for k, v in per_image.items()},
               "ball_1000_images_min": round(ball_1000_min, 1), "K_global": float(K.max()),
               "load_average_1min": round(os.getloadavg()[0], 2)}
    out = paths.results_dir() / "mnist" / "benchmarks" / "bounds.json"
    store.atomic_write_json(out, {**summary, "provenance": store.provenance(params=vars(args), seed=0, profile="cpu",
                                                                            device="cpu")})
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
