"""Notebook housekeeping: strict parameters, and stripping run-specific metadata before committing.

:func:`check_parameters` is the first call after every notebook's tagged ``parameters`` cell:
papermill only *warns* on an unknown ``-p`` name and runs on with the defaults, so a typo
(``-p sed 3`` for ``seed``) would silently train, evaluate and register the wrong thing.

``python -m crossholder.notebooks strip NB.ipynb [...]`` removes papermill's timing metadata
(start/end times, durations), execution timestamps, the papermill environment block and progress
widgets, and numbers the cell ids, so a re-run that computes the same outputs leaves the committed
file unchanged (:func:`strip`).
"""

from __future__ import annotations

import json
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any


__all__ = ["strip", "is_executed", "unchecked", "check_parameters", "variant", "CANONICAL", "NEUTRAL"]

#: names IPython puts in a notebook's namespace
_IPYTHON_NAMES = {"In", "Out", "get_ipython", "exit", "quit", "open"}


def check_parameters(namespace: dict[str, Any]) -> None:
    """Fail on a parameter the notebook does not declare, or of the wrong type, before any work.

    ``namespace``: the notebook's ``globals()`` right after its tagged ``parameters`` cell (and the
    cell papermill injects after it). The declared parameters are the annotated assignments of
    the ``parameters`` cell (``seed: int = 0``), which land in ``__annotations__``. The names
    papermill injected are read from the cell that ran just before (IPython's ``In`` history: the
    cell that starts with papermill's ``# Parameters`` comment), so re-running a notebook in the
    same kernel, as JupyterLab users do, never trips the check. Without that history (plain
    Python), every non-module, non-callable public global counts. ``float`` parameters accept
    integers and convert them (``-p eps 5`` is ``5.0``, so a run's identity does not depend on how
    the number was typed); ``int`` and ``float`` never accept booleans; annotations that are not
    plain types (``list[float]``) are checked against their origin (``list``).

    Raises:
        ValueError: an unknown name (the message lists the notebook's parameters).
        TypeError: a value of the wrong type (the message names the parameter and the type).
    """
    declared = dict(namespace.get("__annotations__", {}))
    if not declared:
        raise RuntimeError("no declared parameters: the tagged parameters cell must annotate each one "
                           "(name: type = value)")
    history = namespace.get("In")
    if isinstance(history, list):
        injected = _assigned_names(history[-2]) if len(history) >= 2 and \
            history[-2].lstrip().startswith("# Parameters") else []
        unknown = sorted(k for k in injected if k not in declared)
    else:
        unknown = sorted(k for k, v in namespace.items()
                         if not k.startswith("_") and k not in declared and k not in _IPYTHON_NAMES
                         and not isinstance(v, types.ModuleType) and not callable(v))
    if unknown:
        raise ValueError(f"unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                         f"this notebook's parameters: {', '.join(sorted(declared))}")
    for name, ann in declared.items():
        if name not in namespace:
            continue
        if isinstance(ann, str):   # "Optional[float]": a string, so papermill's parser reads the cell
            ann = eval(ann, {"Optional": typing.Optional, "float": float, "int": int, "str": str, "bool": bool,
                             "list": list, "dict": dict})  # noqa: S307 - the notebook's own annotation
        v = namespace[name]
        # ``float | None``: None means "not given" (documented in the parameters cell); 0 is a value
        members = typing.get_args(ann) if isinstance(ann, types.UnionType) or typing.get_origin(ann) is typing.Union \
            else (ann,)
        if v is None and type(None) in members:
            continue
        typs = [typing.get_origin(t) or t for t in members if t is not type(None)]
        typs = [t for t in typs if isinstance(t, type)]
        if not typs:
            continue
        ok = any((isinstance(v, t) or (t is float and isinstance(v, int))) and
                 not (t in (int, float) and isinstance(v, bool)) for t in typs)
        if not ok:
            want = " or ".join(t.__name__ for t in typs) + (" or None" if type(None) in members else "")
            raise TypeError(f"parameter {name}={v!r} is a {type(v).__name__}; expected {want}")
        if float in typs and int not in typs and isinstance(v, int) and not isinstance(v, bool):
            namespace[name] = float(v)


#: Parameters that never change a result: what to select (``dataset``, ``defense``), where to run
#: (``device``, ``address``: the Ray cluster), how to show it (``progress``), and whether to fill
#: missing grid points (``grid``).
NEUTRAL = ("dataset", "defense", "device", "progress", "grid", "address")

#: The canonical run of each numbered notebook (besides ``profile="cpu"``): what the committed results
#: and figures stand on. Equal to the defaults of the notebook's ``parameters`` cell
#: (``tests/test_notebooks.py`` checks it), so a value changed there in JupyterLab makes the run a
#: variant (:func:`variant`) and its outputs go elsewhere. Notebook 02's variant comes from its
#: training configuration instead (:func:`crossholder.training.config_variant`).
CANONICAL: dict[str, dict[str, Any]] = {
    "01_hessian_norm_estimation": {"seed": 0, "method": "ascent", "iters": 10, "step": 0.1, "lanczos_iters": 20,
                                   "exact_n": None, "n_images": 8},
    "03_hyperparameter_selection": {"seed": 0},
    "04_robustness": {"seed": 0, "protocol": "strongest", "n_examples": None, "steps": None, "restarts": None,
                      "eps_max": 6.0, "eps_step": 0.5, "sanity_n": None, "autoattack_n": None},
}


def variant(notebook: str, namespace: dict[str, Any]) -> str:
    """The variant name (:func:`crossholder.store.variant_name`) of a run of ``notebook``
    (e.g. ``"04_robustness"``) with the parameters in ``namespace`` (its ``globals()``): ``""`` for the
    canonical run (:data:`CANONICAL` at the ``cpu`` profile), else the profile and what differs.
    Outputs then go to :func:`crossholder.store.variant_dirs`; committed files stay as they are.

    Raises:
        KeyError: ``notebook`` is not in :data:`CANONICAL`.
    """
    from .store import variant_name

    if notebook not in CANONICAL:
        raise KeyError(f"notebook={notebook!r}; known: {', '.join(sorted(CANONICAL))}")
    changed = {k: namespace[k] for k, v in CANONICAL[notebook].items() if k in namespace and namespace[k] != v}
    return variant_name(namespace.get("profile", "cpu"), changed)


def _assigned_names(source: str) -> list[str]:
    """The names a cell's top-level statements assign (papermill's injected cell: ``name = value`` lines)."""
    import ast

    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    names = []
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
            if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else []
        names += [t.id for t in targets if isinstance(t, ast.Name)]
    return names

_CELL_KEYS = ("execution", "papermill")
_WIDGET = "application/vnd.jupyter.widget-view+json"
_NB_PAPERMILL_KEYS = ("start_time", "end_time", "duration", "input_path", "output_path", "environment_variables",
                      "version", "exception")


def strip(path: str | os.PathLike[str]) -> None:
    """Make an executed notebook's bytes depend only on its inputs and outputs, in place (atomic write).

    Removes papermill's timings, paths and environment, execution timestamps, progress-bar widgets
    (their outputs and saved widget state carry random model ids), and gives every cell a stable id
    (``cell-<index>``); merges consecutive stream outputs of the same name (nbconvert's
    ``CoalesceStreamsPreprocessor``: how a printed table is split into chunks depends on the
    kernel's timing, e.g. its last newline arriving on its own under load). So re-executing a
    notebook whose inputs did not change writes identical bytes. An executed copy in
    ``notebooks/runs/`` also loses its jupytext pairing, so opening it in JupyterLab does not create
    a paired script beside it. Reads and writes with ``nbformat`` (its JSON layout).
    """
    import nbformat
    from nbconvert.preprocessors import CoalesceStreamsPreprocessor

    from . import store

    path = Path(path)
    nb = nbformat.reads(path.read_text(encoding="utf-8"), as_version=4)
    nb, _ = CoalesceStreamsPreprocessor().preprocess(nb, {})
    meta = nb.get("metadata", {})
    pm = meta.get("papermill")
    if isinstance(pm, dict):
        for k in _NB_PAPERMILL_KEYS:
            pm.pop(k, None)
    meta.pop("widgets", None)
    if path.parent.name == "runs":
        meta.pop("jupytext", None)
    for i, cell in enumerate(nb.get("cells", [])):
        md = cell.get("metadata", {})
        for k in _CELL_KEYS:
            md.pop(k, None)
        if md.get("tags") == []:  # papermill adds empty tag lists
            del md["tags"]
        cell["id"] = f"cell-{i}"
        if "outputs" in cell:
            cell["outputs"] = [o for o in cell["outputs"] if _WIDGET not in o.get("data", {})]
    store.atomic_write_text(path, nbformat.writes(nb) + "\n")


def is_executed(path: str | os.PathLike[str]) -> bool:
    """True when every code cell of the notebook has been executed (committed with its outputs)."""
    return not unchecked(path)


def unchecked(path: str | os.PathLike[str]) -> list[str]:
    """Why nbval could not check the notebook at ``path`` as committed: code cells never executed (a
    cleared ``NBVAL_CHECK_OUTPUT`` cell, no output and no execution count, passes nbval vacuously: nbval
    issue #81). Empty when every code cell was executed. (An executed checked cell may print nothing,
    e.g. notebook 03's table of a grid with no point scored: that is its output.)"""
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    code = [(i, c) for i, c in enumerate(nb.get("cells", [])) if c.get("cell_type") == "code"]
    if not code:
        return ["no code cell"]
    problems = [f"cell {i} was never executed{' (a checked cell: NBVAL_CHECK_OUTPUT)' if _checked(c) else ''}"
                for i, c in code if c.get("execution_count") is None]
    return problems


def _checked(cell: dict) -> bool:
    return "NBVAL_CHECK_OUTPUT" in "".join(cell.get("source", []))


def main(argv: list[str] | None = None) -> None:
    """``strip NB...`` (remove timings) or ``executed NB...`` (print them, for nbval; exit 1 naming any
    notebook that is not fully executed or has a checked cell without output: every committed notebook
    must be checked, none may be skipped)."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in ("strip", "executed"):
        raise SystemExit("usage: python -m crossholder.notebooks {strip|executed} NOTEBOOK.ipynb [...]")
    bad = []
    for nb in args[1:]:
        if args[0] == "strip":
            strip(nb)
        elif problems := unchecked(nb):
            bad.append(f"{nb}: {'; '.join(problems)}")
        else:
            print(nb)
    if bad:
        raise SystemExit("every committed notebook must be executed with its checked outputs (re-run it with "
                         "`make figures`, or papermill, then strip it):\n  " + "\n  ".join(bad))


if __name__ == "__main__":
    main()
