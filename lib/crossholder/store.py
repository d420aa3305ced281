"""The store: where results and figures live, what a run's identity is, and how files are written.

This is the one module that knows

* the **layout** of ``results/`` and ``figures/`` beyond their roots (:mod:`crossholder.paths`, which
  honours every ``CROSSHOLDER_*`` variable): variants (:func:`variant_name`, :func:`variant_dirs`,
  :func:`figure_name`) and the per-dataset folders (:func:`dataset_dir`);
* **run identity** (:func:`canonical`, :func:`run_id`): a hash of a run's parameters in canonical form,
  so that one configuration has one identity whatever the types its numbers arrive in;
* **provenance** (:func:`provenance`, :func:`summary_record`, :func:`git_commit`);
* **writing** (:func:`atomic_write`, the one temporary-file-then-rename writer, with
  :func:`atomic_write_text` and :func:`atomic_write_json` on top), reading (:func:`read_json`) and
  concurrent updates of shared JSON files (:func:`update_json`, under a file lock);
* **cached tables** (:func:`cached_table`): a computed DataFrame saved under its identity with a
  sidecar, loaded when asked again.

Canonical numbers (:func:`canonical`): a number is a float, or an int under the keys of
:data:`INT_KEYS` (counts, sizes, seeds, iteration numbers); so ``eps=5`` and ``eps=5.0`` (and
``numpy.float32(5)``) hash equal, and ``epochs=10.0`` hashes as ``epochs=10``. Every id committed in
``results/`` re-derives under this rule (``tests/test_store.py``), so no file had to move.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import numbers
import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Callable, Iterator

from . import paths
from .errors import not_allowed

__all__ = ["INT_KEYS", "canonical", "plain", "run_id", "fingerprint", "git_commit", "provenance",
           "summary_record", "atomic_write", "atomic_write_text", "atomic_write_json", "read_json", "update_json",
           "locked", "cached_csv", "cached_table", "variant_name", "variant_dirs", "cache_dir", "figure_name", "dataset_dir",
           "VARIANT_CHARS"]


# ---------------------------------------------------------------- identity
#: Keys whose numbers are integers in a run's identity (counts, sizes, seeds, iteration numbers);
#: every other number is a float. A non-integral value under one of these keys is an error.
INT_KEYS = frozenset({
    "apgd_iter", "apgd_targets", "at_steps", "batch", "batch_size", "chunk", "cold_iters", "curve_n", "epochs",
    "fab_iter", "fab_targets", "faithful_rounds", "fast_cold_iters", "fast_inner_iters", "h_ramp_epochs",
    "inner_iters", "iters", "k", "lanczos_iters", "max_products", "n", "n_attack", "n_examples", "n_train",
    "n_val", "points", "power_steps", "probe", "products", "queries", "restarts", "rounds", "seed", "seeds",
    "steps", "strong_n", "top", "warmup_epochs", "warmup_iters", "cure_h_ramp_epochs", "eval_n", "eval_n_v1",
    "eval_steps", "eval_restarts", "hessian_n", "autoattack_n", "n_first", "until",
})


def _number(value: Any, key: str | None) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if key in INT_KEYS:
        if isinstance(value, numbers.Integral):
            return int(value)                  # exact, however large
        f = float(value)
        if not f.is_integer():
            raise not_allowed(key, value, "an integer (it counts something)")
        return int(f)
    f = float(value)
    if math.isinf(f):
        return "inf" if f > 0 else "-inf"
    if math.isnan(f):
        raise not_allowed(key or "value", value, "a number that is not NaN (a NaN cannot name a run)")
    return f


def canonical(obj: Any, key: str | None = None) -> Any:
    """``obj`` in canonical form for hashing and for sidecars: dicts with ``str`` keys in sorted order,
    tuples as lists, numbers (Python, numpy, 0-d tensors) as ``float``, or ``int`` under the keys of
    :data:`INT_KEYS`; ``bool``, ``None`` and strings as they are; infinities as ``"inf"``/``"-inf"``.

    Raises:
        ValueError: a non-integral number under an integer key, or a NaN.
    """
    if isinstance(obj, dict):
        return {str(k): canonical(v, str(k)) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [canonical(v, key) for v in obj]
    if isinstance(obj, (bool, str)) or obj is None:
        return obj
    if isinstance(obj, numbers.Number) or (hasattr(obj, "item") and getattr(obj, "ndim", None) == 0):
        return _number(obj.item() if hasattr(obj, "item") else obj, key)
    if isinstance(obj, Path):
        return obj.as_posix()
    return obj


def plain(obj: Any) -> Any:
    """``obj`` as sidecars store it: dicts key-sorted, tuples as lists, infinite floats as ``"inf"``, every
    other value as it is (numbers keep their type, so rewriting a file from the same inputs gives the same
    bytes). Identity uses :func:`canonical`."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in sorted(obj.items())}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, float) and math.isinf(obj):
        return "inf"
    return obj


def run_id(params: dict[str, Any], *, length: int = 10) -> str:
    """Short SHA-256 of the canonical JSON of ``params`` (include profile, seed and code version)."""
    blob = json.dumps(canonical(params), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def fingerprint(*tensors: Any) -> str:
    """SHA-256 (16 hex digits) of tensors' shapes, dtypes and bytes (on the CPU, contiguous): what an
    evaluation attacked, so that a resumed or cached run can check it is given the same images."""
    import torch

    h = hashlib.sha256()
    for t in tensors:
        t = torch.as_tensor(t).detach().cpu().contiguous()
        h.update(f"{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- provenance
def git_commit() -> str:
    """The commit of the code that runs: HEAD of the git checkout this package was imported from, with
    ``+dirty`` when its lib/ has uncommitted changes; ``unknown`` outside git (a wheel install).

    The checkout of the code, not ``CROSSHOLDER_ROOT``: a background run may import a frozen copy of
    the library (``PYTHONPATH=<worktree>/lib``) while writing into another checkout's ``results/``."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "lib"], cwd=root, capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return (head or "unknown") + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance(*, params: dict[str, Any], seed: int, profile: str, wall_time_s: float | None = None,
               device: str = "cpu", **extra: Any) -> dict[str, Any]:
    """The provenance sidecar: parameters, seed, profile, git commit, library versions, device, wall time,
    memory allocator (:func:`crossholder.experiments.tune_allocator`'s description, if it ran)."""
    import numpy
    import torch
    import torchvision

    from .experiments import allocator_state

    if str(device).startswith("cuda") and torch.cuda.is_available():
        dev = f"{device} ({torch.cuda.get_device_name()})"
    else:
        dev = f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    out = {
        "params": plain(params),
        "seed": seed,
        "profile": profile,
        "git_commit": git_commit(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": torchvision.__version__, "numpy": numpy.__version__},
        "device": dev,
        "wall_time_s": None if wall_time_s is None else round(float(wall_time_s), 2),
        "allocator": allocator_state(),
    }
    out.update(extra)
    return out


def summary_record(*, params: dict[str, Any], seed: int, profile: str, inputs: dict[str, Any] | None = None,
                   wall_time_s: float | None = None, **extra: Any) -> dict[str, Any]:
    """The sidecar of a summary assembled from cached results (``results/<dataset>/robustness.json``):
    parameters, seed, profile, the input files and their summed wall time, and nothing that changes
    when the same results are assembled again (no commit, versions, device or allocator: each input's
    own sidecar holds its provenance). Re-running a notebook on unchanged results rewrites the same bytes.
    """
    out = {"params": plain(params), "seed": seed, "profile": profile}
    if inputs is not None:
        out["inputs"] = inputs
    if wall_time_s is not None:
        out["wall_time_s"] = round(float(wall_time_s), 2)
    return {**out, **extra}


# ---------------------------------------------------------------- files
def atomic_write(path: str | os.PathLike[str], write: Callable[[Any], None], *, binary: bool = False) -> Path:
    """Call ``write(f)`` on a temporary file next to ``path`` (ordinary permissions), then rename it to
    ``path``: readers see the old file or the whole new one, never a half-written file; on an error
    the temporary file is removed and ``path`` is untouched. The project's one such writer."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = paths.temp_beside(path)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) atomically (:func:`atomic_write`)."""
    return atomic_write(path, lambda f: f.write(text))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` (:func:`plain`) as indented, key-sorted JSON atomically."""
    return atomic_write_text(path, json.dumps(plain(obj), indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike[str], default: Any = None) -> Any:
    """The JSON at ``path``, or ``default`` when there is no such file."""
    path = Path(path)
    if not path.exists():
        return default
    return json.loads(path.read_text(encoding="utf-8"))


@contextlib.contextmanager
def locked(path: str | os.PathLike[str]) -> Iterator[None]:
    """An exclusive lock (``flock`` on ``.<name>.lock`` beside ``path``) for a read-modify-write of ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def update_json(path: str | os.PathLike[str], key: str, value: Any) -> dict[str, Any]:
    """Set ``key`` in the JSON object at ``path`` under a file lock (concurrent runs), atomically."""
    path = Path(path)
    with locked(path):
        data = read_json(path, {}) or {}
        data[key] = value
        atomic_write_json(path, data)
    return data


def cached_csv(path_stem: str | os.PathLike[str], params: dict[str, Any], *, seed: int, profile: str,
               code_version: str) -> Path:
    """The CSV path :func:`cached_table` uses for these arguments (files beside it share its stem)."""
    rid = run_id({**params, "seed": seed, "profile": profile, "code": code_version})
    return cache_dir(profile) / f"{path_stem}-{rid}.csv"


def cached_table(path_stem: str | os.PathLike[str], params: dict[str, Any], compute, *, seed: int, profile: str,
                 code_version: str, device: str = "cpu", force: bool = False):
    """Load ``<results>/<path_stem>-<id>.csv`` if it exists, else ``compute()`` it and save it with a sidecar.

    The file lives under :func:`cache_dir` of ``profile``. ``compute`` returns a pandas DataFrame. The id hashes ``params``, ``seed``, ``profile`` and
    ``code_version``; the JSON sidecar next to the CSV holds the provenance. Returns
    ``(DataFrame, csv_path, sidecar_dict)``; the DataFrame is always the one read back from the CSV,
    so a notebook shows the same table whether it computed it or loaded it.
    """
    import time

    import pandas as pd

    csv = cached_csv(path_stem, params, seed=seed, profile=profile, code_version=code_version)
    rid = csv.stem.rsplit("-", 1)[1]
    side = csv.with_suffix(".json")
    if csv.exists() and side.exists() and not force:
        return pd.read_csv(csv), csv, read_json(side)
    t0 = time.perf_counter()
    df = compute()
    wall = time.perf_counter() - t0
    record = provenance(params={**params, "code": code_version}, seed=seed, profile=profile, wall_time_s=wall,
                        device=device, run_id=rid,
                        file=paths.relative_to_root(csv), rows=len(df))
    atomic_write_text(csv, df.to_csv(index=False))
    atomic_write_json(side, record)
    # what a later call loads (None -> NaN, dtypes as read): the first run prints what a rerun prints
    return pd.read_csv(csv), csv, record


# ---------------------------------------------------------------- layout: variants and folders
#: Characters allowed in a variant name (it becomes a folder name).
VARIANT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._=+-")


def variant_name(profile: str, changed: dict[str, Any] | None = None) -> str:
    """The name of a run's *variant*: ``""`` for the canonical run (the ``cpu`` profile with the
    defaults, what the committed results and figures stand on), else the profile and the
    parameters that differ from its defaults, e.g. ``"smoke"``, ``"cpu-seed=1"``,
    ``"smoke-lam1=0.1"`` (keys sorted; characters outside ``[A-Za-z0-9._=+-]`` become ``_``; a name
    over 64 characters becomes the profile and a hash of the changes, :func:`run_id`).

    A variant writes its registrations, summaries and figures under :func:`variant_dirs`, so a run
    at another profile or with other parameters never replaces a committed file.
    """
    from .experiments import check_profile

    check_profile(profile)
    changed = dict(changed or {})
    if not changed:
        return "" if profile == "cpu" else profile
    parts = [profile] + [f"{k}={changed[k]}" for k in sorted(changed)]
    name = "".join(c if c in VARIANT_CHARS else "_" for c in "-".join(parts))
    return name if len(name) <= 64 else f"{profile}-{run_id(changed)}"  # a folder name stays short


def variant_dirs(variant: str) -> tuple[Path, Path]:
    """``(results, figures)`` folders of a variant (:func:`variant_name`): ``results/`` and
    ``figures/`` for the canonical run ``""``, else ``results/variants/<variant>/`` and
    ``figures/variants/<variant>/``. Content-addressed caches (checkpoints, per-model curves,
    cached tables: file names carry a hash of their parameters) are shared by every variant of a
    profile, under :func:`cache_dir`."""
    if variant and (set(variant) - VARIANT_CHARS or variant.startswith(".")):
        raise not_allowed("variant", variant, "characters [A-Za-z0-9._=+-], not starting with '.'")
    if not variant:
        return paths.results_dir(), paths.figures_dir()
    return paths.results_dir() / "variants" / variant, paths.figures_dir() / "variants" / variant


def cache_dir(profile: str) -> Path:
    """Root of the content-addressed caches of runs at ``profile``: checkpoints and training logs,
    per-model curves and per-example rows, grid points, cached tables (their file names carry a hash
    of their parameters, so every variant of the profile shares them).

    ``results/`` for ``cpu``, the profile the committed results stand on; ``results/variants/<profile>/``
    for any other, so a run at ``smoke`` or ``paper`` never writes beside the committed caches. Its
    summaries and registrations (:func:`variant_dirs` of ``"smoke"``, ``"smoke-lam2=0"``, ...) sit in
    the same ``results/variants/`` folder. ``results/variants/smoke*/`` and ``figures/variants/smoke*/``
    are gitignored: a smoke run checks the pipeline and is never a result.

    Raises:
        ValueError: an unknown profile.
    """
    from .experiments import check_profile

    check_profile(profile)
    return paths.results_dir() if profile == "cpu" else paths.results_dir() / "variants" / profile


def figure_name(variant: str, name: str) -> str:
    """``name`` for the canonical run, else ``variants/<variant>/<name>`` (:func:`crossholder.plotting.save`
    writes it under ``figures/``)."""
    variant_dirs(variant)  # checks the name
    return name if not variant else f"variants/{variant}/{name}"


def dataset_dir(dataset: str, variant: str = "") -> Path:
    """``<results>/<dataset>`` of ``variant`` (:func:`variant_dirs`): where its summaries live."""
    return variant_dirs(variant)[0] / dataset
