"""Throughput of trainings through local Ray (crossholder.jobs) against the same trainings run one after
another in one process, and Ray's start-up time, on this machine.

N smoke-sized MNIST trainings (no defense, ``n_train`` images, ``epochs`` epochs, seeds 0..N-1), each
written to a fresh temporary results directory so nothing is cached:

* ``sequential``: one process, one training after the other, torch with all of the machine's cores
  (what a user without a scheduler does);
* ``ray``: :func:`crossholder.jobs.train` on a local Ray instance with all cores, one CPU (one torch
  thread) per task; its wall time counts from submission to the last result, and the instance's
  start-up (``ray.init``) is timed separately.

Both run in the same invocation, side by side. Usage: ``python benchmarks/bench_jobs.py [--n 8]``.
The last line printed is one JSON object: ``jobs_vs_sequential_throughput`` (trainings per second
through Ray over trainings per second sequential; > 1: Ray is faster) and ``ray_startup_s``; it is
also written with the provenance to ``results/mnist/benchmarks/jobs.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=8, help="trainings")
    ap.add_argument("--n-train", type=int, default=4096)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    import torch

    from crossholder import jobs, paths, store, training

    overrides = {"n_train": args.n_train, "epochs": args.epochs}
    runs = [{"dataset": "mnist", "defense": "none", "seed": s, "overrides": overrides} for s in range(args.n)]
    cores = len(os.sched_getaffinity(0))
    out_json = paths.results_dir() / "mnist" / "benchmarks" / "jobs.json"
    saved = {k: os.environ.get(k) for k in ("CROSSHOLDER_RESULTS", "CROSSHOLDER_SCRATCH")}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CROSSHOLDER_RESULTS"] = str(Path(tmp) / "seq" / "results")
        os.environ["CROSSHOLDER_SCRATCH"] = str(Path(tmp) / "seq" / "scratch")
        torch.set_num_threads(cores)
        t0 = time.perf_counter()
        for r in runs:
            training.train(training.make_config("mnist", "none", profile="smoke", seed=r["seed"], **overrides),
                           progress=False)
        sequential = time.perf_counter() - t0
        os.environ["CROSSHOLDER_RESULTS"] = str(Path(tmp) / "ray" / "results")
        os.environ["CROSSHOLDER_SCRATCH"] = str(Path(tmp) / "ray" / "scratch")
        import ray

        t0 = time.perf_counter()
        with jobs.session(num_cpus=cores):
            startup = time.perf_counter() - t0
            t1 = time.perf_counter()
            jobs.train(runs, profile="smoke", register=False, progress=False)
            through_ray = time.perf_counter() - t1
        assert not ray.is_initialized()
        for k, v in saved.items():                 # the caller's settings back
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    summary = {"n": args.n, "n_train": args.n_train, "epochs": args.epochs, "cores": cores,
               "sequential_s": round(sequential, 2), "ray_s": round(through_ray, 2),
               "ray_startup_s": round(startup, 2),
               "jobs_vs_sequential_throughput": round(sequential / through_ray, 3)}
    print(f"{args.n} trainings: sequential {sequential:.1f} s ({cores} threads), through Ray {through_ray:.1f} s "
          f"({cores} tasks of 1 thread) after a {startup:.1f} s start-up")
    store.atomic_write_json(out_json, {**summary, "provenance": store.provenance(params=vars(args), seed=0,
                                                                           profile="smoke")})
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
