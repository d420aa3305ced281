"""Speed and accuracy of the input-Hessian routines, measured side by side in one run.

Prints:
1. the cost of one Hessian-vector product relative to one plain forward+backward (input gradient)
   on the same batch, for each backend;
2. the time to estimate |Hv*| for the whole 10,000-image MNIST test set at T = 10 (Lanczos with 10
   products, our default, and the paper's ascent with T = 10 steps);
3. each method's median relative error against the exact spectral norm (full float64 Hessian,
   ``torch.linalg.eigvalsh``) on a subsample, at 5, 10 and 20 products.

The last line is one JSON object. Usage: ``python benchmarks/bench_hessian.py [--exact-n 8]``.
The model is the registered undefended MNIST model (``results/models.json``) when it exists,
otherwise a freshly initialized paper CNN (said in the output).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from crossholder import data, hessian, models, training


def best_time(fn, repeat: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--exact-n", type=int, default=8, help="examples with a full float64 Hessian")
    ap.add_argument("--batch", type=int, default=1000)
    args = ap.parse_args()
    torch.manual_seed(0)
    try:
        model, rec = training.load_registered("mnist", "none")
        which = f"registered mnist/none ({rec['checkpoint']})"
    except KeyError:
        model, which = models.paper_cnn("mnist").eval(), "untrained paper CNN (no registered mnist/none model)"
    print(f"model: {which}; threads: {torch.get_num_threads()}")
    x, y = data.tensors("mnist", "test")
    xb = x[: args.batch]
    with torch.no_grad():
        tb = model(xb).argmax(1)

    def fwd_bwd():
        xr = xb.detach().requires_grad_(True)
        torch.autograd.grad(model(xr).sum(), xr)

    t_fb = best_time(fwd_bwd)
    v = torch.randn_like(xb)
    ratios = {}
    for backend in hessian.BACKENDS:
        H = hessian.HVPOperator(model, xb, tb, "runner_up", backend=backend)
        ratios[backend] = best_time(lambda: H(v)) / t_fb
        H.release()
    print(f"batch {args.batch}: forward+backward {t_fb * 1e3:.1f} ms; one HVP relative to it: "
          + ", ".join(f"{k} {r:.2f}x" for k, r in ratios.items()))

    with torch.no_grad():
        t_all = torch.cat([model(x[i:i + 1000]).argmax(1) for i in range(0, len(x), 1000)])

    def whole_test_set(method: str) -> float:
        t0 = time.perf_counter()
        for i in range(0, len(x), args.batch):
            hessian.operator_norm(model, x[i:i + args.batch], t_all[i:i + args.batch], "runner_up",
                                  method=method, iters=10, seed=i)
        return time.perf_counter() - t0

    t_lz = whole_test_set("lanczos")
    t_asc = whole_test_set("ascent")
    print(f"|Hv*| for all {len(x)} test images at T = 10: lanczos {t_lz:.1f} s, paper's ascent {t_asc:.1f} s "
          f"(target: < 300 s)")

    # accuracy against the exact norm (float64)
    m64 = models.paper_cnn("mnist").double()
    m64.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    m64.eval()
    xe = x[: args.exact_n].double()
    with torch.no_grad():
        te = m64(xe).argmax(1)
        _, je = hessian.resolve_pairs(m64(xe), te, "runner_up")
    t0 = time.perf_counter()
    exact = []
    for b in range(args.exact_n):
        Hm = hessian.full_hessian(m64, xe[b], te[b], je[b])
        exact.append(torch.linalg.eigvalsh(0.5 * (Hm + Hm.T)).abs().max())
    exact = torch.stack(exact)
    print(f"exact norms of {args.exact_n} examples from full Hessians in {time.perf_counter() - t0:.0f} s")
    errors: dict[str, dict[int, float]] = {}
    for method in ("lanczos", "power", "ascent"):
        errors[method] = {}
        for products in (5, 10, 20):
            # ascent spends 2 products per step (+1): the same budget of products for every method
            iters = products if method != "ascent" else max(1, (products - 1) // 2)
            r = hessian.operator_norm(m64, xe, te, je, method=method, iters=iters, seed=1)
            rel = ((exact - r.norm).abs() / exact).tolist()
            errors[method][products] = statistics.median(rel)
        print(f"{method:8s} median relative error at 5/10/20 products: "
              + " / ".join(f"{errors[method][k]:.2e}" for k in (5, 10, 20)))
    out = {
        "model": which,
        "hvp_vs_fwd_bwd": round(ratios["explicit"], 3),
        "hvp_vs_fwd_bwd_reverse": round(ratios["reverse"], 3),
        "hvp_vs_fwd_bwd_func": round(ratios["func"], 3),
        "test_set_T10_seconds": round(t_lz, 1),
        "test_set_ascent_T10_seconds": round(t_asc, 1),
        "lanczos10_median_rel_err": errors["lanczos"][10],
        "median_rel_err": errors,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
