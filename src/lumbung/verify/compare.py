"""Whether two outputs of one task agree: bit for bit, or as numbers within a tolerance.

Within one execution class (same device, library versions, dtype, threads and deterministic
flags) an honest task gives the same bytes, so outputs are compared by SHA-256. Across classes
floating-point results differ in their last bits, and a job may ask for the numeric comparator:
JSON, CSV and ``.npy`` files compared value by value with ``|a - b| <= atol + rtol * |b|`` (the
rule of ``numpy.isclose``), everything that is not a number compared exactly.

Outputs are hostile bytes: a file that does not parse as its extension says, or whose shape,
keys or types differ, does not agree with anything. Parsing is bounded by the caller (the hub
compares only outputs within the job's size limits).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

_JSON_MAX_DEPTH = 64


@dataclass(frozen=True)
class Tolerance:
    rtol: float = 1e-5
    atol: float = 1e-8

    def close(self, a: float, b: float) -> bool:
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        if math.isinf(a) or math.isinf(b):
            return a == b
        return abs(a - b) <= self.atol + self.rtol * abs(b)


@dataclass(frozen=True)
class Comparator:
    """How a job's outputs are compared across execution classes."""

    kind: Literal["sha256", "numeric"] = "sha256"
    tolerance: Tolerance = Tolerance()

    def agree(self, name: str, a: bytes, b: bytes) -> bool:
        """Whether output ``name`` of two replicas agrees (by its extension, for numeric)."""
        if a == b:
            return True
        if self.kind == "sha256":
            return False
        suffix = name.rsplit(".", 1)[-1].lower() if "." in name else ""
        try:
            if suffix == "json":
                return _json_close(json.loads(a), json.loads(b), self.tolerance, 0)
            if suffix == "csv":
                return _csv_close(a, b, self.tolerance)
            if suffix == "npy":
                return _npy_close(a, b, self.tolerance)
        except (ValueError, EOFError, OSError, RecursionError):
            # UnicodeDecodeError and json's errors are ValueErrors; EOFError: a truncated .npy.
            return False  # garbage agrees with nothing, not even other garbage
        return False


def _json_close(a: object, b: object, tol: Tolerance, depth: int) -> bool:
    if depth > _JSON_MAX_DEPTH:
        return False
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return tol.close(float(a), float(b))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(
            _json_close(x, y, tol, depth + 1) for x, y in zip(a, b, strict=True)
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_close(a[k], b[k], tol, depth + 1) for k in a)
    return a == b


def _csv_close(a: bytes, b: bytes, tol: Tolerance) -> bool:
    rows_a = list(csv.reader(io.StringIO(a.decode("utf-8"))))
    rows_b = list(csv.reader(io.StringIO(b.decode("utf-8"))))
    if len(rows_a) != len(rows_b):
        return False
    for row_a, row_b in zip(rows_a, rows_b, strict=True):
        if len(row_a) != len(row_b):
            return False
        for cell_a, cell_b in zip(row_a, row_b, strict=True):
            if cell_a != cell_b and not _numbers_close(cell_a, cell_b, tol):
                return False
    return True


def _numbers_close(a: str, b: str, tol: Tolerance) -> bool:
    try:
        return tol.close(float(a), float(b))
    except ValueError:
        return False


_NPY_MAGIC = b"\x93NUMPY"


def _npy_close(a: bytes, b: bytes, tol: Tolerance) -> bool:
    if not (a.startswith(_NPY_MAGIC) and b.startswith(_NPY_MAGIC)):
        return False  # np.load would also open a zip archive or try a pickle
    # allow_pickle=False: an .npy of objects would run the file's code.
    x = np.load(io.BytesIO(a), allow_pickle=False)
    y = np.load(io.BytesIO(b), allow_pickle=False)
    if x.shape != y.shape or x.dtype.kind != y.dtype.kind:
        return False
    if x.dtype.kind not in "fciu":
        return bool(np.array_equal(x, y))
    return bool(np.allclose(x, y, rtol=tol.rtol, atol=tol.atol, equal_nan=True))
