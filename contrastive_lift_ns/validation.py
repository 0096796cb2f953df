"""Checks of the numbers in the project's configs, run when a config is built.

tyro builds the configs from the command line, so a flag that would make training useless (an embedding of size
0, no label samples, no pixels to cluster) stops ``ns-train`` before anything starts, with the field named.
"""

from __future__ import annotations

from typing import Any


def require(config: Any, field: str, ok: bool, requirement: str) -> None:
    """Raises a ValueError naming ``config``'s ``field`` and ``requirement`` unless ``ok``."""
    if not ok:
        name = field.replace("_", "-")
        raise ValueError(f"{type(config).__name__}: {name} {requirement}, got {getattr(config, field)!r}")
