"""RFC 8785 canonical JSON: the examples from the RFC, our refusals, and round-trip properties."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lumbung.errors import Rejected
from lumbung.wire.canonical import (
    MAX_SAFE_INTEGER,
    canonical_json,
    parse_canonical,
    parse_json,
)

# RFC 8785 section 3.2.3: keys sorted by UTF-16 code units. The emoji (surrogates D83D DE00) sorts
# before U+FB33 although its code point is larger, which a plain Python sort gets wrong.
RFC8785_SORTING_INPUT = r"""{
  "\u20ac": "Euro Sign",
  "\r": "Carriage Return",
  "\ufb33": "Hebrew Letter Dalet With Dagesh",
  "1": "One",
  "\ud83d\ude00": "Emoji: Grinning Face",
  "\u0080": "Control",
  "\u00f6": "Latin Small Letter O With Diaeresis"
}"""
RFC8785_SORTED_VALUES = [
    "Carriage Return",
    "One",
    "Control",
    "Latin Small Letter O With Diaeresis",
    "Euro Sign",
    "Emoji: Grinning Face",
    "Hebrew Letter Dalet With Dagesh",
]

keys = st.text(st.characters(exclude_categories=["Cs"]))
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER)
    | st.text(st.characters(exclude_categories=["Cs"])),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(st.characters(exclude_categories=["Cs"])), children, max_size=4)
    ),
    max_leaves=20,
)


def test_keys_sort_by_utf16_code_units_as_in_rfc8785_section_3_2_3() -> None:
    value = json.loads(RFC8785_SORTING_INPUT)

    encoded = canonical_json(value)

    assert list(json.loads(encoded).values()) == RFC8785_SORTED_VALUES
    assert encoded.startswith(b'{"\\r":"Carriage Return","1":"One","\xc2\x80":"Control"')


def test_strings_escape_as_in_rfc8785_section_3_2_2_2() -> None:
    # The RFC's example without its "numbers" member, since we refuse floats.
    value = json.loads(
        r'{"string": "\u20ac$\u000F\u000aA\u0027\u0042\u0022\u005c\\\"\/",'
        r' "literals": [null, true, false]}'
    )

    encoded = canonical_json(value)

    assert encoded == (
        b'{"literals":[null,true,false],"string":"\xe2\x82\xac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    )


def test_every_control_character_escapes_as_ecmascript_json_stringify_does() -> None:
    short = {"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}
    for code in range(0x20):
        char = chr(code)
        expected = short.get(char, f"\\u{code:04x}")
        assert canonical_json(char) == f'"{expected}"'.encode()
    # DEL, line separator and non-ASCII are written as themselves, not escaped.
    assert canonical_json("\x7f\u2028é") == '"\x7f\u2028é"'.encode()


def test_integers_at_the_ijson_limit_are_plain_digits() -> None:
    assert canonical_json([0, -1, MAX_SAFE_INTEGER, -MAX_SAFE_INTEGER]) == (
        b"[0,-1,9007199254740991,-9007199254740991]"
    )


@pytest.mark.parametrize("number", [MAX_SAFE_INTEGER + 1, -MAX_SAFE_INTEGER - 1, 10**30])
def test_integers_beyond_the_ijson_limit_are_refused(number: int) -> None:
    with pytest.raises(Rejected, match="2\\*\\*53"):
        canonical_json({"amount": number})


def test_floats_are_refused_naming_the_field() -> None:
    with pytest.raises(Rejected, match="integer micro-units") as caught:
        canonical_json({"body": {"prices": [1, 2.5]}})

    assert caught.value.field == "body.prices.1"


@pytest.mark.parametrize(
    "value", [{1: "int key"}, ("tuple",), {"set": {1}}, b"bytes", {"nan": float("nan")}]
)
def test_values_outside_the_json_subset_are_refused(value: Any) -> None:
    with pytest.raises(Rejected):
        canonical_json(value)


def test_lone_surrogates_are_refused() -> None:
    with pytest.raises(Rejected, match="surrogate"):
        canonical_json({"name": "\ud800"})


def test_nesting_beyond_the_depth_limit_is_refused() -> None:
    deep: Any = []
    for _ in range(40):
        deep = [deep]

    with pytest.raises(Rejected, match="deeper"):
        canonical_json(deep)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b'{"a":NaN}', "NaN"),
        (b'{"a":1,"a":2}', "duplicate key"),
        (b'{"a":', "not valid JSON"),
        (b'"\xff"', "UTF-8"),
        (b"[" * 100_000, "deep"),
        (b"1" * 5000, "not valid JSON"),
    ],
)
def test_hostile_json_is_rejected_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(Rejected, match=reason):
        parse_json(data)


@pytest.mark.parametrize("data", [b'{"a":[1.5]}', b'{"a":[1e3]}', b'{"a":[1E400]}'])
def test_parsed_floats_are_refused_naming_the_field(data: bytes) -> None:
    with pytest.raises(Rejected, match="integer micro-units") as caught:
        parse_canonical(data)

    assert caught.value.field == "a.0"


def test_parse_canonical_refuses_json_that_is_valid_but_not_canonical() -> None:
    assert parse_canonical(b'{"a":1,"b":[true]}') == {"a": 1, "b": [True]}
    for other_spelling in (
        b'{"b":[true],"a":1}',
        b'{"a": 1,"b":[true]}',
        b'{"a":1,"b":["\\u0041"]}',
    ):
        with pytest.raises(Rejected, match="canonical"):
            parse_canonical(other_spelling)


@given(json_values)
def test_canonical_json_round_trips_through_a_json_parser(value: Any) -> None:
    encoded = canonical_json(value)

    assert json.loads(encoded) == value
    assert parse_canonical(encoded) == value


def _utf16_code_units(text: str) -> list[int]:
    """An independent oracle: the UTF-16 code units of ``text``, computed by hand (RFC 2781)."""
    units = []
    for char in text:
        code = ord(char)
        if code < 0x10000:
            units.append(code)
        else:
            code -= 0x10000
            units += [0xD800 + (code >> 10), 0xDC00 + (code & 0x3FF)]
    return units


@given(st.dictionaries(keys, st.integers(-1000, 1000), min_size=2, max_size=8), st.randoms())
def test_encoding_does_not_depend_on_key_insertion_order(
    value: dict[str, int], rng: random.Random
) -> None:
    items = list(value.items())
    rng.shuffle(items)

    assert canonical_json(dict(items)) == canonical_json(value)


# Characters either side of where code point order and UTF-16 order disagree.
tricky_keys = st.text(st.sampled_from(["a", "\u00e9", "\ud7ff", "\ue000", "\uffff", "\U00010000"]))


@given(st.dictionaries(keys | tricky_keys, st.none(), min_size=2, max_size=8))
def test_keys_come_out_in_utf16_code_unit_order(value: dict[str, None]) -> None:
    decoded_keys = list(json.loads(canonical_json(value)))

    assert decoded_keys == sorted(value, key=_utf16_code_units)
