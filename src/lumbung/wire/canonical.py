"""The one canonical JSON encoding: RFC 8785 JSON Canonicalization Scheme (JCS), for our subset.

Everything Lumbung hashes or signs (ledger entries, Merkle leaves) is encoded here and nowhere else,
so that two honest implementations produce the same bytes for the same value and a signature made
in one language verifies in another.

The subset: objects with string keys, arrays, strings, ``true``/``false``/``null`` and integers.
Floats are refused outright: money is integer micro-credits, and JCS would have to serialise a float
by the ECMAScript shortest-round-trip rule (RFC 8785 section 3.2.2.3), which is easy to get subtly
wrong. Integers must lie within +-(2**53 - 1), the range I-JSON (RFC 7493 section 2.2) guarantees to
survive as an IEEE 754 double, which is how JCS serialises every number. Inside that range an
integer serialises as its plain decimal digits, as ECMAScript's Number.prototype.toString does.
"""

from __future__ import annotations

import json
import re
from typing import Any

from lumbung.errors import Rejected

MAX_SAFE_INTEGER = 2**53 - 1
# Ledger values are shallow; a hard limit keeps hostile input from exhausting the stack.
MAX_DEPTH = 32

# RFC 8785 section 3.2.2.2: escape '"', '\\' and the C0 controls; \b \t \n \f \r take their short
# forms, every other control is \u00XX in lowercase hex. All else (U+007F, U+2028, non-ASCII) is
# written as itself in UTF-8.
_SHORT_ESCAPES = {0x08: "\\b", 0x09: "\\t", 0x0A: "\\n", 0x0C: "\\f", 0x0D: "\\r"}
_ESCAPES: dict[int, str] = {
    code: _SHORT_ESCAPES.get(code, f"\\u{code:04x}") for code in range(0x20)
} | {ord('"'): '\\"', ord("\\"): "\\\\"}
_NEEDS_ESCAPE = re.compile(r'["\\\x00-\x1f]')

FLOAT_REFUSED = "floats are not allowed in ledger entries; use integer micro-units"


def canonical_json(value: object) -> bytes:
    """The RFC 8785 canonical UTF-8 bytes of ``value``; ``Rejected`` naming the field if not.

    Objects are written with members sorted by their keys' UTF-16 code units (section 3.2.3), no
    whitespace (section 3.2.1), strings escaped per section 3.2.2.2, literals per 3.2.2.1.
    """
    parts: list[str] = []
    _write(value, parts, 0)
    try:
        return "".join(parts).encode("utf-8")
    except UnicodeEncodeError as exc:
        # Only a lone surrogate cannot be encoded; I-JSON (RFC 7493 section 2.1) forbids them.
        raise Rejected("strings must be valid Unicode (no lone surrogates)") from exc


def parse_json(data: bytes) -> Any:
    """Parse untrusted JSON strictly as I-JSON (RFC 7493): UTF-8, unique keys, no NaN.

    Floats are parsed, not refused, so that the check that refuses them (``canonical_json``, or an
    entry's field validation) can name the field they sit in. This does not demand canonical form;
    callers that need it compare ``canonical_json`` of the result with ``data`` (see
    ``parse_canonical``), after checking fields so that errors name them.
    """
    try:
        text = data.decode("utf-8")
        return json.loads(
            text,
            parse_constant=_refuse_constant,
            object_pairs_hook=_object_with_unique_keys,
        )
    except UnicodeDecodeError as exc:
        raise Rejected(f"not valid UTF-8: {exc.reason} at byte {exc.start}") from exc
    except RecursionError as exc:
        raise Rejected("JSON nested too deeply") from exc
    except ValueError as exc:
        # json.JSONDecodeError, and ints beyond Python's digit limit, are both ValueErrors.
        raise Rejected(f"not valid JSON: {exc}") from exc


def parse_canonical(data: bytes) -> Any:
    """Parse ``data``, insisting it is already RFC 8785 canonical: one value, one encoding."""
    value = parse_json(data)
    if canonical_json(value) != data:
        raise Rejected("JSON is not in canonical form (RFC 8785)")
    return value


def utf16_sort_key(key: str) -> bytes:
    """Sort key ordering strings by UTF-16 code units (RFC 8785 section 3.2.3).

    Big-endian UTF-16 bytes compare exactly as the code units do; this differs from Python's
    code point order only for characters above U+FFFF against U+E000..U+FFFF.
    """
    return key.encode("utf-16-be", "surrogatepass")


def _write(value: object, out: list[str], depth: int) -> None:
    # Exact type checks first: they are the common case and the fastest test.
    kind = type(value)
    if kind is str:
        out.append(_quote(value))  # type: ignore[arg-type]
    elif kind is int:
        out.append(_integer(value))  # type: ignore[arg-type]
    elif kind is bool or value is None:
        out.append("true" if value is True else "false" if value is False else "null")
    elif kind is dict:
        _write_object(value, out, depth + 1)  # type: ignore[arg-type]
    elif kind is list:
        _write_array(value, out, depth + 1)  # type: ignore[arg-type]
    elif isinstance(value, float):
        raise Rejected(FLOAT_REFUSED)
    elif isinstance(value, str):  # a StrEnum member, say: its value is what is meant
        out.append(_quote(str.__str__(value)))
    elif isinstance(value, int) and not isinstance(value, bool):
        out.append(_integer(int(value)))
    else:
        raise Rejected(f"{type(value).__name__} is not allowed in canonical JSON")


def _write_object(obj: dict[Any, Any], out: list[str], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise Rejected(f"JSON nested deeper than {MAX_DEPTH}")
    out.append("{")
    for index, key in enumerate(_sorted_keys(obj)):
        if index:
            out.append(",")
        out.append(_quote(key))
        out.append(":")
        try:
            _write(obj[key], out, depth)
        except Rejected as exc:
            raise _within(exc, key) from exc
    out.append("}")


def _sorted_keys(obj: dict[Any, Any]) -> list[str]:
    try:
        all_keys = "".join(obj)
    except TypeError:
        bad = next(key for key in obj if not isinstance(key, str))
        raise Rejected(f"object keys must be strings, not {type(bad).__name__}") from None
    # For ASCII keys code point order is UTF-16 order, and a plain sort is ten times faster.
    if all_keys.isascii():
        return sorted(obj)
    return sorted(obj, key=utf16_sort_key)


def _write_array(items: list[Any], out: list[str], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise Rejected(f"JSON nested deeper than {MAX_DEPTH}")
    out.append("[")
    for index, item in enumerate(items):
        if index:
            out.append(",")
        try:
            _write(item, out, depth)
        except Rejected as exc:
            raise _within(exc, str(index)) from exc
    out.append("]")


def _quote(text: str) -> str:
    if _NEEDS_ESCAPE.search(text) is None:
        return f'"{text}"'
    return f'"{text.translate(_ESCAPES)}"'


def _integer(number: int) -> str:
    if not -MAX_SAFE_INTEGER <= number <= MAX_SAFE_INTEGER:
        raise Rejected(f"integer {number} is outside +-(2**53 - 1) (I-JSON, RFC 7493)")
    return str(number)


def _within(exc: Rejected, segment: str) -> Rejected:
    """The same error with ``segment`` prepended to its field path, so it names the full path."""
    field = segment if exc.field is None else f"{segment}.{exc.field}"
    return Rejected(exc.message, field=field)


def _refuse_constant(text: str) -> float:
    raise Rejected(f"{text} is not JSON (RFC 8259)")


def _object_with_unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise Rejected(f"duplicate key {key!r} (I-JSON, RFC 7493 section 2.3)")
            seen.add(key)
    return obj
