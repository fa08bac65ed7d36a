"""Lumbung: an open network for pooled AI compute. ``from lumbung import Client`` to use a hub."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lumbung.client import Client

try:
    __version__ = version("lumbung")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["Client"]


def __getattr__(name: str) -> Any:
    # Imported on first use: a task's sandbox runs `python -m lumbung.node.entry`, which must not
    # pay for (or depend on) httpx, pydantic and cryptography just because the package loads.
    if name == "Client":
        from lumbung.client import Client

        return Client
    raise AttributeError(f"module 'lumbung' has no attribute {name!r}")
