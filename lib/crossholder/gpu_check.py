"""One command for a lent GPU: does the pipeline run on this device, what does the ``paper`` profile
cost here, and does the device compute what the CPU computes? (``make gpu-check DEVICE=cuda``)

Three parts, each through the library's own code paths:

1. **Notebooks**: every computing notebook (01-04, :data:`NOTEBOOKS`) at the ``smoke`` profile on the
   device, through papermill, into a temporary folder. Their caches and summaries land under
   ``results/variants/smoke/`` (:func:`crossholder.store.cache_dir`, gitignored). Notebooks 05-10
   only read the committed results and never touch a device, so they are not run here.
2. **Units of the** ``paper`` **profile** (:data:`SCALES`), in a temporary results folder (nothing
   is cached or registered):

   * ``train_epoch``: one epoch of all-class Cross-Hölder training on MNIST
     (:func:`crossholder.training.train` of :func:`crossholder.training.final_config` at ``paper``,
     ``max_epochs=1``): seconds per epoch, and the 10 epochs of a paper run extrapolated;
   * ``strongest``: the ``strongest`` evaluation (:func:`crossholder.evaluation.evaluate_model`,
     the paper profile's ε grid, steps and restarts) of the registered MNIST Cross-Hölder model on
     the first ``eval_n`` test images, chunk by chunk until ``budget_s`` runs out; seconds per
     image, and 1,000 and 10,000 images extrapolated;
   * ``hv_star``: |Hv*| of the runner-up margin (:func:`crossholder.hessian.operator_norm`,
     Lanczos, 10 iterations; Figure 3's quantity) on the first ``hessian_n`` test images (the full
     test set at ``paper``): seconds per image.
3. **Agreement with the CPU** on the registered MNIST Cross-Hölder model, float32: the logits of
   256 test images, one Hessian-vector product per image of 16, and one PGD run (64 images, ε = 1.54
   pixels, 20 steps, seed 0; random starts are drawn on the CPU on either device). Reported as the
   largest absolute and relative differences and the count of PGD outcomes that differ. On
   ``cpu`` it compares the CPU with itself (a check of the code path, exact by construction).

At ``scale="smoke"`` (the default on ``cpu``; what CI runs) every unit is tiny. The report goes to
``results/gpu/<device>.json`` at ``paper`` scale and to ``results/variants/smoke/gpu/<device>.json``
at ``smoke`` (gitignored); the last line printed is the same JSON summary.

Command line: ``python -m crossholder.gpu_check --device cuda [--scale paper] [--budget-s 150]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from . import data as data_mod
from . import experiments as ex
from . import paths, store
from .errors import not_allowed

__all__ = ["NOTEBOOKS", "SCALES", "device_info", "run_notebooks", "measure_units", "agreement", "run", "main"]

#: The notebooks run at ``smoke`` on the device (05-10 read committed results only).
NOTEBOOKS = ("01_hessian_norm_estimation", "02_training", "03_hyperparameter_selection", "04_robustness")

#: The size of each unit. ``train_profile``: the profile of the one-epoch training (its training set,
#: classes); ``eval_profile``: the profile whose ε grid, steps and restarts the ``strongest`` unit uses;
#: ``eval_n``: images (chunks of ``chunk``); ``hessian_n``: images for |Hv*| (``None``: all 10,000).
SCALES: dict[str, dict[str, Any]] = {
    "smoke": {"train_profile": "smoke", "eval_profile": "smoke", "eval_n": 8, "chunk": 8, "hessian_n": 64,
              "hessian_batch": 64},
    "paper": {"train_profile": "paper", "eval_profile": "paper", "eval_n": 1000, "chunk": 100, "hessian_n": None,
              "hessian_batch": 1000},
}
#: Wall-clock budget of the ``strongest`` unit (seconds): it stops after the chunk that crosses it.
BUDGET_S = 150.0


def device_info(device: str) -> dict[str, Any]:
    """What the report names: the device, torch, CUDA and cuDNN versions, threads, the host."""
    dev = ex.check_device(device)
    info: dict[str, Any] = {"device": str(dev), "torch": torch.__version__, "cuda": torch.version.cuda,
                            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                            "host": platform.node(), "machine": platform.machine(), "threads": torch.get_num_threads()}
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        info.update({"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                     "capability": f"{props.major}.{props.minor}"})
    else:
        info["name"] = f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"
    return info


def _slug(info: dict[str, Any]) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", info["name"] if info["device"] != "cpu" else "cpu").strip("_")


@contextlib.contextmanager
def _temporary_results() -> Iterator[Path]:
    """``CROSSHOLDER_RESULTS`` and ``CROSSHOLDER_SCRATCH`` in a temporary folder for the block."""
    with tempfile.TemporaryDirectory(prefix="crossholder-gpu-check-") as tmp, \
            paths.environment(CROSSHOLDER_RESULTS=Path(tmp) / "results", CROSSHOLDER_SCRATCH=Path(tmp) / "scratch"):
        yield Path(tmp)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def run_notebooks(device: str, *, names: tuple[str, ...] = NOTEBOOKS) -> list[dict[str, Any]]:
    """Execute each notebook at ``smoke`` on ``device`` (papermill, kernel ``crossholder``) into a
    temporary folder. Returns one row per notebook: ``name``, ``seconds``, ``ok``, ``error``
    (the exception's last line, or ``None``). A failure is recorded, not raised, so the report
    still says what the other notebooks and the units did."""
    import papermill as pm

    rows = []
    with tempfile.TemporaryDirectory(prefix="crossholder-gpu-notebooks-") as tmp:
        for name in names:
            src = paths.project_root() / "notebooks" / f"{name}.ipynb"
            t0 = time.perf_counter()
            try:
                pm.execute_notebook(str(src), str(Path(tmp) / src.name), kernel_name="crossholder",
                                    parameters={"profile": "smoke", "device": device, "progress": False},
                                    cwd=str(paths.project_root() / "notebooks"), progress_bar=False)
                ok, error = True, None
            except Exception as err:   # noqa: BLE001 - recorded in the report
                ok, error = False, f"{type(err).__name__}: {str(err).strip().splitlines()[-1][:300]}"
            rows.append({"name": name, "seconds": round(time.perf_counter() - t0, 1), "ok": ok, "error": error})
    return rows


def _registered(device: str):
    from . import training

    model, rec = training.load_registered("mnist", "cross_holder")
    return model.to(ex.check_device(device)).eval(), rec


def measure_units(device: str, scale: str = "paper", *, budget_s: float = BUDGET_S,
                  progress: bool = False) -> dict[str, dict[str, Any]]:
    """One unit of each expensive step of the paper profile (module docstring), timed on ``device``.

    Returns ``{"train_epoch": ..., "strongest": ..., "hv_star": ...}``, each with its size, the
    seconds measured and the extrapolations named in the module docstring.

    Raises:
        ValueError: an unknown ``scale``, a ``budget_s`` that is not positive, an unusable device.
    """
    from . import evaluation, hessian, training

    if scale not in SCALES:
        raise not_allowed("scale", scale, list(SCALES))
    if not budget_s > 0:
        raise not_allowed("budget_s", budget_s, "a positive number of seconds")
    dev = ex.check_device(device)
    sc = SCALES[scale]
    units: dict[str, dict[str, Any]] = {}
    model, rec = _registered(device)           # from this checkout's registry, before results move
    with _temporary_results():
        cfg = training.final_config("mnist", "cross_holder", profile=sc["train_profile"])
        t0 = time.perf_counter()
        res = training.train(cfg, progress=progress, max_epochs=1, device=device)
        _sync(dev)
        sec = time.perf_counter() - t0
        n_train = cfg.n_train or len(data_mod.split_indices("train"))
        units["train_epoch"] = {"profile": cfg.profile, "classes": cfg.classes, "mode": cfg.mode,
                                "examples": int(n_train), "epochs_done": res.record.get("epochs_done", 1),
                                "seconds": round(sec, 2), "seconds_per_run_of_10_epochs": round(10 * sec, 1)}

        prof = ex.PROFILES[sc["eval_profile"]]
        x, y = data_mod.tensors("mnist", "test")
        n, chunk = sc["eval_n"], sc["chunk"]
        kw = dict(dataset="mnist", defense="cross_holder", eps_list=evaluation.eps_grid(sc["eval_profile"]),
                  steps=prof["eval_steps"], restarts=prof["eval_restarts"], seed=0, profile=sc["eval_profile"],
                  model_id=rec["run_id"], chunk=chunk, progress=progress, device=device, protocol="strongest")
        t0, done = time.perf_counter(), 0
        while done < n and time.perf_counter() - t0 < budget_s:
            done = min(done + chunk, n)
            evaluation.evaluate_model(model, x[:n], y[:n], until=done, **kw)
        _sync(dev)
        sec = time.perf_counter() - t0
        per = sec / done
        units["strongest"] = {"model": f"mnist/cross_holder {rec['run_id']}", "eval_profile": sc["eval_profile"],
                              "eps": kw["eps_list"], "steps": kw["steps"], "restarts": kw["restarts"],
                              "images_asked": n, "images_done": done, "budget_s": budget_s,
                              "seconds": round(sec, 2), "seconds_per_image": round(per, 4),
                              "seconds_per_1000_images": round(1000 * per, 1),
                              "seconds_per_10000_images": round(10000 * per, 1)}

        m = sc["hessian_n"] or len(y)
        t0 = time.perf_counter()
        norms = []
        for s in range(0, m, sc["hessian_batch"]):
            xb = x[s:s + sc["hessian_batch"]].to(dev)
            t = model(xb).argmax(1)
            norms.append(hessian.operator_norm(model, xb, t, "runner_up", method="lanczos", iters=10).norm.cpu())
        _sync(dev)
        sec = time.perf_counter() - t0
        hv = torch.cat(norms)
        units["hv_star"] = {"images": m, "method": "lanczos", "iters": 10, "j": "runner_up",
                            "seconds": round(sec, 2), "seconds_per_image": round(sec / m, 5),
                            "median_norm": round(float(hv.median()), 4)}
    return units


def agreement(device: str) -> dict[str, Any]:
    """The device against the CPU on the registered MNIST Cross-Hölder model (module docstring, part 3)."""
    from . import attacks, hessian

    dev = ex.check_device(device)
    cpu_model, _ = _registered("cpu")
    dev_model, _ = _registered(device)
    x, y = data_mod.tensors("mnist", "test")

    def diff(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
        a, b = a.detach().cpu().double(), b.detach().cpu().double()
        d = (a - b).abs().max().item()
        return {"max_abs_diff": d, "max_rel_diff": d / max(a.abs().max().item(), 1e-30)}

    xl = x[:256]
    with torch.no_grad():
        out = {"logits": {"images": 256, **diff(cpu_model(xl), dev_model(xl.to(dev)))}}
    xh = x[:16]
    t = cpu_model(xh).argmax(1)
    v = torch.randn(xh.shape, generator=torch.Generator().manual_seed(0))
    h_cpu = hessian.hvp(cpu_model, xh, t, "runner_up", v)
    h_dev = hessian.hvp(dev_model, xh.to(dev), t.to(dev), "runner_up", v.to(dev))
    out["hvp"] = {"images": 16, "j": "runner_up", **diff(h_cpu, h_dev)}
    eps = 5.0 * data_mod.MEAN_STD["mnist"][1]
    xa, ya = x[:64], y[:64]
    a_cpu = attacks.pgd(cpu_model, xa, ya, eps, steps=20, restarts=1, seed=0)
    a_dev = attacks.pgd(dev_model, xa.to(dev), ya.to(dev), eps, steps=20, restarts=1, seed=0)
    s_cpu, s_dev = a_cpu.success.cpu(), a_dev.success.cpu()
    both = s_cpu & s_dev
    norm_diff = (a_cpu.norm.cpu()[both] - a_dev.norm.cpu()[both]).abs().max().item() if both.any() else 0.0
    out["pgd"] = {"images": 64, "eps_pixel": round(eps, 4), "steps": 20, "restarts": 1, "seed": 0,
                  "fooled_cpu": int(s_cpu.sum()), "fooled_device": int(s_dev.sum()),
                  "outcomes_differ": int((s_cpu != s_dev).sum()), "max_witness_norm_diff": norm_diff}
    return out


def run(device: str = "cpu", *, scale: str | None = None, budget_s: float = BUDGET_S, notebooks: bool = True,
        progress: bool = False) -> tuple[dict[str, Any], Path]:
    """All three parts on ``device``; writes the report and returns ``(report, path)``.

    ``scale``: ``None`` picks ``"smoke"`` on ``cpu`` and ``"paper"`` on a GPU. ``notebooks=False``
    skips part 1.
    """
    info = device_info(device)       # fails at once, naming the device, if it cannot be used
    scale = scale or ("smoke" if info["device"] == "cpu" else "paper")
    if scale not in SCALES:
        raise not_allowed("scale", scale, list(SCALES))
    t0 = time.perf_counter()
    report: dict[str, Any] = {"device": info, "scale": scale}
    report["notebooks"] = run_notebooks(device) if notebooks else []
    report["units"] = measure_units(device, scale, budget_s=budget_s, progress=progress)
    report["agreement"] = agreement(device)
    folder = paths.results_dir() / "gpu" if scale == "paper" else store.cache_dir("smoke") / "gpu"
    path = folder / f"{_slug(info)}.json"
    report["provenance"] = store.provenance(params={"scale": scale, "budget_s": budget_s, "notebooks": notebooks},
                                            seed=0, profile=scale, wall_time_s=round(time.perf_counter() - t0, 1),
                                            device=info["name"], file=paths.relative_to_root(path))
    report["ok"] = all(r["ok"] for r in report["notebooks"])
    store.atomic_write_json(path, report)
    return report, path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    ap.add_argument("--scale", default=None, choices=list(SCALES),
                    help="unit sizes (default: smoke on cpu, paper on a GPU)")
    ap.add_argument("--budget-s", type=float, default=BUDGET_S,
                    help="seconds for the strongest-evaluation unit (it stops after the chunk that crosses it)")
    ap.add_argument("--no-notebooks", action="store_true", help="skip the notebooks at smoke")
    args = ap.parse_args(argv)
    try:
        report, path = run(args.device, scale=args.scale, budget_s=args.budget_s, notebooks=not args.no_notebooks)
    except ValueError as err:
        raise SystemExit(f"[crossholder] gpu-check: {err}") from None
    for r in report["notebooks"]:
        print(f"notebook {r['name']}: {'ok' if r['ok'] else 'FAILED'} in {r['seconds']} s"
              + (f" ({r['error']})" if r["error"] else ""))
    for name, u in report["units"].items():
        print(f"unit {name}: {u['seconds']} s")
    print(f"report: {paths.relative_to_root(path)}")
    print(json.dumps({"device": report["device"]["name"], "scale": report["scale"], "ok": report["ok"],
                      "units_s": {k: u["seconds"] for k, u in report["units"].items()},
                      "agreement": {k: v.get("max_rel_diff", v.get("outcomes_differ"))
                                    for k, v in report["agreement"].items()}}))
    if not report["ok"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
