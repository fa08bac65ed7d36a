"""Pseudo-gradient compression: round trips within the stated bounds, refusals name the field."""

from __future__ import annotations

import numpy as np
import pytest

from lumbung.errors import Rejected
from lumbung.train.codec import (
    HEADER,
    CodecConfig,
    decode,
    encode,
    encode_with_feedback,
    encoded_size_bytes,
    peek_numel,
)


def _values(numel: int = 1000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = rng.normal(scale=1e-3, size=numel).astype(np.float32)
    values[min(17, numel - 1)] = 0.5  # an outlier: only its own block should lose precision
    return values


@pytest.mark.parametrize("codec", ["none", "fp16", "int8"])
def test_encoded_length_is_exactly_what_encoded_size_bytes_says(codec: str) -> None:
    config = CodecConfig(codec, block_size=64)  # type: ignore[arg-type]
    for numel in (1, 63, 64, 65, 1000):
        assert len(encode(_values(numel), config)) == encoded_size_bytes(numel, config)


def test_uncompressed_round_trip_is_exact() -> None:
    values = _values()
    assert np.array_equal(decode(encode(values, CodecConfig("none")), values.size), values)


def test_fp16_round_trip_is_within_its_relative_bound() -> None:
    values = _values()
    decoded = decode(encode(values, CodecConfig("fp16")), values.size)
    assert np.all(np.abs(decoded - values) <= 2.0**-11 * np.abs(values) + 2.0**-25)


def test_int8_round_trip_is_within_half_a_step_of_its_block() -> None:
    values, block = _values(), 64
    decoded = decode(encode(values, CodecConfig("int8", block)), values.size)
    padded = np.zeros(-(-values.size // block) * block, np.float32)
    padded[: values.size] = values
    step = np.repeat(np.abs(padded.reshape(-1, block)).max(axis=1) / 127, block)[: values.size]
    error = np.abs(decoded - values)
    assert np.all(error <= step / 2 * (1 + 1e-5))
    # the outlier's block is coarse; the others keep their own, much finer, scale
    assert error[block:].max() < 0.01 * step[0]


def test_int8_is_about_a_quarter_of_float32() -> None:
    numel = 100_000
    ratio = encoded_size_bytes(numel, CodecConfig("int8", 256)) / (4 * numel)
    assert 0.25 < ratio < 0.26


def test_error_feedback_carries_the_residual_into_the_next_message() -> None:
    config = CodecConfig("int8", 256)
    values = _values()
    blob, residual = encode_with_feedback(values, np.zeros_like(values), config)
    assert np.array_equal(residual, values - decode(blob, values.size))
    assert np.abs(residual).max() > 0
    # The next message encodes next values plus what the last one lost.
    following = _values(seed=1)
    blob2, residual2 = encode_with_feedback(following, residual, config)
    assert np.allclose(decode(blob2, values.size) + residual2, following + residual, atol=1e-9)


def test_error_feedback_keeps_the_sum_of_many_rounds_within_one_residual() -> None:
    config = CodecConfig("int8", 256)
    residual = np.zeros(1000, np.float32)
    sent, true = np.zeros(1000), np.zeros(1000)
    for seed in range(50):
        values = _values(seed=seed)
        blob, residual = encode_with_feedback(values, residual, config)
        sent += decode(blob, 1000)
        true += values
    assert np.allclose(true - sent, residual, atol=1e-5)
    assert np.abs(true - sent).max() < 0.5 / 127  # one step, not fifty steps, of drift


def test_wrong_length_is_refused_naming_the_field() -> None:
    blob = encode(_values(), CodecConfig("int8"))
    with pytest.raises(Rejected) as info:
        decode(blob[:-1], 1000)
    assert info.value.field == "length"
    with pytest.raises(Rejected) as info:
        decode(blob[:10], 1000)
    assert info.value.field == "length"


def test_wrong_shape_is_refused_naming_the_field() -> None:
    with pytest.raises(Rejected) as info:
        decode(encode(_values(), CodecConfig("fp16")), 999)
    assert info.value.field == "shape"


def test_a_body_that_does_not_match_its_hash_is_refused() -> None:
    blob = bytearray(encode(_values(), CodecConfig("int8")))
    blob[HEADER.size + 10] ^= 0xFF
    with pytest.raises(Rejected) as info:
        decode(bytes(blob), 1000)
    assert info.value.field == "sha256"


def test_bad_magic_and_non_finite_values_are_refused() -> None:
    blob = encode(_values(), CodecConfig("none"))
    with pytest.raises(Rejected) as info:
        decode(b"XXXX" + blob[4:], 1000)
    assert info.value.field == "magic"
    bad = _values()
    bad[3] = np.nan
    with pytest.raises(Rejected) as info:
        encode(bad, CodecConfig("none"))
    assert info.value.field == "values"
    with pytest.raises(Rejected) as info:
        encode(np.full(4, 1e6, np.float32), CodecConfig("fp16"))
    assert info.value.field == "values"


@pytest.mark.parametrize("codec", ["none", "fp16", "int8"])
def test_the_element_count_is_read_from_the_header_alone(codec: str) -> None:
    blob = encode(np.linspace(-1, 1, 1000, dtype=np.float32), CodecConfig(codec))  # type: ignore[arg-type]
    assert peek_numel(blob[: HEADER.size]) == 1000
    assert peek_numel(blob) == 1000


def test_a_message_shorter_than_its_header_has_no_element_count() -> None:
    blob = encode(np.zeros(8, dtype=np.float32), CodecConfig("none"))
    with pytest.raises(Rejected, match="shorter than its header") as refused:
        peek_numel(blob[: HEADER.size - 1])
    assert refused.value.field == "length"
