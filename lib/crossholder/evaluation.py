"""The cached, resumable evaluation of a model (or of a data set's registered models) under a protocol.

The attacks and their curves are :mod:`crossholder.sweeps`' (no files); this module runs them chunk by
chunk over the test images, caches per-example rows and curves in ``results/<dataset>/robustness/``
under the evaluation's identity (:mod:`crossholder.store`), resumes a killed run at its next chunk,
reuses whole chunks of larger runs, upgrades version-2 rows of the ``strongest`` protocol, and has a
command line for background runs (``python -m crossholder.evaluation``). The checks of an evaluation
are :mod:`crossholder.checks`'; the paper's claims and paired tests, :mod:`crossholder.claims`'.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import data as data_mod
from . import experiments as ex
from . import guards, paths, store
from .attacks import LOSSES
from .checks import strong_checks
from . import sweeps
from .errors import not_allowed
from .sweeps import (ATTACK_COLUMNS, EVAL_CODE_VERSION, PROTOCOLS, Protocol, check_eps_list, curve_from_sweeps,
                     protocol_of, to_pixel)

__all__ = ["evaluate_dataset", "DatasetEvaluation", "settings", "evaluate_model", "evaluate_registered",
           "first_rows_so_far", "registered_checks", "eps_grid"]


def evaluate_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, dataset: str, defense: str,
                   eps_list: Sequence[float], steps: int, restarts: int, seed: int, profile: str,
                   model_id: str, chunk: int = 100, progress: bool = True,
                   reuse_larger_runs: bool = False, device: str = "cpu",
                   protocol: str = "strongest", until: int | None = None
                   ) -> tuple[pd.DataFrame | None, pd.DataFrame, dict]:
    """Cached, resumable robustness curves of one model: the paper's PGD and, with
    ``protocol="strongest"`` (the default), APGD-CE, FAB, APGD-T, FAB-T and the ``strongest`` curve
    (:func:`strong_sweep`). ``protocol="paper-v1"`` reproduces the legacy code-version-1 curves
    (PGD alone, step ``2.5 eps / steps``) only to keep the committed ones readable (:data:`crossholder.sweeps.PROTOCOLS`).

    ``"strongest"`` upgrades rather than recomputes: where the same evaluation under
    ``"strongest-v2"`` (no FAB-T) has rows, finished or in its scratch partial, each of its chunks
    gets only :func:`fab_t_step`, which gives exactly the rows of a version-3 run from scratch (same
    chunk size, device and library versions). The sidecar's costs are this run's own; ``upgraded_from``
    names the version-2 run, the chunks taken from it and its totals (its cost is not included).

    Per-example results land chunk by chunk in ``results/<dataset>/robustness/<defense>-<id>-examples.csv``
    (atomic writes; a killed run resumes at the first missing chunk), then the curve in
    ``...-<id>.csv`` with a JSON sidecar of provenance. Returns ``(curve, per_example, sidecar)``.

    ``reuse_larger_runs=True`` asserts that ``x`` is the first ``len(x)`` examples of the same
    sequence that earlier runs of this model attacked (the test set, as in
    :func:`evaluate_registered` and notebook 04): whole chunks of a finished run with the same
    protocol and seed on more examples are then taken from its per-example file instead of being
    recomputed. Each chunk is attacked independently with the same seed, so the rows are exactly
    what this run would compute; labels are checked, and the donor is named in the sidecar.

    ``device`` (``"cpu"``, ``"cuda"``) is where the attacks run; it is recorded, not part of the
    identity (random starts are drawn on the CPU either way).

    ``until``: attack only the chunks that start below this index, then stop with the run still
    unfinished and return ``(None, rows so far, progress)``; a later call goes on from there. For
    background runs cut into pieces (``--until`` of the CLI).

    Raises:
        ValueError: an unknown ``protocol``, a bad ε list, or ``until`` < 1.
    """
    if until is not None and until < 1:
        raise ValueError(f"until={until!r}; allowed: None or a positive image count")
    proto = protocol_of(protocol)
    protocol = proto.name
    dev = ex.check_device(device)
    ex.tune_allocator()
    code, step_fraction = proto.code, proto.step_fraction
    params, rid, (curve_csv, per_csv, side, partial) = _identity(
        dataset=dataset, defense=defense, model_id=model_id, eps_list=eps_list, steps=steps, restarts=restarts,
        n=len(x), seed=seed, profile=profile, protocol=protocol)
    eps = check_eps_list(eps_list)
    eps_pixel = to_pixel(eps, dataset, "paper")
    guards.check_inputs(x, y, box=True)              # before any cached row is read or computed
    inputs = store.fingerprint(x, y)
    # per chunk too: rows taken from another run (a donor on more images, version 2's rows) are checked
    # chunk by chunk against the images this call attacks (committed files without them: by their labels)
    chunk_inputs = [store.fingerprint(x[s:s + chunk], y[s:s + chunk]) for s in range(0, len(x), chunk)]
    if curve_csv.exists() and side.exists() and per_csv.exists():
        record, per = store.read_json(side), pd.read_csv(per_csv)
        _check_inputs(record.get("inputs"), inputs, per, y, per_csv)
        return pd.read_csv(curve_csv), per, record
    done = pd.read_csv(partial) if partial.exists() else pd.DataFrame()
    state = store.read_json(partial.with_suffix(".json"), {"wall_time_s": 0.0, "grad_evals": 0})
    if not done.empty:      # a resumed run must attack the images it started on: never mix two sets
        _check_inputs(state.get("inputs"), inputs, done, y, partial)
    state["inputs"], state["inputs_chunks"] = inputs, chunk_inputs
    if not done.empty and state.get("chunk", 100) != chunk:   # rows depend on the chunk (random starts per batch)
        raise ValueError(f"chunk={chunk} but {partial} was computed with chunk={state.get('chunk', 100)}: "
                         "resume with that chunk, or remove the partial to start over")
    state["chunk"] = chunk
    reused: dict[str, Any] = {}
    if reuse_larger_runs and done.empty:
        done, reused = _donor_rows(curve_csv.parent, defense, params, seed, len(x), chunk, y, code, chunk_inputs)
    strong = proto.strong
    older, v2_meta = pd.DataFrame(), {}
    if protocol == "strongest":   # the version-2 rows of the same run, finished or in progress, are upgraded
        older, v2_meta = _version2_rows(dataset=dataset, defense=defense, model_id=model_id, eps_list=eps_list,
                                        steps=steps, restarts=restarts, n=len(x), seed=seed, profile=profile)
        if v2_meta and v2_meta["chunk"] != chunk:
            older = pd.DataFrame()                     # other chunks, other rows: computed afresh
        elif v2_meta.get("inputs") not in (None, inputs) and not v2_meta.get("inputs_chunks"):
            older = pd.DataFrame()                     # version 2 attacked other images: computed afresh
    by_attack = dict(state.get("grad_evals_by_attack", {}))
    from tqdm.auto import tqdm

    model = copy.deepcopy(model).to(dev).eval()
    t0 = time.perf_counter()
    grad_evals = int(state["grad_evals"])
    starts = [s for s in range(0, len(x), chunk) if done.empty or s not in set(done["index"])]
    if until is not None and any(s >= until for s in starts):
        starts = [s for s in starts if s < until]
        stop_early = True
    else:
        stop_early = False
    for s in tqdm(starts, desc=f"{dataset}/{defense}", disable=not progress):
        xb, yb = x[s:s + chunk].to(dev), y[s:s + chunk].to(dev)
        old = older[(older["index"] >= s) & (older["index"] < s + len(xb))] if not older.empty else older
        v2_chunks = v2_meta.get("inputs_chunks") or []
        same_images = (v2_chunks[s // chunk] == chunk_inputs[s // chunk]) if s // chunk < len(v2_chunks) else \
            not v2_chunks                              # recorded: by fingerprint; not recorded: by the labels
        if same_images and len(old) == len(xb) and np.array_equal(old["label"].to_numpy(), yb.cpu().numpy()):
            part = old.reset_index(drop=True)                 # version 2's rows: only FAB-T's step is new
            v2 = {key: {"min_norm": part[f"min_norm_{key}"].to_numpy(dtype=float)}
                  for key in ("apgd_ce", "fab", "apgd_t", "strongest")}
            upgraded_rows = sweeps.fab_t_step(model, xb, yb, eps_pixel, v2, seed=seed, targets=strong["fab_targets"])
            _add_strong(part, upgraded_rows, by_attack)
            grad_evals += sum(int(r.get("grad_evals", 0)) for r in upgraded_rows.values())
            up = state.setdefault("upgraded_from", {"run_id": v2_meta["run_id"], "chunks": []})
            up["chunks"] = sorted(set(up["chunks"]) | {int(s)})
            up.update({"file": v2_meta["file"], "version2_totals": v2_meta["totals"]})
            done = _save_chunk(partial, done, part, state, t0, grad_evals, by_attack)
            continue
        part = pd.DataFrame({"index": np.arange(s, s + len(xb)), "label": yb.cpu().numpy()})
        for loss in LOSSES:
            out = sweeps.sweep(model, xb, yb, eps_pixel, loss=loss, steps=steps, restarts=restarts, seed=seed,
                        step_fraction=step_fraction)
            part[f"min_norm_{loss}"] = out["min_norm"]
            part[f"fooled_at_{loss}"] = out["fooled_at"]
            grad_evals += int(out["grad_evals"])
            by_attack[f"pgd-{loss}"] = by_attack.get(f"pgd-{loss}", 0) + int(out["grad_evals"])
        if strong:
            prior = np.minimum(part["min_norm_ce"].to_numpy(), part["min_norm_cw"].to_numpy())
            res = sweeps.strong_sweep(model, xb, yb, eps_pixel, prior_norm=prior, seed=seed,
                               fab_targets=strong.get("fab_targets", 0))
            _add_strong(part, res, by_attack)
            grad_evals += sum(int(r.get("grad_evals", 0)) for r in res.values())
        done = _save_chunk(partial, done, part, state, t0, grad_evals, by_attack)
    per = done.sort_values("index").reset_index(drop=True)
    if stop_early:
        return None, per, {"run_id": rid, "done": len(per), "n": len(x),
                           "wall_time_s": float(state["wall_time_s"]) + time.perf_counter() - t0, "partial": str(partial)}
    curve = curve_from_sweeps(per, eps, eps_pixel, defense=defense)
    wall = float(state["wall_time_s"]) + time.perf_counter() - t0
    extra = {"grad_evals_by_attack": by_attack} if strong else {}
    if "upgraded_from" in state:
        extra["upgraded_from"] = state["upgraded_from"]
    record = store.provenance(params=params, seed=seed, profile=profile, wall_time_s=wall, run_id=rid, device=str(dev),
                           grad_evals=grad_evals, chunk=chunk, code=code, inputs=inputs,
                           inputs_chunks=chunk_inputs, **extra,
                           **({"reused_from": reused} if reused else {}), naive_grad_evals=len(x) * len(LOSSES) * steps * restarts *
                           sum(1 for e in eps if e > 0),
                           files=[paths.relative_to_root(curve_csv), paths.relative_to_root(per_csv)])
    store.atomic_write_text(per_csv, per.to_csv(index=False))
    store.atomic_write_text(curve_csv, curve.to_csv(index=False))
    store.atomic_write_json(side, record)
    for f in (partial, partial.with_suffix(".json")):
        if f.exists():
            f.unlink()
    return curve, per, record


def _check_inputs(recorded: str | None, inputs: str, rows: pd.DataFrame, y: torch.Tensor, file: Path) -> None:
    """Refuse rows computed on other images than ``(x, y)``: by the recorded fingerprint
    (:func:`crossholder.store.fingerprint`), or, for files written before fingerprints were recorded,
    by the labels of the rows against ``y``.

    Raises:
        ValueError: naming both fingerprints (or the first differing label) and the file.
    """
    if recorded is not None:
        if recorded != inputs:
            raise ValueError(f"{file} holds rows of other images (inputs fingerprint {recorded}) than this call's "
                             f"(x, y) (fingerprint {inputs}): pass the images it was started on, or remove it to "
                             "start over")
        return
    idx = rows["index"].to_numpy()
    yy = y.cpu().numpy()
    bad = (idx >= len(yy)) | (yy[np.minimum(idx, len(yy) - 1)] != rows["label"].to_numpy())
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{file} holds rows of other images than this call's (x, y): row for image {int(idx[i])} "
                         f"has label {int(rows['label'].iloc[i])}, y has "
                         f"{int(yy[idx[i]]) if idx[i] < len(yy) else 'no such image'}; pass the images it was "
                         "started on, or remove it to start over")


def _add_strong(part: pd.DataFrame, res: dict[str, Any], by_attack: dict[str, int]) -> None:
    """Write :func:`strong_sweep`'s (or :func:`fab_t_step`'s) results into a chunk's rows; count grad rows."""
    names = {col: attack for attack, col in ATTACK_COLUMNS.items()}
    for key, r in res.items():
        part[f"min_norm_{key}"] = r["min_norm"]
        part[f"fooled_at_{key}"] = r["fooled_at"]
        if r.get("grad_evals"):
            by_attack[names[key]] = by_attack.get(names[key], 0) + int(r["grad_evals"])


#: order of the per-example columns (a fresh run's): PGD, then the strongest protocol's attacks
_ROW_ORDER = ["index", "label"] + [f"{k}_{c}" for c in ("ce", "cw", "apgd_ce", "fab", "apgd_t", "fab_t", "strongest")
                                   for k in ("min_norm", "fooled_at")]


def _save_chunk(partial: Path, done: pd.DataFrame, part: pd.DataFrame, state: dict, t0: float, grad_evals: int,
                by_attack: dict[str, int]) -> pd.DataFrame:
    """Append a chunk's rows to the scratch partial and its progress to the sidecar (atomic writes)."""
    done = pd.concat([done, part], ignore_index=True)
    done = done[[c for c in _ROW_ORDER if c in done] + [c for c in done if c not in _ROW_ORDER]]
    store.atomic_write_text(partial, done.to_csv(index=False))
    store.atomic_write_json(partial.with_suffix(".json"),
                         {**state, "wall_time_s": state["wall_time_s"] + time.perf_counter() - t0,
                          "grad_evals": grad_evals, "grad_evals_by_attack": by_attack})
    return done


def _version2_rows(*, dataset: str, defense: str, model_id: str, eps_list: Sequence[float], steps: int,
                   restarts: int, n: int, seed: int, profile: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The rows of the same evaluation under ``"strongest-v2"`` (finished, else its scratch partial) and
    their provenance (``run_id``, ``file``, ``chunk``, ``totals``: images, wall time and gradient rows of
    that run so far); empty when none."""
    _, rid, (_, per_csv, side, partial) = _identity(
        dataset=dataset, defense=defense, model_id=model_id, eps_list=eps_list, steps=steps, restarts=restarts,
        n=n, seed=seed, profile=profile, protocol="strongest-v2")
    for rows_file, meta_file in ((per_csv, side), (partial, partial.with_suffix(".json"))):
        if rows_file.exists() and meta_file.exists():
            rows, meta = pd.read_csv(rows_file), store.read_json(meta_file, {})
            return rows, {"run_id": rid, "file": paths.relative_to_root(rows_file),
                          "chunk": int(meta.get("chunk", 100)), "inputs": meta.get("inputs"),
                          "inputs_chunks": meta.get("inputs_chunks"),
                          "totals": {"images": len(rows), "wall_time_s": float(meta.get("wall_time_s", 0.0)),
                                     "grad_evals": int(meta.get("grad_evals", 0)),
                                     "grad_evals_by_attack": dict(meta.get("grad_evals_by_attack", {}))}}
    return pd.DataFrame(), {}


def _identity(*, dataset: str, defense: str, model_id: str, eps_list: Sequence[float], steps: int, restarts: int,
              n: int, seed: int, profile: str, protocol: str | Protocol) -> tuple[dict, str, tuple[Path, Path, Path, Path]]:
    """Parameters, run id and files ``(curve csv, per-example csv, sidecar, scratch partial)`` of one evaluation."""
    proto = protocol_of(protocol)
    code, step_fraction = proto.code, proto.step_fraction
    params = {"dataset": dataset, "defense": defense, "model": model_id, "eps": list(eps_list), "steps": steps,
              "restarts": restarts, "n": n, "eps_unit": "paper", "losses": list(LOSSES)}
    if proto.strong:     # version 2's identity named its protocol "strongest" too
        params.update({"protocol": "strongest", "step_fraction": step_fraction, "strong": dict(proto.strong)})
    rid = store.run_id({**params, "seed": seed, "profile": profile, "code": code})
    base = store.cache_dir(profile) / dataset / "robustness" / f"{defense}-{rid}"
    partial = paths.scratch_dir() / f"eval-{dataset}-{defense}-{rid}.csv"
    return params, rid, (Path(f"{base}.csv"), Path(f"{base}-examples.csv"), Path(f"{base}.json"), partial)


def _model_of(dataset: str, defense: str, profile: str, run_id: str | None,
              seed: int = 0) -> tuple[nn.Module, dict[str, Any]]:
    """The model an evaluation of ``profile`` attacks: the finished run ``run_id``, else the one registered
    for the profile and training ``seed`` (:func:`crossholder.training.profile_variant`); and its record."""
    from . import training

    if run_id is None:
        return training.load_registered(dataset, defense, training.profile_variant(profile, seed))
    return training.load_run(dataset, defense, run_id, profile=profile)


def first_rows_so_far(dataset: str, defense: str, n_first: int, *, profile: str = "cpu", seed: int = 0,
                      n_examples: int = 0, run_id: str | None = None) -> pd.DataFrame | None:
    """The per-example rows of the first ``n_first`` test images from the ``strongest`` evaluation that
    :func:`evaluate_registered` with the same arguments runs, finished or still in progress (its scratch
    partial); ``None`` when they are not all there yet. Each chunk is attacked independently, so these
    rows are the finished run's rows: the AutoAttack agreement can check the sweep's strength before
    the long run ends (``python -m crossholder.evaluation ... --checks N``).
    """
    prof = ex.PROFILES[ex.check_profile(profile)]
    n = n_examples or prof["eval_n"] or len(data_mod.tensors(dataset, "test")[1])
    rec = _model_of(dataset, defense, profile, run_id, seed)[1]
    _, _, (_, per_csv, side, partial) = _identity(
        dataset=dataset, defense=defense, model_id=rec["run_id"], eps_list=eps_grid(profile), steps=prof["eval_steps"],
        restarts=prof["eval_restarts"], n=n, seed=seed, profile=profile, protocol="strongest")
    for f in (per_csv, partial):
        if f.exists():
            rows = pd.read_csv(f).sort_values("index").reset_index(drop=True)
            if len(rows) >= n_first and np.array_equal(rows["index"].to_numpy()[:n_first], np.arange(n_first)):
                return rows.iloc[:n_first].reset_index(drop=True)
    return None


def _donor_rows(folder: Path, defense: str, params: dict, seed: int, n: int, chunk: int,
                y: torch.Tensor, code: str = EVAL_CODE_VERSION,
                chunk_inputs: list[str] | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Whole chunks ``[s, s + chunk)`` with ``s + chunk <= n`` from a finished run on more examples: only
    a donor whose chunks are these images (by their recorded fingerprints, ``chunk_inputs``; a donor
    written before fingerprints were recorded, by its labels)."""
    want = {k: v for k, v in store.plain(params).items() if k != "n"}
    for side_path in sorted(folder.glob(f"{defense}-*.json")):
        side = store.read_json(side_path, {})
        p = dict(side.get("params", {}))
        donor_n = p.pop("n", None)
        if (p != want or side.get("seed") != seed or donor_n is None or donor_n < n
                or side.get("chunk", 100) != chunk or side.get("code", "1") != code):
            continue
        per_csv = side_path.with_name(side_path.stem + "-examples.csv")
        if not per_csv.exists():
            continue
        rows = pd.read_csv(per_csv)
        full = (n // chunk) * chunk
        donor_chunks = side.get("inputs_chunks")
        if donor_chunks is not None and chunk_inputs is not None and \
                list(donor_chunks[: full // chunk]) != list(chunk_inputs[: full // chunk]):
            continue                                   # other images under the same labels: not a donor
        rows = rows[rows["index"] < full].reset_index(drop=True)
        if len(rows) != full or not np.array_equal(rows["label"].to_numpy(), y[:full].numpy()):
            continue
        share = None if side.get("wall_time_s") is None else round(side["wall_time_s"] * full / donor_n, 2)
        return rows, {"run_id": side.get("run_id"), "n": donor_n, "examples": full,
                      "file": paths.relative_to_root(per_csv), "wall_time_s_share": share}
    return pd.DataFrame(), {}


def eps_grid(profile: str, eps_max: float = 6.0, eps_step: float = 0.5) -> list[float]:
    """The ε grid in paper units: the smoke profile's short list, else 0, step, ..., eps_max."""
    if ex.check_profile(profile) == "smoke":
        return list(ex.PROFILES["smoke"]["eval_eps"])
    if not (eps_step > 0 and eps_max >= 0):
        raise ValueError(f"eps_step={eps_step!r} must be > 0 and eps_max={eps_max!r} >= 0")
    return [round(k * eps_step, 6) for k in range(int(round(eps_max / eps_step)) + 1)]


def evaluate_registered(dataset: str, defense: str, *, profile: str = "cpu", seed: int = 0, n_examples: int = 0,
                        steps: int = 0, restarts: int = 0, eps_max: float = 6.0, eps_step: float = 0.5,
                        progress: bool = True, device: str = "cpu", run_id: str | None = None,
                        protocol: str = "strongest", until: int | None = None):
    """:func:`evaluate_model` for the model registered as ``"<dataset>/<defense>"``, with the profile's protocol.

    The same cache identity as notebook 04 with the same arguments, so a background run started
    here is picked up by the notebook. ``seed``: the registered model's training seed (the registry of
    :func:`crossholder.training.profile_variant`) and the attacks' seed. ``run_id``: evaluate the trained run
    ``results/<dataset>/models/<defense>-<run_id>.pt`` instead of the registered one (a model about to
    be registered: its curve is then already there when notebook 04 asks for it). ``until``: as in
    :func:`evaluate_model` (stop after the chunks below it; the curve is then ``None``).
    """
    prof = ex.PROFILES[ex.check_profile(profile)]
    protocol = protocol_of(protocol).name
    n = n_examples or prof["eval_n_v1" if protocol == "paper-v1" else "eval_n"]
    x, y = data_mod.tensors(dataset, "test")
    if n is not None:
        x, y = x[:n], y[:n]
    model, rec = _model_of(dataset, defense, profile, run_id, seed)
    return evaluate_model(model, x, y, dataset=dataset, defense=defense, eps_list=eps_grid(profile, eps_max, eps_step),
                          steps=steps or prof["eval_steps"], restarts=restarts or prof["eval_restarts"], seed=seed,
                          profile=profile, model_id=rec["run_id"], progress=progress,
                          reuse_larger_runs=True, device=device, protocol=protocol,
                          until=until)  # x: the test set's first n


def main(argv: list[str] | None = None) -> None:
    """``python -m crossholder.evaluation --dataset mnist --defense none [--profile cpu]``: background runs."""
    import argparse

    ap = argparse.ArgumentParser(description="Robustness curve of one registered model (resumable).")
    ap.add_argument("--dataset", required=True, choices=data_mod.DATASETS)
    ap.add_argument("--defense", required=True, choices=ex.ALL_DEFENSES)
    ap.add_argument("--profile", default="cpu", choices=list(ex.PROFILES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    ap.add_argument("--run-id", default=None, help="evaluate this finished training run instead of the registered one")
    ap.add_argument("--protocol", default="strongest", choices=list(PROTOCOLS))
    ap.add_argument("--n", type=int, default=0, help="test images (the first n); 0: the profile's choice")
    ap.add_argument("--until", type=int, default=None, metavar="K",
                    help="stop once the chunks below image K are done (the run stays resumable)")
    ap.add_argument("--checks", type=int, default=0, metavar="N",
                    help="then the AutoAttack agreement and the masking table on the first N images (strongest "
                         "protocol; notebook 04 uses 200 at the cpu profile); 0: skip")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.checks and args.protocol != "strongest":
        raise SystemExit("--checks needs --protocol strongest")
    checked = False
    if args.checks:
        first = first_rows_so_far(args.dataset, args.defense, args.checks, profile=args.profile, seed=args.seed,
                                  n_examples=args.n, run_id=args.run_id)
        if first is not None:  # the sweep's strength is checked before the long run goes on
            print(f"[{args.dataset}/{args.defense}] the first {args.checks} images are done: checks first")
            _checks(args, first)
            checked = True
    curve, per, side = evaluate_registered(args.dataset, args.defense, profile=args.profile, seed=args.seed,
                                           device=args.device, run_id=args.run_id, protocol=args.protocol,
                                           n_examples=args.n, until=args.until)
    if curve is None:
        print(f"[{args.dataset}/{args.defense}] stopped at --until {args.until}: {side['done']} of {side['n']} "
              f"images done ({side['partial']}); run again to go on")
        if args.checks and not checked and len(per) >= args.checks:
            _checks(args, per)
        return
    print(curve.pivot_table(index="eps", columns="attack", values="accuracy").round(3).to_string())
    if args.checks and not checked:
        _checks(args, per)
    reused = side.get("reused_from")
    how = (f"{reused['examples']} examples' rows reused from {reused['file']} (their share of its wall time: "
           f"{reused['wall_time_s_share']} s), " if reused else "")
    print(f"[{args.dataset}/{args.defense}] done: {how}{side['wall_time_s']} s here; {side['files']}")


def registered_checks(dataset: str, defense: str, per_example: pd.DataFrame, n: int, *, profile: str = "cpu",
                      seed: int = 0, run_id: str | None = None, device: str = "cpu") -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`strong_checks` of the model :func:`evaluate_registered` attacks, on the first ``n`` test images
    (``per_example``: its rows for at least those images). For ``--checks`` and ``crossholder.jobs``."""
    model, rec = _model_of(dataset, defense, profile, run_id, seed)
    x, y = data_mod.tensors(dataset, "test")
    return strong_checks(model, x[:n], y[:n], per_example.iloc[:n], dataset=dataset, defense=defense,
                         model_id=rec["run_id"], eps_list=eps_grid(profile), seed=seed, profile=profile, device=device)


def _checks(args, per: pd.DataFrame) -> None:
    """``--checks N`` of :func:`main`: :func:`registered_checks` on the first N test images (cached tables)."""
    agree, mask = registered_checks(args.dataset, args.defense, per, args.checks, profile=args.profile, seed=args.seed,
                                    run_id=args.run_id, device=args.device)
    print(agree.to_string(index=False))
    print(mask.to_string(index=False))



# ---------------------------------------------------------------- a data set's registered models (notebook 04)
@dataclass
class DatasetEvaluation:
    """What :func:`evaluate_dataset` computed or loaded, and where it wrote its summaries.

    ``n``: the test images attacked (the first ``n``); ``settings``: :func:`settings`' values (``n``, ``steps``, ``restarts``, ``eps``, ``sanity_n``,
    ``autoattack_n``, ``autoattack_eps``, ``masking_eps``); ``records``: defense -> registered model
    record; ``curves``: the summary ``robustness.csv`` as read back (every defense, every attack, ε in
    paper units); ``per_examples`` and ``sidecars``: per defense; ``claims``, ``sanity``, ``autoattack``
    (the AutoAttack agreement, or the legacy check under ``paper-v1``), ``masking`` and ``paired``
    (``None`` unless ``strongest``); ``files``: summary name -> path written.
    """

    dataset: str
    profile: str
    protocol: Protocol
    variant: str
    n: int
    settings: dict[str, Any]
    records: dict[str, dict[str, Any]]
    curves: pd.DataFrame
    per_examples: dict[str, pd.DataFrame]
    sidecars: dict[str, dict[str, Any]]
    claims: pd.DataFrame
    sanity: pd.DataFrame
    autoattack: pd.DataFrame
    masking: pd.DataFrame | None
    paired: pd.DataFrame | None
    files: dict[str, Path] = field(default_factory=dict)


def settings(profile: str, protocol: str | Protocol = "strongest", *, n_examples: int | None = None,
             steps: int | None = None, restarts: int | None = None, eps_max: float = 6.0, eps_step: float = 0.5,
             sanity_n: int | None = None, autoattack_n: int | None = None) -> dict[str, Any]:
    """A data set evaluation's settings at ``profile`` (``None`` for any count: the profile's choice;
    a count given must be an integer >= 1).

    ``n`` test images (``None``: all; ``eval_n`` of :data:`crossholder.experiments.PROFILES`, ``eval_n_v1``
    under ``paper-v1``), PGD ``steps`` and ``restarts``, the ε grid ``eps`` (paper units,
    :func:`eps_grid`), ``sanity_n`` (16 at smoke, else 100), ``autoattack_n`` (smoke 8; cpu 200, 50
    under ``paper-v1``; paper 500) with its ``autoattack_eps``, and ``masking_eps`` (5, or the grid's
    largest ε where 5 is not on it).
    """
    prof = ex.PROFILES[ex.check_profile(profile)]
    proto = protocol_of(protocol)
    for name, v in (("n_examples", n_examples), ("steps", steps), ("restarts", restarts), ("sanity_n", sanity_n),
                    ("autoattack_n", autoattack_n)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise not_allowed(name, v, "None (the profile's choice) or an integer >= 1")
    eps = eps_grid(profile, eps_max, eps_step)
    if profile == "smoke":
        aa_eps = [3.0]
    else:
        aa_eps = [3.0, 5.0] if proto.name == "paper-v1" else [2.0, 3.0, 4.0, 5.0, 6.0]
    def given(v, default):
        return default if v is None else v

    return {"n": given(n_examples, prof["eval_n_v1" if proto.name == "paper-v1" else "eval_n"]),
            "steps": given(steps, prof["eval_steps"]), "restarts": given(restarts, prof["eval_restarts"]), "eps": eps,
            "sanity_n": given(sanity_n, 16 if profile == "smoke" else 100),
            "autoattack_n": given(autoattack_n, {"smoke": 8, "cpu": 50 if proto.name == "paper-v1" else 200,
                                                 "paper": 500}[profile]),
            "autoattack_eps": aa_eps, "masking_eps": 5.0 if 5.0 in eps else eps[-1]}


def evaluate_dataset(dataset: str, *, profile: str = "cpu", protocol: str | Protocol = "strongest", seed: int = 0,
                     device: str = "cpu", variant: str = "", progress: bool = True,
                     defenses: Sequence[str] = ex.DEFENSES, **kw: Any) -> DatasetEvaluation:
    """Evaluate the registered models of ``dataset`` (every defense of
    :func:`crossholder.training.selected_models` at ``profile`` and training ``seed``) under ``protocol``:
    each model's cached, resumable curve (:func:`evaluate_model`, the identity ``crossholder.jobs
    evaluate`` and :func:`evaluate_registered` use), then the paper's claims
    (:func:`crossholder.claims.claims_table`), the sanity checks, the AutoAttack agreement (the legacy
    AutoAttack check under ``paper-v1``), and, under ``strongest``, the masking table with Square and the
    paired McNemar tests, each check cached per model (:func:`crossholder.checks.per_model_rows`).

    Writes ``robustness.csv`` (+ ``.json`` summary sidecar), ``claims.csv`` and, under ``strongest``,
    ``paired.csv`` in ``<results of variant>/<dataset>/`` (:func:`crossholder.store.dataset_dir`).
    ``kw``: :func:`settings`' counts (``n_examples``, ``steps``, ``restarts``, ``eps_max``,
    ``eps_step``, ``sanity_n``, ``autoattack_n``). ``seed``: the models' training seed and the attacks'.
    ``defenses``: the models evaluated (default: the paper's four); with ablations among them
    (``experiments.ABLATIONS``), ``claims.csv`` and ``paired.csv`` also hold their claims
    (:data:`crossholder.claims.ABLATION_CLAIMS`) and pairs (:data:`crossholder.claims.ABLATION_PAIRS`).

    Raises:
        ValueError: an unknown data set, profile, protocol or device; KeyError: a model not registered
        (at the ``cpu`` and ``paper`` profiles; smoke trains it).
    """
    from . import attacks as attacks_mod
    from . import checks, claims, models, training

    data_mod.check_dataset(dataset)
    proto = protocol_of(protocol)
    dev = ex.check_device(device)
    st = settings(profile, proto, **kw)
    eps_list, code = st["eps"], proto.code
    x, y = data_mod.tensors(dataset, "test")
    if st["n"] is not None:
        x, y = x[: st["n"]], y[: st["n"]]
    records = training.selected_models(dataset, profile, seed=seed, defenses=defenses)
    out_dir = store.dataset_dir(dataset, variant)
    files: dict[str, Path] = {}

    def model_of(defense: str, on: torch.device | str = "cpu") -> nn.Module:
        return models.load(paths.project_root() / records[defense]["checkpoint"], map_location=on)

    curves, sidecars, per_examples = [], {}, {}
    for defense, rec in records.items():
        curve, per_example, side = evaluate_model(
            model_of(defense), x, y, dataset=dataset, defense=defense, eps_list=eps_list, steps=st["steps"],
            restarts=st["restarts"], seed=seed, profile=profile, model_id=rec["run_id"], progress=progress,
            protocol=proto.name, reuse_larger_runs=True, device=device)  # x: the test set's first n
        curves.append(curve)
        sidecars[defense], per_examples[defense] = side, per_example
    files["robustness"] = out_dir / "robustness.csv"
    store.atomic_write_text(files["robustness"], pd.concat(curves, ignore_index=True).to_csv(index=False))
    store.atomic_write_json(files["robustness"].with_suffix(".json"), store.summary_record(
        params={"dataset": dataset, "protocol": proto.name, "n": len(x), "steps": st["steps"],
                "restarts": st["restarts"], "eps": eps_list, "models": {d: r["run_id"] for d, r in records.items()}},
        seed=seed, profile=profile,
        wall_time_s=sum((s["wall_time_s"] or 0) + (s.get("reused_from", {}).get("wall_time_s_share") or 0)
                        for s in sidecars.values()),
        inputs={d: s["files"] for d, s in sidecars.items()}))
    curves_df = pd.read_csv(files["robustness"])       # what the figures and tables read: the results file
    claims_df = claims.claims_table(curves_df, dataset)
    ablation_claims = [c for c in claims.ABLATION_CLAIMS[dataset] if c[4] in records]
    if ablation_claims:
        claims_df = pd.concat([claims_df, claims.claims_table(curves_df, dataset, ablation_claims)], ignore_index=True)
    files["claims"] = out_dir / "claims.csv"
    store.atomic_write_text(files["claims"], claims_df.to_csv(index=False))

    model_ids = {d: r["run_id"] for d, r in records.items()}
    sanity_n, aa_n = st["sanity_n"], st["autoattack_n"]

    def cached(kind: str, params: dict[str, Any], one) -> pd.DataFrame:
        # a model whose rows an earlier table holds (same parameters) is not attacked again
        table, _, _ = store.cached_table(
            f"{dataset}/robustness/{kind}", {"models": model_ids, **params},
            lambda: checks.per_model_rows(kind, dataset, model_ids, params, one, seed=seed, profile=profile,
                                          code_version=code),
            seed=seed, profile=profile, code_version=code)
        return table

    def sanity_one(defense: str) -> pd.DataFrame:
        return checks.sanity_checks(model_of(defense, dev), x[:sanity_n].to(dev), y[:sanity_n].to(dev),
                                    dataset=dataset, defense=defense, steps=st["steps"], restarts=st["restarts"],
                                    seed=seed, step_fraction=proto.step_fraction)

    sanity = cached("sanity", {"n": sanity_n, "steps": st["steps"], "restarts": st["restarts"]}, sanity_one)

    def autoattack_one(defense: str) -> pd.DataFrame:
        xa, ya = x[:aa_n].to(dev), y[:aa_n].to(dev)
        if proto.name == "paper-v1":
            return checks.autoattack_check(model_of(defense, dev), xa, ya, st["autoattack_eps"], dataset=dataset,
                                           defense=defense, per_example=per_examples[defense], eps_grid_used=eps_list,
                                           seed=seed)
        return checks.autoattack_agreement(model_of(defense, dev), xa, ya, per_examples[defense], eps_list,
                                           st["autoattack_eps"], dataset=dataset, defense=defense, seed=seed)

    aa_kind = "autoattack" if proto.name == "paper-v1" else "agreement"
    autoattack = cached(aa_kind, {"n": aa_n, "eps": st["autoattack_eps"], "grid": eps_list}, autoattack_one)
    masking = paired = None
    if proto.name == "strongest":
        k_mask = [round(e, 6) for e in eps_list].index(round(st["masking_eps"], 6))

        def masking_one(defense: str) -> pd.DataFrame:
            sq = attacks_mod.square(model_of(defense, dev), x[:aa_n].to(dev), y[:aa_n].to(dev),
                                    to_pixel(st["masking_eps"], dataset), seed=seed)
            return checks.masking_table(per_examples[defense], k_mask, defense=defense,
                                        square_fooled=sq.success.cpu().numpy())

        masking = cached("masking", {"n": aa_n, "eps": st["masking_eps"], "grid": eps_list}, masking_one)
        pairs = claims.PAIRS + tuple(p for p in claims.ABLATION_PAIRS if p[1] in records)
        paired = claims.paired_table(per_examples, eps_list, dataset=dataset, pairs=pairs,
                                     eps_points=[e for e in claims.PAIRED_EPS if e in eps_list])
        files["paired"] = out_dir / "paired.csv"
        store.atomic_write_text(files["paired"], paired.to_csv(index=False))
    return DatasetEvaluation(dataset=dataset, profile=profile, protocol=proto, variant=variant, n=len(x), settings=st,
                             records=records, curves=curves_df, per_examples=per_examples, sidecars=sidecars,
                             claims=claims_df, sanity=sanity, autoattack=autoattack, masking=masking, paired=paired,
                             files=files)


if __name__ == "__main__":
    main()
