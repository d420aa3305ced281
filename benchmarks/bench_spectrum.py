"""The top of the exact input-Hessian spectrum of each registered model, and what it means for fast mode.

For ``--n`` test images of ``--dataset`` and each model of ``results/models.json`` for that data
set, the full input Hessian of the margin ``f_y - f_j`` (true class ``y``, runner-up ``j``, the
pair fast mode regularizes) is built in float64 and diagonalized
(:func:`crossholder.hessian.hessian_spectrum`). Written per example: the six eigenvalues of
largest modulus (signed), the operator norm ``|λ_1|``, ``|λ_2| / |λ_1|`` (the power method's
rate) and the largest modulus of sign opposite to ``λ_1`` over ``|λ_1|``.

Then, from one seeded Gaussian start per example, ``k`` power steps ``v <- H v / ||H v||`` (the
library's exact products, :func:`crossholder.hessian.hvp`), and two estimates of ``||H||_2`` at
``v_k``, both divided by ``|λ_1|``:

* ``norm``: ``||H v_k||`` (what Cross-Hölder trains on, eq. 5);
* ``rayleigh``: ``|v_k^T H v_k|``. For ``p = q = 2`` it equals ``||H v||`` at the maximizer and
  would need one product fewer in the training graph (the FLOP count of a training step drops
  from 12 to 9 forward-equivalents), but with eigenvalues of both signs near the top it can sit
  far below the norm until ``v_k`` has converged.

Usage: ``python benchmarks/bench_spectrum.py [--dataset mnist] [--n 16] [--seed 0]``. Writes
``results/<dataset>/hessian/spectrum-top.csv`` (+ ``.json`` provenance); the last line printed is
one JSON object (medians per model).
"""

from __future__ import annotations

import argparse
import json
import time

import pandas as pd
import torch

from crossholder import data, hessian, models, paths, store
from crossholder.hessian import flat_norm, normalize

STEPS = (1, 2, 4, 8)
TOP = 6


def _power_estimates(model, x, t, j, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """``||H v_k||`` and ``|v_k^T H v_k|`` after ``k`` power steps from a seeded Gaussian, ``k`` in STEPS.

    ``H v_k`` is both the estimate at step ``k`` and the product of step ``k + 1``: one product a step.
    """
    v = normalize(torch.randn(x.shape, generator=gen, dtype=x.dtype), 2.0)
    hv = hessian.hvp(model, x, t, j, v)
    out: dict[str, torch.Tensor] = {}
    for k in range(1, max(STEPS) + 1):
        v = normalize(hv, 2.0)
        hv = hessian.hvp(model, x, t, j, v)
        if k in STEPS:
            out[f"norm_{k}"] = flat_norm(hv)
            out[f"rayleigh_{k}"] = (hv * v).flatten(1).sum(1).abs()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="mnist", choices=list(data.MEAN_STD))
    ap.add_argument("--n", type=int, default=16, help="test images (the first n of the test set)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the power method's starting directions")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.n < 1:
        raise SystemExit(f"--n={args.n}: must be >= 1")
    torch.set_num_threads(args.threads)
    t0 = time.time()
    registry = store.read_json(paths.results_dir() / "models.json", {})
    keys = sorted(k for k in registry if k.split("/")[0] == args.dataset)
    if not keys:
        raise SystemExit(f"no {args.dataset} model in results/models.json; train them first (notebook 02)")
    X, Y = data.tensors(args.dataset, "test")
    x, y = X[: args.n].double(), Y[: args.n]
    rows = []
    for key in keys:
        ckpt = registry[key]["checkpoint"]
        m = models.load(paths.project_root() / ckpt).double().eval()
        with torch.no_grad():
            _, j = hessian.resolve_pairs(m(x), y, "runner_up")
        ev = hessian.hessian_spectrum(m, x, y, j)
        lam1 = ev[:, 0].abs()
        opposite = torch.where(torch.sign(ev) != torch.sign(ev[:, :1]), ev.abs(), torch.zeros_like(ev)).amax(1)
        gen = torch.Generator().manual_seed(args.seed)
        est = _power_estimates(m, x, y, j, gen)
        for b in range(args.n):
            row = {"model": key, "checkpoint": ckpt, "example": b, "label": int(y[b]), "runner_up": int(j[b]),
                   "op_norm": float(lam1[b]), "second_over_first": float(ev[b, 1].abs() / lam1[b]),
                   "opposite_sign_over_first": float(opposite[b] / lam1[b])}
            row.update({f"lambda_{i + 1}": float(ev[b, i]) for i in range(TOP)})
            row.update({f"{name}_over_op_norm": float(val[b] / lam1[b]) for name, val in est.items()})
            rows.append(row)
        print(f"[spectrum] {key}: median |λ1| {lam1.median():.4g}, median |λ2|/|λ1| "
              f"{float(torch.tensor([r['second_over_first'] for r in rows[-args.n:]]).median()):.3f}", flush=True)
    df = pd.DataFrame(rows)
    out = paths.results_dir() / args.dataset / "hessian" / "spectrum-top.csv"
    store.atomic_write_text(out, df.to_csv(index=False))
    store.atomic_write_json(out.with_suffix(".json"), store.provenance(
        params={"dataset": args.dataset, "n": args.n, "pair": "true class vs runner-up", "dtype": "float64",
                "power_steps": list(STEPS), "top": TOP, "models": {k: registry[k]["checkpoint"] for k in keys}},
        seed=args.seed, profile="cpu", wall_time_s=time.time() - t0, file=paths.relative_to_root(out)))
    cols = ["op_norm", "second_over_first", "opposite_sign_over_first"] + [
        f"{n}_{k}_over_op_norm" for k in STEPS for n in ("norm", "rayleigh")]
    med = df.groupby("model")[cols].median().round(3)
    print(med.T.to_string())
    print(json.dumps({"file": str(paths.relative_to_root(out)), "median": med.to_dict(orient="index")}))


if __name__ == "__main__":
    main()
