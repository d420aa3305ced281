"""Cost of one training step of each defense relative to a plain step, and fast mode's fidelity.

On the same batch of 128 MNIST training images and the same model, times one full step (forward,
loss, backward, Adam update) of: plain cross-entropy; Cross-Lipschitz over the runner-up class and
over all classes; Cross-Hölder fast mode (warm directions, 1 power step + the training product)
over the runner-up class and over all classes, and on the runner-up class with 0 power steps and
with ``WARMUP_ITERS`` (the warm-up epochs of ``TrainConfig.warmup_epochs``), and (``_bf16``, compiled)
the same with the power steps in bfloat16 (``power_dtype="bfloat16"``), and (``_bstep``) with
``backward_step=True`` (the backward pass's free power step; ``_0_bstep``: the training product and
that step only, two products per visit like the default's one power step + the training product);
every fast step includes reading the next directions (``RegularizedLoss.next_directions``) after
the backward pass; Cross-Hölder faithful
mode (Algorithm 1: fresh directions, T = 10 ascent steps of o = 0.1, all classes); PGD adversarial
training (10 steps); the ablations (eager): Cross-Hölder with |Hg| (``inner="gradient"``, runner-up) and CURE.
Timings are interleaved (each round times every variant once) and the minimum over rounds is kept.
The process's allocator is tuned as training tunes it (``experiments.tune_allocator``) unless
``--default-allocator`` is given.

Fidelity: fast mode's ||H v|| against a cold-start Lanczos estimate with 50 products on the same
examples, at the end of every epoch of a real training run (the ``fidelity_median`` column of the
Cross-Hölder training logs in results/; if there is none, a short fast-mode run is made here).

Usage: ``python benchmarks/bench_training.py [--rounds 5]``. The last JSON line printed is the summary;
it is also written, with every variant's time and the provenance, to
``results/mnist/benchmarks/step-cost.json``, and its ratios are appended as one row to
``results/mnist/benchmarks/step-cost-history.csv``: the ratios move by several percent from one
idle run to the next on this machine, so the README reports the latest run and the range.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from crossholder import attacks, data, experiments, models, paths, regularizers, store, training


WARMUP_ITERS = 4   # power steps per visit in the warm-up epochs of the fidelity run (README, fidelity table)


HISTORY_KEYS = ("plain_step_ms", "threads")


def history_row(summary: dict, provenance: dict, measured_at: str) -> dict:
    """One row of ``step-cost-history.csv``: when, which commit, and every ratio of the summary."""
    row = {"measured_at": measured_at, "git_commit": provenance.get("git_commit"),
           "compiled": summary.get("compiled")}
    row.update({k: v for k, v in summary.items()
                if k in HISTORY_KEYS or k.endswith("_vs_plain") or k.endswith("_vs_cross_lipschitz_all")})
    return row


def append_history(path: Path, row: dict) -> None:
    """Append ``row`` to the CSV at ``path`` (atomically: the file is rewritten through a temporary file)."""
    old = pd.read_csv(path) if path.exists() else pd.DataFrame()
    new = pd.concat([old, pd.DataFrame([row])], ignore_index=True)
    store.atomic_write_text(path, new.to_csv(index=False))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--faithful-rounds", type=int, default=1, help="faithful mode is ~100x slower")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    ap.add_argument("--default-allocator", action="store_true",
                    help="leave glibc malloc at its defaults (training.train tunes it: experiments.tune_allocator)")
    args = ap.parse_args()
    t_start = time.perf_counter()
    allocator = "default" if args.default_allocator else experiments.tune_allocator()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x, y = data.tensors("mnist", "train")
    # the layout the training loop uses (training.train: channels_last, mkldnn's fast NHWC convolutions)
    xb, yb = x[:128].contiguous(memory_format=torch.channels_last), y[:128]
    model = models.paper_cnn("mnist").to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    lam1, lam2 = experiments.PAPER["mnist"]["cross_holder"]["lam1"], experiments.PAPER["mnist"]["cross_holder"]["lam2"]
    iters = experiments.TRAINING_CHOICES["fast_inner_iters"]
    g = torch.Generator().manual_seed(0)
    v1 = torch.randn(128, 1, 1, 28, 28, generator=g)
    v9 = torch.randn(128, 9, 1, 28, 28, generator=g)
    eps_at = 5.0 * data.MEAN_STD["mnist"][1]
    compiled_ok, why = regularizers.compile_available()
    use_compile = compiled_ok and not args.no_compile

    def step(loss_fn):
        def run():
            out = loss_fn()
            loss = out.loss if isinstance(out, regularizers.RegularizedLoss) else out
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if isinstance(out, regularizers.RegularizedLoss):
                out.next_directions()      # what training keeps (after the backward pass for backward_step)
            opt.step()
        return run

    def reg(c: bool, **kw):
        return lambda: regularizers.regularized_loss(model, xb, yb, compiled=c, **kw)

    variants = {"plain": step(lambda: F.cross_entropy(model(xb), yb))}
    for c in ([False, True] if use_compile else [False]):
        sfx = "_compiled" if c else ""
        if c:
            plain_c = torch.compile(lambda: F.cross_entropy(model(xb), yb))
            variants["plain_compiled"] = step(plain_c)
        variants.update({
            f"cross_lipschitz_runner_up{sfx}": step(reg(c, lam1=0.2, classes="runner_up")),
            f"cross_lipschitz_all{sfx}": step(reg(c, lam1=0.2, classes="all")),
            f"cross_holder_fast_runner_up{sfx}": step(reg(c, lam1=lam1, lam2=lam2, classes="runner_up", v0=v1,
                                                          inner="power", inner_iters=iters)),
            f"cross_holder_fast_runner_up_0{sfx}": step(reg(c, lam1=lam1, lam2=lam2, classes="runner_up", v0=v1,
                                                            inner="power", inner_iters=0)),
            f"cross_holder_fast_all{sfx}": step(reg(c, lam1=lam1, lam2=lam2, classes="all", v0=v9, inner="power",
                                                    inner_iters=iters)),
        })
        if c or not use_compile:
            # the warm-up epochs of a run with warmup_iters=WARMUP_ITERS (training.TrainConfig.iters_at)
            variants[f"cross_holder_fast_runner_up_{WARMUP_ITERS}{sfx}"] = step(reg(
                c, lam1=lam1, lam2=lam2, classes="runner_up", v0=v1, inner="power", inner_iters=WARMUP_ITERS))
            # the power steps (direction search only) in bfloat16: regularized_loss(power_dtype="bfloat16")
            for name, cls, v0, k in (("runner_up", "runner_up", v1, iters), ("all", "all", v9, iters),
                                     (f"runner_up_{WARMUP_ITERS}", "runner_up", v1, WARMUP_ITERS)):
                variants[f"cross_holder_fast_{name}_bf16{sfx}"] = step(reg(
                    c, lam1=lam1, lam2=lam2, classes=cls, v0=v0, inner="power", inner_iters=k,
                    power_dtype="bfloat16"))
            # backward_step=True: the backward pass's gradient w.r.t. v is one more power step
            for name, cls, v0, k in (("runner_up_0", "runner_up", v1, 0), ("all_0", "all", v9, 0),
                                     ("runner_up", "runner_up", v1, iters)):
                variants[f"cross_holder_fast_{name}_bstep{sfx}"] = step(reg(
                    c, lam1=lam1, lam2=lam2, classes=cls, v0=v0, inner="power", inner_iters=k,
                    backward_step=True))
    # the ablations of issue 31 (eager: neither has a compiled path): |Hg| (eq. 5 with v = the unit margin
    # gradient: Cross-Lipschitz's step plus one input HVP) and CURE (three gradient passes)
    variants["cross_holder_hg_runner_up"] = step(reg(False, lam1=lam1, lam2=lam2, classes="runner_up",
                                                     inner="gradient", inner_iters=0))
    variants["cure"] = step(lambda: regularizers.cure_loss(model, xb, yb, gamma=4.0, h=1.5))
    variants["adversarial_10_steps"] = step(lambda: F.cross_entropy(model(attacks.pgd_last_iterate(
        model, xb, yb, eps_at, steps=10, generator=g)), yb))
    faithful = step(lambda: regularizers.regularized_loss(
        model, xb, yb, lam1=lam1, lam2=lam2, classes="all", v0=None, inner="ascent", inner_iters=10, step=0.1,
        generator=g))
    times = {k: [] for k in variants}
    for fn in variants.values():
        fn()  # warm-up (and compilation)
    for _ in range(args.rounds):
        for k, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    t_faithful = []
    for _ in range(args.faithful_rounds):
        t0 = time.perf_counter()
        faithful()
        t_faithful.append(time.perf_counter() - t0)
    best = {k: min(v) for k, v in times.items()}
    best["cross_holder_faithful_all"] = min(t_faithful)
    plain = min(best["plain"], best.get("plain_compiled", math.inf))   # the faster plain step is the reference
    print(f"threads: {torch.get_num_threads()}; channels_last; one step on a batch of 128 (best of {args.rounds}); "
          f"torch.compile: {'yes' if use_compile else 'no (' + (why or '--no-compile') + ')'}; allocator: {allocator}")
    print(f"fast Cross-Hölder: {iters} power step(s) + the training product ('_0': the training product only, "
          f"'_{WARMUP_ITERS}': {WARMUP_ITERS} power steps, the warm-up epochs)")
    for k, t in best.items():
        print(f"  {k:38s} {t * 1e3:9.1f} ms   {t / best['plain']:7.2f}x eager plain   {t / plain:7.2f}x best plain")
    sfx = "_compiled" if use_compile else ""
    ch_ru = best[f"cross_holder_fast_runner_up{sfx}"] / plain
    ch_all = best[f"cross_holder_fast_all{sfx}"] / best[f"cross_lipschitz_all{sfx}"]
    print(f"fast Cross-Hölder{' (compiled)' if use_compile else ''}, runner-up: {ch_ru:.2f}x the best plain step "
          f"(target <= 4)")
    print(f"fast Cross-Hölder{' (compiled)' if use_compile else ''}, all classes: {ch_all:.2f}x all-class "
          f"Cross-Lipschitz, same backend (target <= 3.5)")
    bf = {k: best[f"cross_holder_fast_{k}_bf16{sfx}"] for k in ("runner_up", "all", f"runner_up_{WARMUP_ITERS}")}
    print(f"  with the power steps in bfloat16: runner-up {bf['runner_up'] / plain:.2f}x plain, all classes "
          f"{bf['all'] / best[f'cross_lipschitz_all{sfx}']:.2f}x all-class Cross-Lipschitz, warm-up step "
          f"({WARMUP_ITERS} power steps) {bf[f'runner_up_{WARMUP_ITERS}'] / plain:.2f}x plain")
    bs = {k: best[f"cross_holder_fast_{k}_bstep{sfx}"] for k in ("runner_up_0", "all_0", "runner_up")}
    print(f"  with backward_step (the backward pass's free power step): 0 power steps (2 products per visit) "
          f"runner-up {bs['runner_up_0'] / plain:.2f}x plain (target <= 4), all classes "
          f"{bs['all_0'] / best[f'cross_lipschitz_all{sfx}']:.2f}x all-class Cross-Lipschitz (target <= 3.5); "
          f"{iters} power step(s) (3 products per visit) runner-up {bs['runner_up'] / plain:.2f}x plain")

    # fidelity from real training runs
    fid_rows = []
    for csv in sorted((paths.results_dir()).glob("*/training/cross_holder-*.csv")):
        side = csv.parent.parent / "models" / (csv.stem + ".json")
        if not side.exists():      # a run still training: its log is partial
            continue
        log = pd.read_csv(csv)
        hp = json.loads(side.read_text())["hyperparameters"]
        # the counts TrainConfig.iters_at uses
        sched = (f"{max(hp['inner_iters'], hp['warmup_iters'])} then {hp['inner_iters']} from epoch "
                 f"{hp['warmup_epochs'] + 1}" if hp.get("warmup_epochs") else str(hp["inner_iters"]))
        if hp.get("backward_step"):
            sched += " + backward step"
        if hp.get("power_dtype", "float32") != "float32":
            sched += f" in {hp['power_dtype']}"
        if "fidelity_median" in log:
            for _, r in log.iterrows():
                fid_rows.append({"run": csv.stem, "dataset": csv.parts[-3], "power_steps": sched,
                                 "epoch": int(r["epoch"]),
                                 "fidelity_median": float(r["fidelity_median"]),
                                 "fidelity_q10": float(r["fidelity_q10"])})
    source = "training logs in results/"
    if not fid_rows:
        source = "a short fast-mode run made here (4096 examples, 4 epochs)"
        before = os.environ.get("CROSSHOLDER_RESULTS")
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["CROSSHOLDER_RESULTS"] = tmp
            try:
                cfg = training.make_config("mnist", "cross_holder", profile="smoke", n_train=4096, epochs=4)
                log = training.train(cfg, progress=False).log
            finally:     # the caller's results folder again (deleting the variable wrote into results/)
                if before is None:
                    del os.environ["CROSSHOLDER_RESULTS"]
                else:
                    os.environ["CROSSHOLDER_RESULTS"] = before
        fid_rows = [{"run": "short", "dataset": "mnist", "epoch": int(r["epoch"]),
                     "fidelity_median": float(r["fidelity_median"]), "fidelity_q10": float(r["fidelity_q10"])}
                    for _, r in log.iterrows()]
    fid = pd.DataFrame(fid_rows)
    print(f"fidelity of fast mode (||Hv|| / cold Lanczos-50, median over a probe batch of 128), from {source}:")
    print(fid.to_string(index=False))
    later = fid[fid["epoch"] >= 2]
    fidelity_median = float(later["fidelity_median"].median()) if len(later) else float(fid["fidelity_median"].median())
    out = {
        "cross_holder_fast_runner_up_vs_plain": round(ch_ru, 3),
        "compiled": use_compile,
        "cross_holder_fast_runner_up_eager_vs_plain": round(best["cross_holder_fast_runner_up"] / best["plain"], 3),
        "cross_holder_fast_all_eager_vs_cross_lipschitz_all": round(best["cross_holder_fast_all"]
                                                                    / best["cross_lipschitz_all"], 3),
        "cross_holder_fast_all_vs_cross_lipschitz_all": round(ch_all, 3),
        "cross_holder_faithful_vs_plain": round(best["cross_holder_faithful_all"] / plain, 1),
        # same backend as the headline ratios (compiled where torch.compile works)
        "cross_lipschitz_runner_up_vs_plain": round(best[f"cross_lipschitz_runner_up{sfx}"] / plain, 3),
        "cross_lipschitz_all_vs_plain": round(best[f"cross_lipschitz_all{sfx}"] / plain, 3),
        "cross_holder_fast_all_vs_plain": round(best[f"cross_holder_fast_all{sfx}"] / plain, 3),
        "cross_holder_fast_runner_up_0_vs_plain": round(best[f"cross_holder_fast_runner_up_0{sfx}"] / plain, 3),
        f"cross_holder_fast_runner_up_{WARMUP_ITERS}_vs_plain": round(
            best[f"cross_holder_fast_runner_up_{WARMUP_ITERS}{sfx}"] / plain, 3),
        "cross_holder_fast_runner_up_bf16_vs_plain": round(bf["runner_up"] / plain, 3),
        "cross_holder_fast_all_bf16_vs_cross_lipschitz_all": round(bf["all"] / best[f"cross_lipschitz_all{sfx}"], 3),
        f"cross_holder_fast_runner_up_{WARMUP_ITERS}_bf16_vs_plain": round(bf[f"runner_up_{WARMUP_ITERS}"] / plain, 3),
        "cross_holder_fast_runner_up_0_bstep_vs_plain": round(bs["runner_up_0"] / plain, 3),
        "cross_holder_fast_all_0_bstep_vs_cross_lipschitz_all": round(bs["all_0"] / best[f"cross_lipschitz_all{sfx}"], 3),
        "cross_holder_fast_runner_up_bstep_vs_plain": round(bs["runner_up"] / plain, 3),
        "adversarial_10_steps_vs_plain": round(best["adversarial_10_steps"] / plain, 3),
        # issue 31: against the eager plain step (both ablations run eager)
        "cross_holder_hg_runner_up_vs_plain": round(best["cross_holder_hg_runner_up"] / best["plain"], 3),
        "cross_holder_hg_runner_up_vs_cross_lipschitz_runner_up": round(
            best["cross_holder_hg_runner_up"] / best["cross_lipschitz_runner_up"], 3),
        "cross_holder_hg_runner_up_vs_cross_holder_fast_runner_up": round(
            best["cross_holder_hg_runner_up"] / best["cross_holder_fast_runner_up"], 3),
        "cure_vs_plain": round(best["cure"] / best["plain"], 3),
        "plain_step_ms": round(best["plain"] * 1e3, 2),
        "best_plain_step_ms": round(plain * 1e3, 2),
        "threads": torch.get_num_threads(),
        "allocator": allocator,
        "fidelity_median": round(fidelity_median, 4),
        "fidelity_min_epoch_median": round(float(fid["fidelity_median"].min()), 4),
        "fidelity_min_epoch_median_by_run": {f"{r} ({g['power_steps'].iloc[0]} power steps)":
                                             round(float(g["fidelity_median"].min()), 4)
                                             for r, g in fid.groupby("run")} if "power_steps" in fid else {},
        "fidelity_source": source,
    }
    print(json.dumps(out))
    dest = paths.results_dir() / "mnist" / "benchmarks" / "step-cost.json"
    measured_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    prov = store.provenance(params={"rounds": args.rounds, "faithful_rounds": args.faithful_rounds,
                                          "batch": 128, "compile": use_compile, "measured_at": measured_at},
                                  seed=0, profile="cpu", wall_time_s=time.perf_counter() - t_start)
    store.atomic_write_json(dest, {
        "summary": out, "step_ms": {k: round(t * 1e3, 2) for k, t in best.items()}, "provenance": prov})
    hist = dest.with_name("step-cost-history.csv")
    append_history(hist, history_row(out, prov, measured_at))
    print(f"written: {paths.relative_to_root(dest)}; appended to {paths.relative_to_root(hist)}")


if __name__ == "__main__":
    main()
