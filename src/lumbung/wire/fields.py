"""Checks that more than one spec shape needs: strict models, finite numbers, hashes, entry points.

Each check returns the value or raises ``ValueError``, which pydantic reports against the field
being validated, so every shape names its own field in the error.
"""

from __future__ import annotations

import math
import re

from pydantic import BaseModel, ConfigDict

from lumbung.ids import is_sha256_hex

_ENTRYPOINT_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class Strict(BaseModel):
    """Unknown fields are refused and a parsed spec never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


def sha256_hex(value: str | None) -> str | None:
    if value is not None and not is_sha256_hex(value):
        raise ValueError("must be 64 lowercase hex digits (SHA-256)")
    return value


def entry_point(value: str | None) -> str | None:
    """``package.module:function``, as a task's entry point or a custom model's factory."""
    if value is not None and not _ENTRYPOINT_RE.match(value):
        raise ValueError("must look like 'package.module:function'")
    return value
