from __future__ import annotations

import numpy as np
import pytest

from lumbung.verify.screening import screen

SIZE = 4096


def honest_round(workers: int, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """Updates that share a descent direction, each with its own shard's noise and scale, as
    DiLoCo workers' pseudo-gradients do."""
    rng = np.random.default_rng(seed)
    direction = rng.standard_normal(SIZE)
    return [
        (
            f"w{i}",
            (rng.uniform(0.7, 1.3) * (direction + 1.5 * rng.standard_normal(SIZE))).astype(
                np.float32
            ),
        )
        for i in range(workers)
    ]


def reasons(updates: list[tuple[str, np.ndarray]]) -> dict[str, str | None]:
    return {s.worker: s.reason for s in screen(updates)}


@pytest.mark.parametrize("seed", range(20))
def test_an_honest_round_passes(seed: int) -> None:
    assert set(reasons(honest_round(8, seed)).values()) == {None}


def test_zeros_and_non_finite_updates_are_refused_alone() -> None:
    bad = np.ones(SIZE, dtype=np.float32)
    bad[3] = np.nan
    found = reasons([("zero", np.zeros(SIZE, dtype=np.float32)), ("nan", bad)])
    assert found == {
        "zero": "the update is all zeros",
        "nan": "the update holds values that are not finite",
    }


def test_a_copy_even_scaled_is_a_free_rider_and_the_original_passes() -> None:
    updates = honest_round(5)
    updates.append(("rider", updates[2][1] * np.float32(1.1)))
    found = reasons(updates)
    assert found["rider"] == "the update is a copy of w2's"
    assert found["w2"] is None


def test_noise_a_sign_flip_and_a_scaled_update_are_caught() -> None:
    *updates, (_, unseen) = honest_round(8)
    norm = float(np.linalg.norm(updates[0][1]))
    noise = np.random.default_rng(99).standard_normal(SIZE)
    updates += [
        ("noise", (noise / np.linalg.norm(noise) * norm).astype(np.float32)),
        ("flip", -updates[1][1] * np.float32(0.9)),
        ("big", unseen * np.float32(20)),
    ]
    found = reasons(updates)
    assert "points away" in str(found["noise"])
    assert "points away" in str(found["flip"])
    assert "times larger" in str(found["big"])
    assert [w for w, r in found.items() if r is not None] == ["noise", "flip", "big"]


def test_thirty_percent_noise_is_caught_without_blaming_the_honest() -> None:
    updates = honest_round(7, seed=3)
    rng = np.random.default_rng(4)
    norm = float(np.linalg.norm(updates[0][1]))
    for i in range(3):
        noise = rng.standard_normal(SIZE)
        updates.append((f"noise{i}", (noise / np.linalg.norm(noise) * norm).astype(np.float32)))
    flagged = {w for w, r in reasons(updates).items() if r is not None}
    assert flagged == {"noise0", "noise1", "noise2"}


def test_two_updates_learn_no_limits_but_copies_are_still_caught() -> None:
    a = honest_round(1)[0][1]
    assert reasons([("a", a), ("b", -a * np.float32(3))]) == {"a": None, "b": None}
    assert reasons([("a", a), ("b", a.copy())])["b"] == "the update is a copy of a's"
