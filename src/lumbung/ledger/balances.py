"""Balances as the replay of signed entries: never stored as truth, always recomputed from the log.

A ``Ledger`` is the state after some prefix of the log. ``apply`` checks one entry completely (the
author's signature, its sequence number, who may author it, and that no balance, stake or escrow
would go negative) and only then changes anything, so a rejected entry leaves the state exactly as
it was. Money is conserved: credits enter only by ``mint`` and then only move between an actor's
available balance, its stake, a job's escrow and the treasury, so at every step

    sum(available) + sum(staked) + sum(escrow remaining) == supply (the total ever minted).

Where money goes: a consumer's ``escrow_lock`` moves its balance into the job's escrow; the hub
pays escrow out by ``release`` (to a provider), ``refund`` (only to the job's consumer) and ``fee``
(to the treasury); ``stake``/``unstake`` move a provider's own funds in and out of stake; the hub's
``slash`` moves stake to the treasury. The reserved kinds carry no money and only advance their
author's sequence number.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from lumbung.errors import Conflict, Forbidden, NotFound, Rejected
from lumbung.ledger.entries import (
    Entry,
    EscrowLock,
    Fee,
    Mint,
    Refund,
    Release,
    SignedEntry,
    Slash,
    Stake,
    Transfer,
    Unstake,
    verify_entry,
)


@dataclass(frozen=True, slots=True)
class EscrowState:
    """A job's escrow: what its consumer locked and where it went, in micro-credits."""

    locked: int
    released: int
    refunded: int
    fees: int
    remaining: int
    consumer: str
    # What each provider was paid for each task, keyed (task_id, provider): settlement pays the
    # difference between what kept work earned and this, so paying twice is impossible.
    released_by: Mapping[tuple[str, str], int] = field(default_factory=dict)
    opened_at: int = 0  # unix milliseconds of the first lock


@dataclass(frozen=True, slots=True)
class LedgerSnapshot:
    """The whole replay state as plain values, for comparing two ledgers (zero entries omitted)."""

    balances: dict[str, int]
    staked: dict[str, int]
    escrows: dict[str, EscrowState]
    supply: int
    seqs: dict[str, int]


@dataclass(slots=True)
class _Escrow:
    consumer: str
    opened_at: int
    locked: int = 0
    released: int = 0
    refunded: int = 0
    fees: int = 0
    released_by: dict[tuple[str, str], int] = field(default_factory=dict)

    @property
    def remaining(self) -> int:
        return self.locked - self.released - self.refunded - self.fees


_MISSING = object()


def balance_change(entry: Entry, actor: str) -> int | None:
    """How ``entry`` moves ``actor``'s available balance, as ``Ledger.apply`` moves it: the amount
    paid in (positive), paid out (negative), or 0 when none of the actor's spendable credits
    move; None for an entry that carries no amount.

    The treasury's side of fees and slashes is left out: which actor is the treasury is the
    hub's setting, not something the entry names. A statement of account reads its signs here.
    """
    match entry:
        case Mint() | Release() | Refund():
            return entry.amount if entry.to == actor else 0
        case Transfer():
            return (entry.amount if entry.to == actor else 0) - (
                entry.amount if entry.author == actor else 0
            )
        case EscrowLock() | Stake():
            return -entry.amount if entry.author == actor else 0
        case Unstake():
            return entry.amount if entry.author == actor else 0
        case Fee() | Slash():
            return 0
        case _:
            return None


class Ledger:
    """In-memory replay state of the log: balances, stakes, escrows, supply, sequence numbers."""

    def __init__(self) -> None:
        self._balances: dict[str, int] = {}
        self._staked: dict[str, int] = {}
        self._escrows: dict[str, _Escrow] = {}
        self._supply = 0
        self._seqs: dict[str, int] = {}
        # While a tentative() block runs: how to undo each entry applied in it, in order.
        self._undo: list[Callable[[], None]] | None = None

    @contextlib.contextmanager
    def tentative(self) -> Iterator[None]:
        """Entries applied inside the block are all undone if it raises: a batch that fails at
        its last entry, or whose write to the store fails, leaves no trace. Costs O(entries in
        the block), not O(state) as copying the ledger would."""
        if self._undo is not None:
            raise AssertionError("tentative blocks do not nest")
        self._undo = []
        try:
            yield
        except BaseException:
            for undo in reversed(self._undo):
                undo()
            raise
        finally:
            self._undo = None

    @classmethod
    def replay(cls, entries: Iterable[SignedEntry], *, treasury: str, hub: str) -> Ledger:
        """The state after applying ``entries`` in order; raises at the first invalid one."""
        ledger = cls()
        for signed in entries:
            ledger.apply(signed, treasury=treasury, hub=hub)
        return ledger

    def balance(self, actor: str) -> int:
        """``actor``'s available (spendable) balance in micro-credits."""
        return self._balances.get(actor, 0)

    def staked(self, actor: str) -> int:
        return self._staked.get(actor, 0)

    def escrow(self, job_id: str) -> EscrowState:
        """The escrow of ``job_id``; ``NotFound`` if nothing was ever locked for it."""
        escrow = self._escrows.get(job_id)
        if escrow is None:
            raise NotFound(f"no escrow for job {job_id}", field="job_id")
        return EscrowState(
            escrow.locked,
            escrow.released,
            escrow.refunded,
            escrow.fees,
            escrow.remaining,
            escrow.consumer,
            dict(escrow.released_by),
            escrow.opened_at,
        )

    def open_escrows(self) -> list[str]:
        """Jobs whose escrow still holds money: running jobs, and any a crash left unsettled."""
        return [job_id for job_id, escrow in self._escrows.items() if escrow.remaining > 0]

    def supply(self) -> int:
        """Every micro-credit ever minted; no other entry creates or destroys money."""
        return self._supply

    def last_seq(self, actor: str) -> int:
        """The sequence number of ``actor``'s latest entry, 0 before its first."""
        return self._seqs.get(actor, 0)

    def snapshot(self) -> LedgerSnapshot:
        return LedgerSnapshot(
            balances={actor: amount for actor, amount in self._balances.items() if amount},
            staked={actor: amount for actor, amount in self._staked.items() if amount},
            escrows={job_id: self.escrow(job_id) for job_id in self._escrows},
            supply=self._supply,
            seqs=dict(self._seqs),
        )

    def apply(self, signed: SignedEntry, *, treasury: str, hub: str) -> None:
        """Validate one signed entry against the current state, then apply it, all or nothing.

        Raises ``Unauthenticated`` (bad signature or key), ``Conflict`` (sequence number not the
        author's next), ``Forbidden`` (author may not write this kind, or this job), ``Rejected``
        (funds, stake or escrow would go negative), and then nothing has changed. Each ``_apply_*``
        method below checks everything before its first write.
        """
        verify_entry(signed)
        self.apply_verified(signed, treasury=treasury, hub=hub)

    def apply_verified(self, signed: SignedEntry, *, treasury: str, hub: str) -> None:
        """``apply`` for an entry whose signature the caller has already checked.

        An auditor verifies a million signatures in parallel processes, then replays in order;
        checking each signature again here would double the audit. Never call this on input
        whose signature nobody verified: it checks everything but the signature.
        """
        entry = signed.entry
        if self._undo is not None:
            self._undo.append(self._saved(entry, treasury))
        expected_seq = self._seqs.get(entry.author, 0) + 1
        if entry.seq != expected_seq:
            raise Conflict(
                f"replayed or out-of-order entry: expected seq {expected_seq}", field="seq"
            )
        # Entry constructors already refuse such amounts; this guards objects built around them.
        amount = getattr(entry, "amount", 1)
        if type(amount) is not int or amount <= 0:
            raise Rejected(f"amount must be a positive integer, got {amount!r}", field="amount")
        match entry:
            case Mint():
                self._apply_mint(entry, treasury)
            case Transfer():
                self._apply_transfer(entry)
            case EscrowLock():
                self._apply_escrow_lock(entry)
            case Release():
                self._apply_release(entry, hub)
            case Refund():
                self._apply_refund(entry, hub)
            case Fee():
                self._apply_fee(entry, hub, treasury)
            case Stake():
                self._apply_stake(entry)
            case Unstake():
                self._apply_unstake(entry)
            case Slash():
                self._apply_slash(entry, hub, treasury)
            case _:
                pass  # reserved kinds move no money; accepting them only advances the seq
        self._seqs[entry.author] = entry.seq

    def _saved(self, entry: object, treasury: str) -> Callable[[], None]:
        """A function that puts back everything applying ``entry`` can change: the balances and
        stakes of its author, payee, node and the treasury, its job's escrow, the author's
        sequence number and the supply."""
        named = (getattr(entry, name, None) for name in ("author", "to", "node"))
        actors = {actor for actor in named if isinstance(actor, str)} | {treasury}
        balances = {a: self._balances.get(a, _MISSING) for a in actors}
        staked = {a: self._staked.get(a, _MISSING) for a in actors}
        author = getattr(entry, "author", "")
        seq = self._seqs.get(author, _MISSING)
        job_id = getattr(entry, "job_id", None)
        # Copy the escrow itself (it is changed in place); deepcopy of the sentinel would not be it.
        live = self._escrows.get(job_id) if job_id else None
        escrow = _MISSING if live is None else copy.deepcopy(live)
        supply = self._supply

        def restore() -> None:
            for saved, live in ((balances, self._balances), (staked, self._staked)):
                for actor, value in saved.items():
                    _restore(live, actor, value)
            _restore(self._seqs, author, seq)
            if job_id:
                _restore(self._escrows, job_id, escrow)
            self._supply = supply

        return restore

    def check_invariants(self) -> None:
        """Raise ``AssertionError`` if money was created, destroyed, or went negative.

        A failure here is a bug in this module, never bad input: ``apply`` refuses bad input.
        """
        negative = [
            f"{what} of {owner}"
            for what, values in (("balance", self._balances), ("stake", self._staked))
            for owner, amount in values.items()
            if amount < 0
        ]
        for job_id, escrow in self._escrows.items():
            amounts = (escrow.locked, escrow.released, escrow.refunded, escrow.fees)
            if min(amounts) < 0 or escrow.remaining < 0:
                negative.append(f"escrow of {job_id}")
        if negative:
            raise AssertionError(f"negative amounts: {', '.join(negative)}")
        held = (
            sum(self._balances.values())
            + sum(self._staked.values())
            + sum(escrow.remaining for escrow in self._escrows.values())
        )
        if held != self._supply:
            raise AssertionError(f"money not conserved: {held} held, {self._supply} minted")

    # Each _apply_* checks first and writes last; a raise before the first write changes nothing.

    def _apply_mint(self, entry: Mint, treasury: str) -> None:
        _require_author(entry.author, treasury, "the treasury", "mint")
        self._supply += entry.amount
        self._credit(entry.to, entry.amount)

    def _apply_transfer(self, entry: Transfer) -> None:
        if entry.to == entry.author:
            raise Rejected("a transfer to oneself moves nothing", field="to")
        self._require_funds(entry.author, entry.amount)
        self._balances[entry.author] -= entry.amount
        self._credit(entry.to, entry.amount)

    def _apply_escrow_lock(self, entry: EscrowLock) -> None:
        escrow = self._escrows.get(entry.job_id)
        if escrow is not None and escrow.consumer != entry.author:
            raise Forbidden(
                f"job {entry.job_id}'s escrow belongs to consumer {escrow.consumer}",
                field="job_id",
            )
        self._require_funds(entry.author, entry.amount)
        self._balances[entry.author] -= entry.amount
        if escrow is None:
            escrow = self._escrows[entry.job_id] = _Escrow(entry.author, opened_at=entry.at)
        escrow.locked += entry.amount

    def _apply_release(self, entry: Release, hub: str) -> None:
        _require_author(entry.author, hub, "the hub", "release")
        escrow = self._require_escrow("release", entry.job_id, entry.amount)
        escrow.released += entry.amount
        key = (entry.task_id, entry.to)
        escrow.released_by[key] = escrow.released_by.get(key, 0) + entry.amount
        self._credit(entry.to, entry.amount)

    def _apply_refund(self, entry: Refund, hub: str) -> None:
        _require_author(entry.author, hub, "the hub", "refund")
        escrow = self._require_escrow("refund", entry.job_id, entry.amount)
        if entry.to != escrow.consumer:
            raise Rejected(
                f"a refund of job {entry.job_id} goes only to its consumer {escrow.consumer}",
                field="to",
            )
        escrow.refunded += entry.amount
        self._credit(entry.to, entry.amount)

    def _apply_fee(self, entry: Fee, hub: str, treasury: str) -> None:
        _require_author(entry.author, hub, "the hub", "fee")
        escrow = self._require_escrow("fee", entry.job_id, entry.amount)
        escrow.fees += entry.amount
        self._credit(treasury, entry.amount)

    def _apply_stake(self, entry: Stake) -> None:
        self._require_funds(entry.author, entry.amount)
        self._balances[entry.author] -= entry.amount
        self._staked[entry.author] = self._staked.get(entry.author, 0) + entry.amount

    def _apply_unstake(self, entry: Unstake) -> None:
        self._require_stake(entry.author, entry.amount, "unstake")
        self._staked[entry.author] -= entry.amount
        self._credit(entry.author, entry.amount)

    def _apply_slash(self, entry: Slash, hub: str, treasury: str) -> None:
        _require_author(entry.author, hub, "the hub", "slash")
        self._require_stake(entry.node, entry.amount, "slash")
        self._staked[entry.node] -= entry.amount
        self._credit(treasury, entry.amount)

    def _credit(self, actor: str, amount: int) -> None:
        self._balances[actor] = self._balances.get(actor, 0) + amount

    def _require_funds(self, actor: str, amount: int) -> None:
        available = self._balances.get(actor, 0)
        if available < amount:
            raise Rejected(f"insufficient funds: has {available}, needs {amount}", field="amount")

    def _require_stake(self, actor: str, amount: int, action: str) -> None:
        staked = self._staked.get(actor, 0)
        if staked < amount:
            raise Rejected(
                f"{action} exceeds the stake of {actor}: has {staked}, needs {amount}",
                field="amount",
            )

    def _require_escrow(self, action: str, job_id: str, amount: int) -> _Escrow:
        """The job's escrow, if it still holds at least ``amount``; writes nothing."""
        escrow = self._escrows.get(job_id)
        if escrow is None:
            raise Rejected(f"{action} of job {job_id}, which has no escrow", field="job_id")
        if amount > escrow.remaining:
            raise Rejected(
                f"{action} exceeds escrow of job {job_id}: remaining {escrow.remaining}, "
                f"needs {amount}",
                field="amount",
            )
        return escrow


def _restore(live: dict[str, Any], key: str, value: object) -> None:
    if value is _MISSING:
        live.pop(key, None)
    else:
        live[key] = value


def _require_author(author: str, allowed: str, role: str, kind: str) -> None:
    if author != allowed:
        raise Forbidden(f"only {role} may author {kind} entries, not {author}", field="author")
