"""The one shape of a bad-argument error: the parameter, the value given and what is allowed."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["not_allowed"]


def not_allowed(name: str, value: Any, allowed: Iterable[Any] | str) -> ValueError:
    """``ValueError("<name>=<value!r>; allowed values: <allowed>")``; raise what it returns.

    ``allowed``: the allowed values (listed with ``repr``, comma-separated) or a sentence that says
    what is allowed (``"an integer >= 1"``).
    """
    what = allowed if isinstance(allowed, str) else ", ".join(map(repr, allowed))
    return ValueError(f"{name}={value!r}; allowed values: {what}")
