"""The project's long runs as Ray tasks: trainings, grid points, evaluations and seeds.

Every step here already exists as a cached, resumable function (:func:`crossholder.training.train`,
:func:`crossholder.selection.score_point`, :func:`crossholder.evaluation.evaluate_registered`); this
module only submits them to Ray (https://docs.ray.io), which schedules them on the CPUs (and
fractions of GPUs) of one machine or of a cluster, retries a task whose worker died and hands a
task's exception, with its traceback, back to the caller.

Where the tasks run (``address``):

* ``None`` (the default): a local Ray instance started for the call and shut down after it, sized
  to this machine (``num_cpus``: all its cores unless given). Nothing to set up.
* ``"auto"``: the Ray cluster this machine belongs to (``ray start --head`` / ``ray start
  --address=...`` run beforehand); ``"host:port"``: that cluster's head node (its GCS port, 6379
  unless ``ray start`` was told otherwise); ``"ray://host:port"``: a remote cluster through Ray
  Client (port 10001 by default). An address nobody answers fails within seconds
  (:class:`ConnectionError`); so does a task the cluster has no resources for (:class:`RuntimeError`).

**What a cluster needs: a shared file system.** Tasks write ``results/`` and their resume state
(``CROSSHOLDER_SCRATCH``) directly, through the same atomic writers and file locks as a local run,
so every node must see the same project directory at the same path (an NFS mount, say) with the
package installed in the same environment, and the data sets downloaded (``make data``). The
driver passes its ``CROSSHOLDER_*`` variables (as absolute paths) to every task. Clusters without a
shared file system are not supported: a retried task would not find its checkpoint.

Resources: each task holds ``cpus`` CPUs (default 1) and runs torch with that many threads; on a GPU
(``device="cuda"``) each task holds ``gpu_fraction`` of one (default :data:`GPU_FRACTION`: four small
trainings share a GPU). A task whose worker process dies is retried up to ``retries`` times and
resumes from its last checkpoint (trainings: the last finished epoch; evaluations: the last finished
chunk of images); a task that raises is not retried, and its exception reaches the caller.

Command line (``python -m crossholder.jobs --help``)::

    python -m crossholder.jobs train --dataset mnist --defense cross_holder --seed 1
    python -m crossholder.jobs evaluate --dataset mnist --defense cross_holder --checks 200
    python -m crossholder.jobs grid --dataset mnist
    python -m crossholder.jobs seeds --seeds 1 2 [--address auto]

Trainings are the registered configurations (:func:`crossholder.training.final_config`), so a
training here is the one notebook 02 and ``results/models.json`` know.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import socket
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from . import data as data_mod
from . import experiments as ex
from . import paths, store
from .errors import not_allowed

__all__ = ["GPU_FRACTION", "RETRIES", "session", "run_tasks", "train", "evaluate", "grid", "seeds", "main"]

#: Default share of one GPU per task on a GPU machine: about four of the paper's small CNNs share one.
GPU_FRACTION = 0.25
#: Retries of a task whose worker process died (Ray's ``max_retries``); exceptions are not retried.
RETRIES = 3
#: Environment variables the workers get from the driver (where results, data and scratch live).
_ENV = ("CROSSHOLDER_ROOT", "CROSSHOLDER_RESULTS", "CROSSHOLDER_FIGURES", "CROSSHOLDER_SCRATCH", "CROSSHOLDER_DATA")
_CHECKS_HELP = ("then the AutoAttack agreement and the Square masking check of each model on its first N "
                "images (0: skip; N <= --n)")
_N_HELP = "the first N test images (default 0: the profile's, 1,000 at cpu)"
_UNTIL_HELP = "stop once the chunks below test image K are done (resumable: run again to go on)"
_ADDRESS_HELP = "allowed: None (a local Ray instance), 'auto', 'host:port' or 'ray://host[:port]'"


def _ray():
    try:
        import ray
    except ImportError as err:  # pragma: no cover - ray is a core dependency
        raise ImportError("crossholder.jobs needs Ray: pip install 'ray>=2.60'") from err
    return ray


#: Seconds a probe of a Ray address may take before the address is declared dead (Ray itself keeps
#: retrying a silent GCS for minutes).
ADDRESS_TIMEOUT_S = 5


def _resolve_auto() -> tuple[str | None, str]:
    """What ``address="auto"`` connects to, and where that came from: the ``RAY_ADDRESS`` variable, else
    the address file of the newest local cluster (Ray's own order); ``(None, "")`` when neither exists
    (Ray then fails fast by itself)."""
    env = os.environ.get("RAY_ADDRESS", "").strip()
    if env and env != "auto":
        return env, "the RAY_ADDRESS variable"
    import tempfile

    current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    if current.exists() and current.read_text().strip():
        return current.read_text().strip(), f"Ray's address file {current}"
    return None, ""


def _check_address(address: str | None) -> None:
    """Fail within :data:`ADDRESS_TIMEOUT_S` seconds on an address nobody answers, whatever ``RAY_ADDRESS``
    says (Ray itself waits minutes before giving up): an explicit address is probed as given; ``"auto"``
    is resolved as Ray resolves it (:func:`_resolve_auto`) and that address is probed. The error names
    the address and where it came from."""
    if address is None:
        return
    source = "the address argument"
    if address == "auto":
        address, source = _resolve_auto()
        if address is None:
            return
        source = f"address='auto', from {source}"
    if not isinstance(address, str) or not address:
        raise ValueError(f"address={address!r}; {_ADDRESS_HELP}")
    client = address.startswith("ray://")
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if client and not sep:
        host, port = hostport, "10001"                  # Ray Client's default port
    if not host or not port.isdigit():
        raise ValueError(f"address={address!r}; {_ADDRESS_HELP} (the address came from {source})")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=ADDRESS_TIMEOUT_S):
            pass
    except OSError as err:
        raise ConnectionError(f"address={address!r}: no Ray cluster answers there within {ADDRESS_TIMEOUT_S} s "
                              f"({err}; the address came from {source}); start one with `ray start --head`, "
                              "unset a stale RAY_ADDRESS, or run locally with address=None") from err


@contextlib.contextmanager
def session(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None
            ) -> Iterator[None]:
    """Connect to Ray for the duration of the block: a local instance (``address=None``) or a cluster.

    A local instance (never an existing cluster, even where ``RAY_ADDRESS`` is set) gets ``num_cpus``
    (default: the cores this process may use) and ``num_gpus`` (default: what torch sees) and is shut
    down at the end of the block, with every process it started. A cluster keeps
    running; only this driver disconnects. If Ray is already initialised (a caller's own
    ``ray.init``), that connection is used and left open.

    Raises:
        ValueError: a malformed ``address``. ConnectionError: nobody answers at ``address``.
    """
    ray = _ray()
    _check_address(address)
    if ray.is_initialized():
        yield
        return
    kw: dict[str, Any] = {"include_dashboard": False, "logging_level": "warning"}
    if address is None:
        import torch

        kw.update(num_cpus=num_cpus or len(os.sched_getaffinity(0)),
                  num_gpus=torch.cuda.device_count() if num_gpus is None else num_gpus)
    try:
        ray.init(address="local" if address is None else address, **kw)
    except ConnectionError as err:
        raise ConnectionError(f"address={address!r}: could not join a Ray cluster ({err})") from err
    try:
        yield
    finally:
        ray.shutdown()


def _options(cpus: int, device: str, gpu_fraction: float, retries: int) -> dict[str, Any]:
    """Ray task options: resources, retries of dead workers (not of exceptions), the driver's paths."""
    if not isinstance(cpus, int) or isinstance(cpus, bool) or cpus < 1:
        raise ValueError(f"cpus={cpus!r} must be an integer >= 1")
    if not 0 < gpu_fraction <= 1:
        raise ValueError(f"gpu_fraction={gpu_fraction!r} must be in (0, 1]")
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise ValueError(f"retries={retries!r} must be an integer >= 0")
    if device != "cpu" and not (device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit())):
        raise not_allowed("device", device, "'cpu', 'cuda' (a share of one GPU per task)")
    env = {k: str(Path(os.environ[k]).resolve()) for k in _ENV if os.environ.get(k)}
    return {"num_cpus": cpus, "num_gpus": gpu_fraction if device.startswith("cuda") else 0,
            "max_retries": retries, "retry_exceptions": False,
            **({"runtime_env": {"env_vars": env}} if env else {})}


def _check_fits(opts: dict[str, Any]) -> None:
    """Raise instead of waiting forever for resources the Ray instance or cluster does not have."""
    have = _ray().cluster_resources()
    for key, name in (("num_cpus", "CPU"), ("num_gpus", "GPU")):
        if opts[key] and have.get(name, 0) < opts[key]:
            raise RuntimeError(f"each task asks for {opts[key]} {name}, the Ray cluster has {have.get(name, 0)}: "
                               f"{'use --device cpu' if name == 'GPU' else 'lower cpus'} or add resources")


def _task_device(device: str) -> str:
    """Inside a task Ray shows only the GPU it assigned (``CUDA_VISIBLE_DEVICES``): it is ``cuda``."""
    return "cuda" if device.startswith("cuda") else device


def _threads(cpus: int) -> None:
    import torch

    torch.set_num_threads(cpus)


# ---------------------------------------------------------------- the tasks (run in Ray workers)
def _train_task(dataset: str, defense: str, profile: str, seed: int, overrides: dict[str, Any], device: str,
                register: bool, cpus: int) -> dict[str, Any]:
    from . import training

    _threads(cpus)
    cfg = training.final_config(dataset, defense, profile=profile, seed=seed, **overrides)
    p = training.run_paths(cfg)
    # epochs already done by an earlier attempt (a killed worker's retry resumes there)
    resumed = len(pd.read_csv(p["log"])) if p["state"].exists() and p["log"].exists() else 0
    res = training.train(cfg, register=register, progress=False, device=_task_device(device))
    return {"dataset": dataset, "defense": defense, "seed": seed, "run_id": cfg.run_id, "pid": os.getpid(),
            "resumed_at_epoch": resumed,
            "clean_test_accuracy": res.record.get("clean_test_accuracy"),
            "checkpoint": paths.relative_to_root(res.checkpoint)}


def _score_task(dataset: str, defense: str, hp: dict[str, Any], profile: str, seed: int, device: str,
                cpus: int) -> dict[str, Any]:
    from . import selection

    _threads(cpus)
    return selection.score_point(dataset, defense, hp, profile, seed=seed, device=_task_device(device))


def _evaluate_task(dataset: str, defense: str, profile: str, seed: int, n: int, until: int | None, checks: int,
                   protocol: str, device: str, cpus: int) -> dict[str, Any]:
    from . import evaluation

    _threads(cpus)
    device = _task_device(device)
    curve, per, side = evaluation.evaluate_registered(dataset, defense, profile=profile, seed=seed, n_examples=n,
                                                      until=until, device=device, progress=False, protocol=protocol)
    out = {"dataset": dataset, "defense": defense, "seed": seed, "done": len(per),
           "finished": curve is not None, "files": side.get("files", [side.get("partial")])}
    if checks and len(per) >= checks:
        agree, _ = evaluation.registered_checks(dataset, defense, per, checks, profile=profile, seed=seed,
                                                device=device)
        out["agreement_missed_max"] = int(agree["missed"].max())
    return out


# ---------------------------------------------------------------- the driver
def run_tasks(fn: Callable[..., Any], calls: Sequence[dict[str, Any]], *, address: str | None = None,
              cpus: int = 1, device: str = "cpu", gpu_fraction: float = GPU_FRACTION, retries: int = RETRIES,
              num_cpus: int | None = None, progress: bool = True, desc: str = "jobs") -> list[Any]:
    """Run ``fn(**call)`` for every call as a Ray task; results in the order of ``calls``.

    ``fn`` must be importable by the workers (a module-level function). Each call gets ``cpus``
    (passed to ``fn`` as ``cpus``), ``device`` and a GPU share as in :func:`_options`. Waits for every
    task; the first task that raised re-raises here (Ray's ``RayTaskError`` carries the worker's
    traceback) once the others have finished, so finished work is never lost.
    """
    ray = _ray()
    opts = _options(cpus, device, gpu_fraction, retries)
    from tqdm.auto import tqdm

    with session(address, num_cpus=num_cpus):
        _check_fits(opts)
        remote = ray.remote(fn).options(**opts)
        refs = [remote.remote(**call, cpus=cpus) for call in calls]
        pending = list(refs)
        with tqdm(total=len(refs), desc=desc, disable=not progress) as bar:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                bar.update(len(done))
        results, first_error = [], None
        for ref in refs:
            try:
                results.append(ray.get(ref))
            except Exception as err:       # noqa: BLE001 - re-raised below, after every task ended
                results.append(err)
                first_error = first_error or err
        if first_error is not None:
            raise first_error
        return results


def _unique(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``calls`` without repeats (two tasks must never run the same step at once)."""
    seen, out = set(), []
    for c in calls:
        key = store.run_id(c)          # canonical: {"eps": 5} and {"eps": 5.0} are one configuration
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out


def train(runs: Sequence[dict[str, Any]], *, profile: str = "cpu", register: bool = True, device: str = "cpu",
          **kw: Any) -> list[dict[str, Any]]:
    """Train several configurations as Ray tasks (cached and resumable, :func:`crossholder.training.train`).

    ``runs``: dicts with ``dataset``, ``defense`` and optionally ``seed`` (default 0) and
    ``overrides`` on top of the registered configuration (:func:`crossholder.training.final_config`).
    ``kw``: :func:`run_tasks`'s options.
    Returns one dict per run (``run_id``, ``clean_test_accuracy``, ``checkpoint``).
    """
    calls = _unique([{"dataset": r["dataset"], "defense": r["defense"], "profile": ex.check_profile(profile),
                      "seed": int(r.get("seed", 0)), "overrides": dict(r.get("overrides", {})), "device": device,
                      "register": register} for r in runs])
    for c in calls:
        data_mod.check_dataset(c["dataset"])
        ex.check_defense(c["defense"])
    return run_tasks(_train_task, calls, device=device, desc="train", **kw)


def evaluate(models: Sequence[dict[str, Any]], *, profile: str = "cpu", n: int = 0, until: int | None = None,
             checks: int = 0, protocol: str = "strongest", device: str = "cpu", **kw: Any) -> list[dict[str, Any]]:
    """Robustness curves of registered models as Ray tasks, under ``protocol`` (default ``"strongest"``,
    :data:`crossholder.sweeps.PROTOCOLS`; :func:`crossholder.evaluation.evaluate_registered`, each
    resuming at its last finished chunk).

    ``models``: dicts with ``dataset``, ``defense`` and optionally ``seed`` (the model's training seed,
    also the attacks' seed). ``n``: the first ``n`` test images (0: the profile's); ``until``: stop after
    the chunks below it; ``checks``: then the AutoAttack agreement and the masking table on the
    first ``checks`` images (``strongest`` only). ``kw``: :func:`run_tasks`'s options.
    """
    from . import sweeps

    protocol = sweeps.protocol_of(protocol).name
    if checks and protocol != "strongest":
        raise ValueError(f"checks={checks!r} needs protocol='strongest' (got {protocol!r})")
    if checks and n and checks > n:
        raise ValueError(f"checks={checks!r} exceeds n={n!r}: the checks run on images the curve attacked "
                         "(allowed: 0 <= checks <= n)")
    calls = _unique([{"dataset": m["dataset"], "defense": m["defense"], "profile": ex.check_profile(profile),
                      "seed": int(m.get("seed", 0)), "n": n, "until": until, "checks": checks, "protocol": protocol,
                      "device": device} for m in models])
    return run_tasks(_evaluate_task, calls, device=device, desc="evaluate", **kw)


def grid(dataset: str | Sequence[str], *, profile: str = "cpu", seed: int = 0,
         defenses: tuple[str, ...] | None = None, device: str = "cpu", **kw: Any):
    """Score every missing point of ``dataset``'s hyperparameter grid as Ray tasks, then return the
    table :func:`crossholder.selection.run_grid` builds from the cached points (the same table a
    sequential run gives: each point is computed independently with the same seed).

    A list of data sets submits all their points at once (points of the same defense first, data
    sets alternating, so every data set's first points finish early) and returns ``{dataset: table}``.
    """
    from . import selection

    many = not isinstance(dataset, str)
    datasets = list(dataset) if many else [dataset]
    todo = {d: selection.missing_points(d, profile, seed=seed, defenses=defenses) for d in datasets}
    order = list(dict.fromkeys(defense for d in datasets for defense, _ in todo[d]))
    calls = []
    for defense in order:   # round robin over the data sets, one defense at a time
        per = [[(d, hp) for dd, hp in todo[d] if dd == defense] for d in datasets]
        calls += [{"dataset": d, "defense": defense, "hp": hp, "profile": profile, "seed": seed, "device": device}
                  for group in itertools.zip_longest(*per) for d, hp in filter(None, group)]
    if calls:
        run_tasks(_score_task, calls, device=device, desc=f"{'+'.join(datasets)} grid", **kw)
    tables = {d: selection.run_grid(d, profile, seed=seed, progress=False, device=device, defenses=defenses,
                                    cached_only=True) for d in datasets}
    return tables if many else tables[datasets[0]]


def seeds(seed_list: Sequence[int] = (1, 2), *, datasets: Sequence[str] = data_mod.DATASETS,
          defenses: Sequence[str] = ex.DEFENSES, profile: str = "cpu", n: int = 0, until: int | None = None,
          checks: int = 0, device: str = "cpu", **kw: Any) -> list[dict[str, Any]]:
    """Train every registered configuration with each seed of ``seed_list`` (registered in the
    variant ``<profile>-seed=<s>``), then evaluate each with the ``strongest`` protocol on the same
    first ``n`` test images (0: the profile's); ``checks``: then the AutoAttack agreement and the
    masking table of each on its first ``checks`` images (:func:`evaluate`; 0: skip). Resumable: a
    rerun skips what is done."""
    runs = [{"dataset": d, "defense": m, "seed": s} for s in seed_list for d in datasets for m in defenses]
    with session(kw.pop("address", None), num_cpus=kw.pop("num_cpus", None)):      # one Ray instance for both
        train(runs, profile=profile, device=device, **kw)
        return evaluate(runs, profile=profile, n=n, until=until, checks=checks, device=device, **kw)


def main(argv: list[str] | None = None) -> None:
    """``python -m crossholder.jobs train|evaluate|grid|seeds ...``: the long runs through Ray."""
    common = argparse.ArgumentParser(add_help=False)   # accepted before or after the command
    common.add_argument("--address", default=argparse.SUPPRESS,
                        help="none (default): a local Ray instance; 'auto', 'host:port' or 'ray://host:port': a cluster")
    common.add_argument("--profile", default=argparse.SUPPRESS, choices=list(ex.PROFILES))
    common.add_argument("--device", default=argparse.SUPPRESS, help="cpu (default) or cuda")
    common.add_argument("--cpus", type=int, default=argparse.SUPPRESS, help="CPUs (torch threads) per task (1)")
    common.add_argument("--num-cpus", type=int, default=argparse.SUPPRESS,
                        help="CPUs of the local instance (default: all this process may use)")
    common.add_argument("--gpu-fraction", type=float, default=argparse.SUPPRESS,
                        help=f"share of a GPU per task ({GPU_FRACTION})")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], parents=[common])
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train registered configurations", parents=[common])
    t.add_argument("--dataset", action="append", choices=data_mod.DATASETS, required=True)
    t.add_argument("--defense", action="append", choices=ex.ALL_DEFENSES, required=True)
    t.add_argument("--seed", type=int, action="append", default=None)
    e = sub.add_parser("evaluate", help="robustness curves of registered models", parents=[common])
    e.add_argument("--dataset", action="append", choices=data_mod.DATASETS, required=True, help="repeatable")
    e.add_argument("--defense", action="append", choices=ex.ALL_DEFENSES, required=True, help="repeatable")
    e.add_argument("--seed", type=int, action="append", default=None, help="training seed, repeatable (default: 0)")
    e.add_argument("--n", type=int, default=0, help=_N_HELP)
    e.add_argument("--until", type=int, default=None, metavar="K", help=_UNTIL_HELP)
    e.add_argument("--checks", type=int, default=0, metavar="N", help=_CHECKS_HELP)
    e.add_argument("--protocol", default="strongest", help="strongest (default), strongest-v2 or paper-v1")
    g = sub.add_parser("grid", help="score the hyperparameter grid (notebook 03's)", parents=[common])
    g.add_argument("--dataset", action="append", choices=data_mod.DATASETS, required=True)
    g.add_argument("--defense", action="append", default=None)
    g.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("seeds", help="train and evaluate every configuration with more seeds", parents=[common])
    s.add_argument("--seeds", type=int, nargs="+", default=[1, 2],
                   help="training seeds (default: 1 2; seed 0 is the registered models, `make figures`)")
    s.add_argument("--dataset", action="append", choices=data_mod.DATASETS, default=None,
                   help="repeatable (default: both)")
    s.add_argument("--defense", action="append", choices=ex.ALL_DEFENSES, default=None, help="repeatable (default: all)")
    s.add_argument("--n", type=int, default=0, help=_N_HELP + "; `make seeds` uses 500")
    s.add_argument("--until", type=int, default=None, metavar="K", help=_UNTIL_HELP)
    s.add_argument("--checks", type=int, default=0, metavar="N", help=_CHECKS_HELP)
    args = ap.parse_args(argv)
    for name, default in (("address", None), ("profile", "cpu"), ("device", "cpu"), ("cpus", 1), ("num_cpus", None),
                          ("gpu_fraction", GPU_FRACTION)):
        if not hasattr(args, name):
            setattr(args, name, default)
    kw = dict(address=args.address, cpus=args.cpus, num_cpus=args.num_cpus, gpu_fraction=args.gpu_fraction)
    t0 = time.perf_counter()
    if args.command in ("train", "evaluate"):
        runs = [{"dataset": d, "defense": m, "seed": s} for s in (args.seed or [0]) for d in args.dataset
                for m in args.defense]
        if args.command == "train":
            out = train(runs, profile=args.profile, device=args.device, **kw)
        else:
            out = evaluate(runs, profile=args.profile, n=args.n, until=args.until, checks=args.checks,
                           protocol=args.protocol, device=args.device, **kw)
        for r in out:
            print(r)
    elif args.command == "grid":
        tables = grid(args.dataset, profile=args.profile, seed=args.seed, device=args.device,
                      defenses=tuple(args.defense) if args.defense else None, **kw)
        for d, table in tables.items():
            print(f"{d}:\n{table.to_string(index=False)}")
    else:
        for r in seeds(args.seeds, datasets=args.dataset or data_mod.DATASETS, defenses=args.defense or ex.DEFENSES,
                       profile=args.profile, n=args.n, until=args.until, checks=args.checks, device=args.device,
                       **kw):
            print(r)
    print(f"[jobs] {args.command} done in {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
