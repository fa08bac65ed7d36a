"""Golden files under tests/data/: bytes a frozen format or the API must keep, compared exactly.

A test builds the bytes from fixed inputs and hands them to ``check_golden``, which fails with a
readable diff when they differ from the stored file. To change a format or the API on purpose,
regenerate the files and commit them with the change (tests/data/README.md):

    LUMBUNG_UPDATE_GOLDEN=1 .venv/bin/pytest -q tests/unit/*/test_formats_*.py \
        tests/unit/hub/test_openapi_snapshot.py
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path

import pytest

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
UPDATE_ENV = "LUMBUNG_UPDATE_GOLDEN"
REGENERATE = (
    f"{UPDATE_ENV}=1 .venv/bin/pytest -q tests/unit/*/test_formats_*.py "
    "tests/unit/hub/test_openapi_snapshot.py"
)
_DIFF_MAX_LINES = 120
_HEX_CONTEXT_BYTES = 16


def read_golden(name: str) -> bytes:
    return (DATA_DIR / name).read_bytes()


def json_bytes(value: object) -> bytes:
    """How golden JSON is written: two-space indents, keys in the order given, UTF-8, a newline."""
    return (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode()


def save_golden(name: str, data: bytes) -> None:
    """Keep ``data`` as ``tests/data/<name>`` when regenerating, for tests that read it but pin
    only part of it (a compressed stream, whose bytes depend on the zlib that made them)."""
    if os.environ.get(UPDATE_ENV) == "1":
        (DATA_DIR / name).parent.mkdir(parents=True, exist_ok=True)
        (DATA_DIR / name).write_bytes(data)


def check_golden(name: str, actual: bytes) -> None:
    """Fail unless ``actual`` is exactly ``tests/data/<name>``; with ``LUMBUNG_UPDATE_GOLDEN=1``,
    write it there instead."""
    path = DATA_DIR / name
    if os.environ.get(UPDATE_ENV) == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(actual)
        return
    if not path.exists():
        pytest.fail(f"tests/data/{name} is missing; to create it: {REGENERATE}", pytrace=False)
    expected = path.read_bytes()
    if actual != expected:
        pytest.fail(
            f"tests/data/{name} changed. If that is deliberate, regenerate it with\n"
            f"    {REGENERATE}\n(see tests/data/README.md). The difference:\n"
            + _difference(name, expected, actual),
            pytrace=False,
        )


def _difference(name: str, expected: bytes, actual: bytes) -> str:
    try:
        old, new = expected.decode(), actual.decode()
    except UnicodeDecodeError:
        return _binary_difference(expected, actual)
    lines = list(
        difflib.unified_diff(
            old.splitlines(), new.splitlines(), f"stored {name}", f"built {name}", lineterm=""
        )
    )
    shown = lines[:_DIFF_MAX_LINES]
    if len(lines) > len(shown):
        shown.append(f"... {len(lines) - len(shown)} more diff lines")
    return "\n".join(shown)


def _binary_difference(expected: bytes, actual: bytes) -> str:
    at = next(
        (i for i, (a, b) in enumerate(zip(expected, actual, strict=False)) if a != b),
        min(len(expected), len(actual)),
    )
    lo = max(0, at - _HEX_CONTEXT_BYTES)
    hi = at + _HEX_CONTEXT_BYTES
    return (
        f"{len(expected)} bytes stored, {len(actual)} built; first difference at byte {at}\n"
        f"stored [{lo}:{hi}] {expected[lo:hi].hex(' ')}\n"
        f"built  [{lo}:{hi}] {actual[lo:hi].hex(' ')}"
    )
