"""Balances as the replay of signed entries: unit cases for each refusal, and a model-based test.

The state machine drives a ``Ledger`` with random (often invalid) entries from a handful of actors
and checks each outcome against a plain-dict model of where the money should be.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from lumbung.crypto.keys import Identity
from lumbung.errors import Conflict, Forbidden, LumbungError, NotFound, Rejected, Unauthenticated
from lumbung.ledger.balances import EscrowState, Ledger, balance_change
from lumbung.ledger.entries import (
    SIGNING_CONTEXT,
    EscrowLock,
    Fee,
    Grant,
    Mint,
    Refund,
    Release,
    SignedEntry,
    Slash,
    Stake,
    Transfer,
    Unstake,
    decode_leaf,
    encode,
    leaf_bytes,
    sign_entry,
)

# Keys are generated once per module: signing is fast, key generation needlessly repeated is not.
TREASURY = Identity.generate()
HUB = Identity.generate()
USERS = [Identity.generate() for _ in range(3)]
EVERYONE = [TREASURY, HUB, *USERS]
JOBS = ["job_aaaaaaaaaaaaaaaa", "job_bbbbbbbbbbbbbbbb", "job_cccccccccccccccc"]
TASK = "task_aaaaaaaaaaaaaaaa"
AT_MS = 1_700_000_000_000
ROLES = {"treasury": TREASURY.actor_id, "hub": HUB.actor_id}
CONSUMER, PROVIDER, OTHER = USERS


def signed_next(ledger: Ledger, author: Identity, cls: type[Any], **body: Any) -> SignedEntry:
    """``author``'s next entry of kind ``cls``, signed, with the right sequence number."""
    entry = cls(author=author.actor_id, seq=ledger.last_seq(author.actor_id) + 1, at=AT_MS, **body)
    return sign_entry(entry, author)


def apply(ledger: Ledger, author: Identity, cls: type[Any], **body: Any) -> SignedEntry:
    signed = signed_next(ledger, author, cls, **body)
    ledger.apply(signed, **ROLES)
    return signed


def funded_job(amount: int = 1000) -> Ledger:
    """A ledger where CONSUMER was minted ``amount`` and locked it all for JOBS[0]."""
    ledger = Ledger()
    apply(ledger, TREASURY, Mint, to=CONSUMER.actor_id, amount=amount)
    apply(ledger, CONSUMER, EscrowLock, job_id=JOBS[0], amount=amount)
    return ledger


def assert_refused(
    ledger: Ledger, signed: SignedEntry, error: type[LumbungError], match: str
) -> None:
    before = ledger.snapshot()
    with pytest.raises(error, match=match):
        ledger.apply(signed, **ROLES)
    assert ledger.snapshot() == before


def test_a_job_lifecycle_moves_money_and_conserves_it() -> None:
    ledger = funded_job(1000)
    apply(
        ledger,
        HUB,
        Release,
        job_id=JOBS[0],
        to=PROVIDER.actor_id,
        amount=600,
        task_id=TASK,
        reason="checkpoint seq 3",
    )
    apply(ledger, HUB, Fee, job_id=JOBS[0], amount=50)
    apply(ledger, HUB, Refund, job_id=JOBS[0], to=CONSUMER.actor_id, amount=300)
    apply(ledger, PROVIDER, Stake, amount=400)
    apply(ledger, HUB, Slash, node=PROVIDER.actor_id, amount=100, reason="bad result")
    apply(ledger, PROVIDER, Unstake, amount=300)

    assert ledger.balance(CONSUMER.actor_id) == 300
    assert ledger.balance(PROVIDER.actor_id) == 500
    assert ledger.staked(PROVIDER.actor_id) == 0
    assert ledger.balance(TREASURY.actor_id) == 150  # the fee and the slash
    assert ledger.escrow(JOBS[0]) == EscrowState(
        1000, 600, 300, 50, 50, CONSUMER.actor_id, {(TASK, PROVIDER.actor_id): 600}, AT_MS
    )
    assert ledger.supply() == 1000
    ledger.check_invariants()


def test_a_forged_signature_is_refused() -> None:
    ledger = Ledger()
    mint = Mint(author=TREASURY.actor_id, seq=1, at=AT_MS, to=OTHER.actor_id, amount=5)
    forged = replace(sign_entry(mint, TREASURY), entry=replace(mint, amount=5_000_000))

    assert_refused(ledger, forged, Unauthenticated, "does not verify")


def test_an_entry_signed_with_a_key_other_than_the_authors_is_refused() -> None:
    ledger = Ledger()
    entry = Mint(author=TREASURY.actor_id, seq=1, at=AT_MS, to=OTHER.actor_id, amount=5)
    by_other = SignedEntry(entry, OTHER.sign(SIGNING_CONTEXT + encode(entry)), OTHER.public_key_raw)

    assert_refused(ledger, by_other, Unauthenticated, "author")


def test_the_same_entry_twice_is_a_replay() -> None:
    ledger = Ledger()
    signed = apply(ledger, TREASURY, Mint, to=OTHER.actor_id, amount=5)

    assert_refused(ledger, signed, Conflict, "expected seq 2")


def test_a_skipped_sequence_number_is_refused() -> None:
    ledger = Ledger()
    entry = Mint(author=TREASURY.actor_id, seq=2, at=AT_MS, to=OTHER.actor_id, amount=5)

    assert_refused(ledger, sign_entry(entry, TREASURY), Conflict, "expected seq 1")


def test_sequence_numbers_count_per_author() -> None:
    ledger = funded_job()

    assert ledger.last_seq(TREASURY.actor_id) == 1
    assert ledger.last_seq(CONSUMER.actor_id) == 1
    assert ledger.last_seq(HUB.actor_id) == 0


@pytest.mark.parametrize("minter", [HUB, OTHER])
def test_only_the_treasury_mints(minter: Identity) -> None:
    ledger = Ledger()
    signed = signed_next(ledger, minter, Mint, to=minter.actor_id, amount=5)

    assert_refused(ledger, signed, Forbidden, "only the treasury")


@pytest.mark.parametrize(
    ("cls", "body"),
    [
        (
            Release,
            {
                "job_id": JOBS[0],
                "to": PROVIDER.actor_id,
                "amount": 5,
                "task_id": TASK,
                "reason": "task completed",
            },
        ),
        (Refund, {"job_id": JOBS[0], "to": CONSUMER.actor_id, "amount": 5}),
        (Fee, {"job_id": JOBS[0], "amount": 5}),
        (Slash, {"node": PROVIDER.actor_id, "amount": 5, "reason": "bad result"}),
    ],
)
@pytest.mark.parametrize("author", [CONSUMER, PROVIDER, TREASURY])
def test_only_the_hub_releases_refunds_takes_fees_and_slashes(
    cls: type[Any], body: dict[str, Any], author: Identity
) -> None:
    ledger = funded_job()
    apply(ledger, TREASURY, Mint, to=PROVIDER.actor_id, amount=10)
    apply(ledger, PROVIDER, Stake, amount=10)

    assert_refused(ledger, signed_next(ledger, author, cls, **body), Forbidden, "only the hub")
    apply(ledger, HUB, cls, **body)  # the same entry by the hub is fine


def test_a_transfer_beyond_the_balance_is_refused() -> None:
    ledger = Ledger()
    apply(ledger, TREASURY, Mint, to=OTHER.actor_id, amount=5)
    signed = signed_next(ledger, OTHER, Transfer, to=PROVIDER.actor_id, amount=6)

    assert_refused(ledger, signed, Rejected, "insufficient funds: has 5, needs 6")


def test_locked_and_staked_money_is_not_available() -> None:
    ledger = funded_job(100)
    apply(ledger, TREASURY, Mint, to=PROVIDER.actor_id, amount=10)
    apply(ledger, PROVIDER, Stake, amount=10)

    attempts: list[tuple[Identity, type[Any], dict[str, Any]]] = [
        (CONSUMER, Transfer, {"to": OTHER.actor_id, "amount": 1}),
        (CONSUMER, EscrowLock, {"job_id": JOBS[1], "amount": 1}),
        (PROVIDER, Stake, {"amount": 1}),
        (PROVIDER, Transfer, {"to": OTHER.actor_id, "amount": 1}),
    ]
    for author, cls, body in attempts:
        assert_refused(ledger, signed_next(ledger, author, cls, **body), Rejected, "insufficient")


def test_a_release_beyond_the_escrow_is_refused() -> None:
    ledger = funded_job(100)
    apply(ledger, HUB, Fee, job_id=JOBS[0], amount=30)
    signed = signed_next(
        ledger,
        HUB,
        Release,
        job_id=JOBS[0],
        to=PROVIDER.actor_id,
        amount=71,
        task_id=TASK,
        reason="task completed",
    )

    assert_refused(ledger, signed, Rejected, f"release exceeds escrow of job {JOBS[0]}")


def test_paying_out_of_a_job_without_escrow_is_refused() -> None:
    ledger = funded_job(100)
    signed = signed_next(ledger, HUB, Fee, job_id=JOBS[1], amount=1)

    assert_refused(ledger, signed, Rejected, "has no escrow")
    with pytest.raises(NotFound):
        ledger.escrow(JOBS[1])


def test_a_refund_goes_only_to_the_jobs_consumer() -> None:
    ledger = funded_job(100)
    signed = signed_next(ledger, HUB, Refund, job_id=JOBS[0], to=PROVIDER.actor_id, amount=10)

    assert_refused(ledger, signed, Rejected, "only to its consumer")


def test_only_the_jobs_consumer_adds_to_its_escrow() -> None:
    ledger = funded_job(100)
    apply(ledger, TREASURY, Mint, to=OTHER.actor_id, amount=10)
    signed = signed_next(ledger, OTHER, EscrowLock, job_id=JOBS[0], amount=10)

    assert_refused(ledger, signed, Forbidden, "belongs to consumer")


def test_slash_and_unstake_cannot_exceed_the_stake() -> None:
    ledger = Ledger()
    apply(ledger, TREASURY, Mint, to=PROVIDER.actor_id, amount=10)
    apply(ledger, PROVIDER, Stake, amount=4)

    slash = signed_next(ledger, HUB, Slash, node=PROVIDER.actor_id, amount=5, reason="bad result")
    assert_refused(ledger, slash, Rejected, "slash exceeds the stake")
    unstake = signed_next(ledger, PROVIDER, Unstake, amount=5)
    assert_refused(ledger, unstake, Rejected, "unstake exceeds the stake")


@pytest.mark.parametrize("amount", [0, -5, 10**15 + 1, 2.5, True, "5"])
def test_bad_amounts_in_leaf_bytes_never_reach_the_ledger(amount: Any) -> None:
    ledger = Ledger()
    leaf = json.loads(leaf_bytes(signed_next(ledger, TREASURY, Mint, to=OTHER.actor_id, amount=1)))
    leaf["entry"]["amount"] = amount

    with pytest.raises(Rejected) as caught:
        decode_leaf(json.dumps(leaf, sort_keys=True, separators=(",", ":")).encode())

    assert caught.value.field == "entry.amount"


@pytest.mark.parametrize("amount", [0, -5])
def test_the_ledger_refuses_non_positive_amounts_even_in_an_entry_built_around_validation(
    amount: int,
) -> None:
    ledger = funded_job(100)
    entry = Transfer(author=CONSUMER.actor_id, seq=2, at=AT_MS, to=OTHER.actor_id, amount=1)
    object.__setattr__(entry, "amount", amount)  # what no constructor allows

    assert_refused(ledger, sign_entry(entry, CONSUMER), Rejected, "positive integer")


def test_reserved_kinds_move_no_money_but_take_a_sequence_number() -> None:
    ledger = funded_job(100)
    before = ledger.snapshot()

    apply(ledger, CONSUMER, Grant, body={"dataset": "d1"})

    assert ledger.last_seq(CONSUMER.actor_id) == 2
    assert replace(ledger.snapshot(), seqs=before.seqs) == before


def test_replay_stops_at_the_first_invalid_entry() -> None:
    ledger = Ledger()
    first = apply(ledger, TREASURY, Mint, to=OTHER.actor_id, amount=5)

    with pytest.raises(Conflict):
        Ledger.replay([first, first], **ROLES)


@dataclass
class Model:
    """Where the money should be, kept in plain dicts by the test, independently of ``Ledger``."""

    balances: dict[str, int] = field(default_factory=dict)
    staked: dict[str, int] = field(default_factory=dict)
    escrows: dict[str, EscrowState] = field(default_factory=dict)
    supply: int = 0

    def move(
        self,
        source: dict[str, int],
        source_key: str,
        target: dict[str, int],
        target_key: str,
        amount: int,
    ) -> None:
        source[source_key] = source.get(source_key, 0) - amount
        target[target_key] = target.get(target_key, 0) + amount

    def remaining(self, job_id: str) -> int:
        escrow = self.escrows.get(job_id)
        return 0 if escrow is None else escrow.remaining

    def pay_out(self, job_id: str, what: str, amount: int) -> None:
        escrow = self.escrows[job_id]
        changed = replace(escrow, remaining=escrow.remaining - amount)
        self.escrows[job_id] = replace(changed, **{what: getattr(escrow, what) + amount})


actors = st.sampled_from(EVERYONE)
users = st.sampled_from(USERS)
# Mostly the right author, so that the entries that get past authorisation are exercised too.
mostly_treasury = st.one_of(st.just(TREASURY), actors)
mostly_hub = st.one_of(st.just(HUB), actors)
jobs = st.sampled_from(JOBS)
amounts = st.integers(1, 600)


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.ledger = Ledger()
        self.model = Model()
        self.accepted: list[SignedEntry] = []

    def submit(self, author: Identity, cls: type[Any], should_accept: bool, **body: Any) -> bool:
        signed = signed_next(self.ledger, author, cls, **body)
        before = self.ledger.snapshot()
        try:
            self.ledger.apply(signed, **ROLES)
        except LumbungError:
            assert not should_accept, f"refused a valid {cls.__name__}"
            assert self.ledger.snapshot() == before, "a refused entry changed the state"
            return False
        assert should_accept, f"accepted an invalid {cls.__name__}"
        event(f"accepted {cls.__name__}")  # shown by --hypothesis-show-statistics
        self.accepted.append(signed)
        expected_supply = before.supply + (body["amount"] if cls is Mint else 0)
        assert self.ledger.supply() == expected_supply, "supply changed other than by mint"
        for user in (HUB, *USERS):  # what a statement of account shows each of them
            moved = self.ledger.balance(user.actor_id) - before.balances.get(user.actor_id, 0)
            assert (balance_change(signed.entry, user.actor_id) or 0) == moved, cls.__name__
        return True

    @initialize(amounts=st.lists(amounts, min_size=3, max_size=3))
    def fund_each_user_with_a_job_and_a_stake(self, amounts: list[int]) -> None:
        # Start from money in every place, so that short runs reach payouts and slashes too.
        for user, job_id, amount in zip(USERS, JOBS, amounts, strict=True):
            self.mint(TREASURY, user, 3 * amount)
            self.lock(user, job_id, amount)
            self.stake(user, amount)

    @rule(author=mostly_treasury, to=users, amount=st.integers(1, 10_000))
    def mint(self, author: Identity, to: Identity, amount: int) -> None:
        if self.submit(author, Mint, author is TREASURY, to=to.actor_id, amount=amount):
            self.model.supply += amount
            self.model.balances[to.actor_id] = self.model.balances.get(to.actor_id, 0) + amount

    @rule(author=actors, to=actors, amount=amounts)
    def transfer(self, author: Identity, to: Identity, amount: int) -> None:
        ok = author is not to and self._available(author) >= amount
        if self.submit(author, Transfer, ok, to=to.actor_id, amount=amount):
            bal = self.model.balances
            self.model.move(bal, author.actor_id, bal, to.actor_id, amount)

    @rule(author=users, job_id=jobs, amount=amounts)
    def lock(self, author: Identity, job_id: str, amount: int) -> None:
        escrow = self.model.escrows.get(job_id)
        ok = self._available(author) >= amount and (
            escrow is None or escrow.consumer == author.actor_id
        )
        if self.submit(author, EscrowLock, ok, job_id=job_id, amount=amount):
            self.model.balances[author.actor_id] -= amount
            escrow = escrow or EscrowState(0, 0, 0, 0, 0, author.actor_id, {}, AT_MS)
            self.model.escrows[job_id] = replace(
                escrow, locked=escrow.locked + amount, remaining=escrow.remaining + amount
            )

    @rule(author=mostly_hub, job_id=jobs, to=actors, amount=amounts)
    def release(self, author: Identity, job_id: str, to: Identity, amount: int) -> None:
        ok = author is HUB and self.model.remaining(job_id) >= amount
        body = {"task_id": TASK, "reason": "task completed"}
        if self.submit(author, Release, ok, job_id=job_id, to=to.actor_id, amount=amount, **body):
            self.model.pay_out(job_id, "released", amount)
            escrow = self.model.escrows[job_id]
            released_by = dict(escrow.released_by)
            released_by[(TASK, to.actor_id)] = released_by.get((TASK, to.actor_id), 0) + amount
            self.model.escrows[job_id] = replace(escrow, released_by=released_by)
            self._credit(to.actor_id, amount)

    @rule(author=mostly_hub, job_id=jobs, to=users, amount=amounts)
    def refund(self, author: Identity, job_id: str, to: Identity, amount: int) -> None:
        escrow = self.model.escrows.get(job_id)
        ok = author is HUB and escrow is not None and escrow.consumer == to.actor_id
        ok = ok and self.model.remaining(job_id) >= amount
        if self.submit(author, Refund, ok, job_id=job_id, to=to.actor_id, amount=amount):
            self.model.pay_out(job_id, "refunded", amount)
            self._credit(to.actor_id, amount)

    @rule(author=mostly_hub, job_id=jobs, amount=amounts)
    def fee(self, author: Identity, job_id: str, amount: int) -> None:
        ok = author is HUB and self.model.remaining(job_id) >= amount
        if self.submit(author, Fee, ok, job_id=job_id, amount=amount):
            self.model.pay_out(job_id, "fees", amount)
            self._credit(TREASURY.actor_id, amount)

    @rule(author=users, amount=amounts)
    def stake(self, author: Identity, amount: int) -> None:
        if self.submit(author, Stake, self._available(author) >= amount, amount=amount):
            m = self.model
            m.move(m.balances, author.actor_id, m.staked, author.actor_id, amount)

    @rule(author=actors, amount=amounts)
    def unstake(self, author: Identity, amount: int) -> None:
        ok = self.model.staked.get(author.actor_id, 0) >= amount
        if self.submit(author, Unstake, ok, amount=amount):
            m = self.model
            m.move(m.staked, author.actor_id, m.balances, author.actor_id, amount)

    @rule(author=mostly_hub, node=users, amount=amounts)
    def slash(self, author: Identity, node: Identity, amount: int) -> None:
        ok = author is HUB and self.model.staked.get(node.actor_id, 0) >= amount
        if self.submit(author, Slash, ok, node=node.actor_id, amount=amount, reason="bad result"):
            m = self.model
            m.move(m.staked, node.actor_id, m.balances, TREASURY.actor_id, amount)

    @rule(job_id=jobs, to=users, amount=amounts, failing=st.sampled_from(["funds", "author"]))
    def a_batch_that_fails_at_its_last_entry_leaves_no_trace(
        self, job_id: str, to: Identity, amount: int, failing: str
    ) -> None:
        """Valid entries that touch every kind of state, then one the ledger refuses, inside a
        tentative block: all of it is undone, to the last sequence number."""
        before = self.ledger.snapshot()
        with pytest.raises(LumbungError), self.ledger.tentative():  # noqa: PT012 - the block is the test
            for author, cls, body in (
                (TREASURY, Mint, {"to": to.actor_id, "amount": amount}),
                (to, EscrowLock, {"job_id": job_id, "amount": amount}),
                (to, Stake, {"amount": 1}),
                (HUB, Fee, {"job_id": job_id, "amount": 1}),
            ):
                escrow = self.ledger.snapshot().escrows.get(job_id)
                if cls is EscrowLock and escrow is not None and escrow.consumer != to.actor_id:
                    continue  # another consumer's job: the lock itself would be refused
                self.ledger.apply(signed_next(self.ledger, author, cls, **body), **ROLES)
            bad = {"funds": (to, Transfer, {"to": HUB.actor_id, "amount": 10**12})}
            bad["author"] = (to, Mint, {"to": to.actor_id, "amount": 1})
            author, cls, body = bad[failing]
            self.ledger.apply(signed_next(self.ledger, author, cls, **body), **ROLES)
        assert self.ledger.snapshot() == before

    @precondition(lambda self: bool(self.accepted))
    @rule(index=st.integers(0, 10**6))
    def replay_an_accepted_entry(self, index: int) -> None:
        old = self.accepted[index % len(self.accepted)]
        assert_refused(self.ledger, old, Conflict, "replayed or out-of-order")

    @rule(author=actors, skip=st.integers(2, 5))
    def skip_sequence_numbers(self, author: Identity, skip: int) -> None:
        seq = self.ledger.last_seq(author.actor_id) + skip
        entry = Stake(author=author.actor_id, seq=seq, at=AT_MS, amount=1)
        assert_refused(self.ledger, sign_entry(entry, author), Conflict, "out-of-order")

    @rule(author=actors, signer=actors)
    def sign_for_someone_else(self, author: Identity, signer: Identity) -> None:
        entry = Stake(
            author=author.actor_id,
            seq=self.ledger.last_seq(author.actor_id) + 1,
            at=AT_MS,
            amount=1,
        )
        signature = signer.sign(SIGNING_CONTEXT + encode(entry))
        forged = SignedEntry(entry, signature, author.public_key_raw)
        if signer is not author:
            assert_refused(self.ledger, forged, Unauthenticated, "does not verify")

    @invariant()
    def money_is_conserved_and_never_negative(self) -> None:
        self.ledger.check_invariants()
        for job_id in self.model.escrows:
            escrow = self.ledger.escrow(job_id)
            assert (
                escrow.locked == escrow.released + escrow.refunded + escrow.fees + escrow.remaining
            )

    @invariant()
    def the_ledger_agrees_with_the_model(self) -> None:
        snapshot = self.ledger.snapshot()
        m = self.model
        assert snapshot.balances == {k: v for k, v in m.balances.items() if v}
        assert snapshot.staked == {k: v for k, v in m.staked.items() if v}
        assert snapshot.escrows == m.escrows
        assert snapshot.supply == m.supply

    def teardown(self) -> None:
        replayed = Ledger.replay(self.accepted, **ROLES)
        assert replayed.snapshot() == self.ledger.snapshot()

    def _available(self, actor: Identity) -> int:
        return self.model.balances.get(actor.actor_id, 0)

    def _credit(self, actor: str, amount: int) -> None:
        self.model.balances[actor] = self.model.balances.get(actor, 0) + amount


LedgerMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=50, deadline=None)
test_random_entry_sequences_keep_the_ledger_consistent = LedgerMachine.TestCase


def test_apply_verified_skips_only_the_signature_check() -> None:
    ledger = Ledger()
    signed = signed_next(ledger, TREASURY, Mint, to=USERS[0].actor_id, amount=500)
    forged = replace(signed, signature=bytes(64))
    with pytest.raises(Unauthenticated):
        ledger.apply(forged, **ROLES)
    ledger.apply_verified(signed, **ROLES)  # as an auditor does after checking in bulk
    assert ledger.balance(USERS[0].actor_id) == 500
    with pytest.raises(Conflict, match="expected seq 2"):
        ledger.apply_verified(signed, **ROLES)  # still refuses a replay
    stranger = signed_next(ledger, USERS[1], Mint, to=USERS[1].actor_id, amount=5)
    with pytest.raises(Forbidden):
        ledger.apply_verified(stranger, **ROLES)  # and a mint by anyone but the treasury


def test_a_failed_batch_that_opened_an_escrow_leaves_none_behind() -> None:
    ledger = Ledger()
    apply(ledger, TREASURY, Mint, to=CONSUMER.actor_id, amount=10)
    before = ledger.snapshot()
    with pytest.raises(Rejected), ledger.tentative():  # noqa: PT012 - the block is the test
        apply(ledger, CONSUMER, EscrowLock, job_id=JOBS[1], amount=10)
        apply(ledger, CONSUMER, Stake, amount=1)  # nothing left to stake
    assert ledger.snapshot() == before
    with pytest.raises(NotFound):
        ledger.escrow(JOBS[1])
