from __future__ import annotations

import pytest

from lumbung.verify.replay import check_segment, first_divergence

COMMITTED = ["h0", "h1", "h2", "h3"]  # the start and three segments


def test_a_segment_that_replays_to_its_commitment_matches() -> None:
    verdict = check_segment(COMMITTED, 1, "h2")
    assert verdict.matches
    assert verdict.explain(segment_steps=10) == "inner steps 11-20 replayed and matched"


def test_a_segment_that_does_not_replay_names_its_steps_and_both_hashes() -> None:
    verdict = check_segment(COMMITTED, 2, "zz")
    assert not verdict.matches
    assert "inner steps 21-30 do not replay" in verdict.explain(10)
    assert "committed h3, the replay gave zz" in verdict.explain(10)


@pytest.mark.parametrize("segment", [-1, 3, 10])
def test_a_segment_that_was_not_committed_cannot_be_judged(segment: int) -> None:
    with pytest.raises(ValueError, match="not committed"):
        check_segment(COMMITTED, segment, "h1")


@pytest.mark.parametrize("segments", [1, 2, 3, 7, 8, 50, 1000])
def test_bisection_finds_the_first_bad_segment_in_log_steps(segments: int) -> None:
    for bad in range(0, segments, max(1, segments // 7)):
        asked: list[int] = []

        def agrees_after(k: int, bad: int = bad, asked: list[int] = asked) -> bool:
            asked.append(k)
            return k <= bad

        assert first_divergence(segments, agrees_after) == bad
        assert len(asked) <= max(1, (segments - 1).bit_length())
        assert all(0 < k < segments for k in asked)


def test_a_run_without_segments_cannot_be_bisected() -> None:
    with pytest.raises(ValueError, match="at least one segment"):
        first_divergence(0, lambda k: True)
