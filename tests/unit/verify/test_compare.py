from __future__ import annotations

import io
import json

import numpy as np
import pytest

from lumbung.verify.compare import Comparator, Tolerance

NUMERIC = Comparator("numeric", Tolerance(rtol=1e-5, atol=1e-8))


def npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


def test_by_hash_only_the_same_bytes_agree() -> None:
    assert Comparator().agree("r.json", b'{"loss": 1.0}', b'{"loss": 1.0}')
    assert not Comparator().agree("r.json", b'{"loss": 1.0}', b'{"loss": 1.0000001}')


def test_json_numbers_agree_within_the_tolerance_and_everything_else_exactly() -> None:
    a = json.dumps({"loss": 0.123456789, "steps": 10, "tag": "x", "ok": True}).encode()
    near = json.dumps({"loss": 0.1234568, "steps": 10, "tag": "x", "ok": True}).encode()
    far = json.dumps({"loss": 0.1235, "steps": 10, "tag": "x", "ok": True}).encode()
    other_tag = json.dumps({"loss": 0.123456789, "steps": 10, "tag": "y", "ok": True}).encode()
    assert NUMERIC.agree("r.json", a, near)
    assert not NUMERIC.agree("r.json", a, far)
    assert not NUMERIC.agree("r.json", a, other_tag)


def test_json_true_is_not_the_number_one() -> None:
    assert not NUMERIC.agree("r.json", b"[true]", b"[1]")


def test_csv_cells_compare_as_numbers_where_they_are_numbers() -> None:
    a = b"step,loss\n1,0.50000001\n2,0.25\n"
    assert NUMERIC.agree("m.csv", a, b"step,loss\n1,0.5\n2,0.25\n")
    assert not NUMERIC.agree("m.csv", a, b"step,loss\n1,0.6\n2,0.25\n")
    assert not NUMERIC.agree("m.csv", a, b"step,loss\n1,0.5\n")
    assert not NUMERIC.agree("m.csv", a, b"step,LOSS\n1,0.5\n2,0.25\n")


def test_npy_arrays_compare_with_numpy_isclose_and_need_the_same_shape() -> None:
    x = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    assert NUMERIC.agree("w.npy", npy(x), npy(x * np.float32(1 + 1e-6)))
    assert not NUMERIC.agree("w.npy", npy(x), npy(x + 1e-3))
    assert not NUMERIC.agree("w.npy", npy(x), npy(x.reshape(4, 3)))


def test_nan_agrees_only_with_nan_and_infinity_only_with_itself() -> None:
    tol = Tolerance()
    assert tol.close(float("nan"), float("nan"))
    assert not tol.close(float("nan"), 1.0)
    assert tol.close(float("inf"), float("inf"))
    assert not tol.close(float("inf"), 1e308)


@pytest.mark.parametrize(
    ("name", "a", "b"),
    [
        ("r.json", b"{not json", b"{not json!"),
        ("r.json", b"[" * 5000 + b"]" * 5000, b"[" * 5000 + b"1" + b"]" * 5000),
        ("m.csv", b"\xff\xfe", b"\xff\xff"),
        ("w.npy", b"garbage", b"garbage!"),
        ("w.npy", b"\x93NUMPY truncated", b"\x93NUMPY truncated!"),
        ("w.npy", b"PK\x03\x04zip", b"PK\x03\x04zap"),
        ("model.bin", b"\x00", b"\x01"),
    ],
)
def test_outputs_that_do_not_parse_agree_with_nothing(name: str, a: bytes, b: bytes) -> None:
    assert not NUMERIC.agree(name, a, b)


def test_an_npy_of_python_objects_is_never_unpickled() -> None:
    objects = io.BytesIO()
    np.save(objects, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    assert not NUMERIC.agree("w.npy", objects.getvalue(), objects.getvalue() + b" ")
