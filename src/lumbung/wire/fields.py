"""Checks that more than one wire shape needs: models that refuse what nothing downstream can hold,
hashes, entry points.

Each check returns the value or raises ``ValueError`` (or a ``ValidationError`` located below the
field), which pydantic reports against the field being validated, so every shape names its own
field in the error.
"""

from __future__ import annotations

import math
import re
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from lumbung.ids import is_sha256_hex

_ENTRYPOINT_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")

# The store's INTEGER columns (attempts, exit codes, round indices) are 32-bit on PostgreSQL.
INT32_MAX = 2**31 - 1
# Its BIGINT columns, and every SQLite integer, are signed 64-bit; a bigger one fails in the driver.
INT64_MAX = 2**63 - 1

Loc = tuple[str | int, ...]
T = TypeVar("T")


def refusal(loc: Loc, message: str, value: object) -> ValidationError:
    """An error pydantic reports at ``loc`` below the field (or model) being validated, so that a
    check looking inside a container, or across fields, still names the exact field."""
    error = PydanticCustomError("refused", "{reason}", {"reason": message})
    return ValidationError.from_exception_data(
        "refused", [InitErrorDetails(type=error, loc=loc, input=value)]
    )


def storable(value: T, loc: Loc = ()) -> T:
    """``value``, unless it holds what no store, argv, environment or file name can: a NUL byte in
    a string (PostgreSQL text and C strings cannot hold one), a number that is not finite (JSON has
    none, so it would be stored as null and never read back), an integer beyond 64 bits (SQL's
    BIGINT). Lists and dicts are searched, naming the item; a nested model checks itself."""
    if isinstance(value, str):
        if "\x00" in value:
            raise refusal(loc, "must not contain NUL bytes", value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise refusal(loc, "must be a finite number", value)
    elif isinstance(value, int):  # bool included: always in range
        if not -INT64_MAX <= value <= INT64_MAX:
            raise refusal(loc, "must fit in a signed 64-bit integer (|n| < 2**63)", value)
    elif isinstance(value, dict):
        for key, item in value.items():
            storable(key, (*loc, str(key), "[key]"))
            storable(item, (*loc, str(key)))
    elif isinstance(value, list | tuple | set | frozenset):
        for i, item in enumerate(value):
            # The common items inline, not a call each: a 10,000-value grid is read with every
            # claim of its job.
            if type(item) is int:
                if -INT64_MAX <= item <= INT64_MAX:
                    continue
            elif type(item) is str:
                if "\x00" not in item:
                    continue
            elif type(item) is float and math.isfinite(item):
                continue
            storable(item, (*loc, i))  # names the item, or looks inside it
    return value


class Inbound(BaseModel):
    """A shape the hub takes from outside: a consumer's spec, a node's registration or report.

    Unknown fields are refused, and so is anything ``storable`` refuses, in every field of every
    such model: a new field cannot forget the check.
    """

    model_config = ConfigDict(extra="forbid")

    @field_validator("*")
    @classmethod
    def _storable(cls, value: object) -> object:
        return storable(value)


class Strict(Inbound):
    """A spec shape: ``Inbound``, and a parsed spec never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def sha256_hex(value: str | None) -> str | None:
    if value is not None and not is_sha256_hex(value):
        raise ValueError("must be 64 lowercase hex digits (SHA-256)")
    return value


def entry_point(value: str | None) -> str | None:
    """``package.module:function``, as a task's entry point or a custom model's factory."""
    if value is not None and not _ENTRYPOINT_RE.match(value):
        raise ValueError("must look like 'package.module:function'")
    return value
