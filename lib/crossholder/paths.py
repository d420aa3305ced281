"""Project directories: ``data/``, ``results/``, ``figures/`` and their ``CROSSHOLDER_*`` overrides.

Every directory can be overridden by an environment variable, which is how CI
runs the notebooks at the ``smoke`` profile into a temporary results folder:

=================  ==========================  ==============================
name               environment variable        default
=================  ==========================  ==============================
``PROJECT_ROOT``   ``CROSSHOLDER_ROOT``        the repository root (see below)
``DATA_DIR``       ``CROSSHOLDER_DATA``        ``<root>/data``
``RESULTS_DIR``    ``CROSSHOLDER_RESULTS``     ``<root>/results``
``FIGURES_DIR``    ``CROSSHOLDER_FIGURES``     ``<root>/figures``
(scratch)          ``CROSSHOLDER_SCRATCH``     ``<results>/scratch``
=================  ==========================  ==============================

In a source checkout (``make setup``) the root is the repository's, whatever the current working
directory. A wheel installed elsewhere (``pip install crossholder-*.whl``, to use the library on your
own models) has no repository: its root is the current working directory, so results land in
``./results`` unless ``CROSSHOLDER_RESULTS`` (or ``CROSSHOLDER_ROOT``) says otherwise.

The scratch folder holds resume state of unfinished runs (gitignored). Background runs that must
survive a fresh checkout of the work tree point it outside, e.g. ``~/.cache/crossholder/scratch``.

The functions re-read the environment on every call (use them, not the module
constants, in code that may run after the environment changed, e.g. tests).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "project_root",
    "environment",
    "data_dir",
    "results_dir",
    "results_under",
    "figures_dir",
    "scratch_dir",
    "default_file_mode",
    "temp_beside",
    "relative_to_root",
    "PROJECT_ROOT",
    "DATA_DIR",
    "RESULTS_DIR",
    "FIGURES_DIR",
]

# lib/crossholder/paths.py -> parents[2] is the repository root of a source checkout.
_CHECKOUT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def environment(**values: str | os.PathLike[str] | None) -> Iterator[None]:
    """Set environment variables (e.g. ``CROSSHOLDER_RESULTS=...``; ``None`` unsets one) for the block,
    then restore each to what it was. For runs whose files must land elsewhere (a temporary folder)."""
    old = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = str(v)
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _from_env(var: str, default: Path) -> Path:
    value = os.environ.get(var, "").strip()
    return Path(value).expanduser().resolve() if value else default


def in_checkout() -> bool:
    """Whether this package runs from a source checkout (``<root>/lib/crossholder`` beside its
    ``pyproject.toml``), as ``make setup`` installs it; ``False`` for a wheel installed elsewhere."""
    return (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "lib" / "crossholder").is_dir()


def project_root() -> Path:
    """The folder whose ``data/``, ``results/`` and ``figures/`` the library uses: ``CROSSHOLDER_ROOT`` if
    set; else the repository root when running from a source checkout; else (a wheel installed with pip
    to use the library on your own models) the current working directory, read at each call."""
    return _from_env("CROSSHOLDER_ROOT", _CHECKOUT if in_checkout() else Path.cwd().resolve())


def data_dir() -> Path:
    """Raw data sets, gitignored (``CROSSHOLDER_DATA`` overrides)."""
    return _from_env("CROSSHOLDER_DATA", project_root() / "data")


def results_dir() -> Path:
    """Tidy results, checkpoints and provenance (``CROSSHOLDER_RESULTS`` overrides)."""
    return _from_env("CROSSHOLDER_RESULTS", project_root() / "results")


def results_under(root: str | os.PathLike[str] | None) -> Path:
    """``<root>/results`` for a project root given explicitly (the analysis notebooks' ``results_root``),
    else :func:`results_dir` (which honours ``CROSSHOLDER_RESULTS``)."""
    return results_dir() if root is None else Path(root) / "results"


def figures_dir() -> Path:
    """PNG and PDF figures (``CROSSHOLDER_FIGURES`` overrides)."""
    return _from_env("CROSSHOLDER_FIGURES", project_root() / "figures")


def scratch_dir() -> Path:
    """Resume state of unfinished runs (``CROSSHOLDER_SCRATCH`` overrides; default ``<results>/scratch``)."""
    return _from_env("CROSSHOLDER_SCRATCH", results_dir() / "scratch")


def relative_to_root(path: str | os.PathLike[str]) -> str:
    """``path`` relative to the project root when it lies inside it, else absolute (POSIX form)."""
    p = Path(path).resolve()
    try:
        return p.relative_to(project_root()).as_posix()
    except ValueError:
        return p.as_posix()


PROJECT_ROOT = project_root()
DATA_DIR = data_dir()
RESULTS_DIR = results_dir()
FIGURES_DIR = figures_dir()


def default_file_mode() -> int:
    """The mode a plain ``open()`` would give a new file (``0o666`` less the umask)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def temp_beside(dest: str | os.PathLike[str], suffix: str = ".tmp") -> tuple[int, str]:
    """``(fd, path)`` of a new temporary file next to ``dest``, for an atomic write then ``os.replace``.

    Unlike plain ``tempfile.mkstemp`` (``0o600``), the file gets :func:`default_file_mode`, so
    results, checkpoints and data files keep ordinary permissions after the rename.
    """
    import tempfile

    dest = Path(dest)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix, dir=dest.parent)
    os.fchmod(fd, default_file_mode())
    return fd, tmp
