"""Notebook housekeeping: strip run-specific metadata before committing executed notebooks.

``python -m crossholder.notebooks strip NB.ipynb [...]`` removes papermill's timing metadata
(start/end times, durations), execution timestamps and the papermill environment block, so a
re-run that computes the same outputs leaves the committed file unchanged.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from .paths import temp_beside

__all__ = ["strip", "is_executed"]

_CELL_KEYS = ("execution", "papermill")
_NB_PAPERMILL_KEYS = ("start_time", "end_time", "duration", "input_path", "output_path", "environment_variables",
                      "version", "exception")


def strip(path: str | os.PathLike[str]) -> None:
    """Remove timings and paths from an executed notebook, in place (atomic write)."""
    path = Path(path)
    nb = json.loads(path.read_text(encoding="utf-8"))
    pm = nb.get("metadata", {}).get("papermill")
    if isinstance(pm, dict):
        for k in _NB_PAPERMILL_KEYS:
            pm.pop(k, None)
    for cell in nb.get("cells", []):
        md = cell.get("metadata", {})
        for k in _CELL_KEYS:
            md.pop(k, None)
    fd, tmp = temp_beside(path)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(nb, f, indent=1, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)


def is_executed(path: str | os.PathLike[str]) -> bool:
    """True when every code cell of the notebook has been executed (committed with its outputs)."""
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    code = [c for c in nb.get("cells", []) if c.get("cell_type") == "code"]
    return bool(code) and all(c.get("execution_count") is not None for c in code)


def main(argv: list[str] | None = None) -> None:
    """``strip NB...`` (remove timings) or ``executed NB...`` (print those committed with outputs)."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in ("strip", "executed"):
        raise SystemExit("usage: python -m crossholder.notebooks {strip|executed} NOTEBOOK.ipynb [...]")
    for nb in args[1:]:
        if args[0] == "strip":
            strip(nb)
        elif is_executed(nb):
            print(nb)


if __name__ == "__main__":
    main()
