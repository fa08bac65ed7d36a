from __future__ import annotations

import pytest

from lumbung.verify.quorum import Replica, decide


def replica(node: str, sha: str, cls: str = "cpu-a") -> Replica:
    return Replica(node_id=node, execution_class=cls, outputs={"result.json": sha * 64})


def never(a: Replica, b: Replica) -> bool:
    return False


def always(a: Replica, b: Replica) -> bool:
    return True


def test_two_agreeing_replicas_settle_the_result() -> None:
    verdict = decide(
        [replica("a", "1"), replica("b", "1")], quorum=2, max_replicas=4, across_classes=never
    )
    assert verdict.state == "agreed"
    assert verdict.agreeing == ("a", "b")
    assert verdict.wrong == ()
    assert verdict.canonical == replica("a", "1")


def test_a_disagreement_asks_for_another_replica_and_the_minority_is_proven_wrong() -> None:
    first = decide(
        [replica("a", "1"), replica("liar", "2")], quorum=2, max_replicas=4, across_classes=never
    )
    assert (first.state, first.more_needed) == ("pending", 1)
    done = decide(
        [replica("a", "1"), replica("liar", "2"), replica("c", "1")],
        quorum=2,
        max_replicas=4,
        across_classes=never,
    )
    assert done.state == "agreed"
    assert done.agreeing == ("a", "c")
    assert done.wrong == ("liar",)


def test_the_liar_reporting_first_is_still_the_one_proven_wrong() -> None:
    verdict = decide(
        [replica("liar", "2"), replica("a", "1"), replica("b", "1")],
        quorum=2,
        max_replicas=3,
        across_classes=never,
    )
    assert verdict.wrong == ("liar",)
    assert verdict.canonical == replica("a", "1")


def test_replicas_that_never_agree_blame_nobody() -> None:
    verdict = decide(
        [replica("a", "1"), replica("b", "2"), replica("c", "3")],
        quorum=2,
        max_replicas=3,
        across_classes=never,
    )
    assert verdict.state == "undecided"
    assert verdict.wrong == ()
    assert "nobody blamed" in verdict.explain()


def test_two_equal_groups_settle_nothing_even_at_a_quorum_of_one() -> None:
    verdict = decide(
        [replica("a", "1"), replica("b", "2")], quorum=1, max_replicas=3, across_classes=never
    )
    assert (verdict.state, verdict.more_needed, verdict.wrong) == ("pending", 1, ())


def test_within_one_execution_class_only_identical_bytes_agree() -> None:
    pair = [replica("a", "1", "gpu-x"), replica("b", "2", "gpu-x")]
    assert decide(pair, quorum=2, max_replicas=2, across_classes=always).state == "undecided"


def test_across_classes_the_comparator_decides() -> None:
    pair = [replica("a", "1", "gpu-x"), replica("b", "2", "cpu-y")]
    assert decide(pair, quorum=2, max_replicas=2, across_classes=always).state == "agreed"
    assert decide(pair, quorum=2, max_replicas=2, across_classes=never).state == "undecided"


def test_replicas_with_different_output_names_never_agree() -> None:
    a = replica("a", "1", "gpu-x")
    b = Replica("b", "cpu-y", {"other.json": "1" * 64})
    assert decide([a, b], quorum=2, max_replicas=2, across_classes=always).state == "undecided"


def test_one_node_cannot_be_two_replicas() -> None:
    with pytest.raises(ValueError, match="distinct node"):
        decide(
            [replica("a", "1"), replica("a", "1")], quorum=2, max_replicas=3, across_classes=never
        )
