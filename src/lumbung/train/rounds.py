"""The hub's side of a DiLoCo round, on numpy only: close a round, publish the next weights.

The hub keeps two vectors. ``weights`` is the exact global model theta. ``published`` is what the
workers hold: the hub sends them the change ``weights - published`` compressed, and both sides add
the decoded change to ``published``. What compression lost stays in ``weights - published`` and is
sent with the next round's change: error feedback on the hub (INTELLECT-1, arXiv 2412.01152), so
the workers' copy never drifts from theta by more than one round's quantisation error. A worker that
holds no earlier round gets ``published`` whole, uncompressed, so every worker starts from the same
bits. Workers compute their pseudo-gradient against ``published``, the weights they started from.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from lumbung.train.codec import CodecConfig, decode, encode
from lumbung.train.outer import OuterConfig, average_pseudo_gradients, outer_step

FULL_WEIGHTS = CodecConfig("none")


@dataclass(frozen=True)
class GlobalState:
    """Everything the hub keeps between rounds; store it and a restarted hub resumes."""

    round_index: int
    weights: np.ndarray  # theta, exact, float32
    published: np.ndarray  # what the workers of this round started from
    momentum: np.ndarray  # the outer Nesterov buffer

    @classmethod
    def start(cls, initial_weights: np.ndarray) -> GlobalState:
        weights = initial_weights.astype(np.float32).copy()
        return cls(0, weights, weights.copy(), np.zeros_like(weights))

    @property
    def numel(self) -> int:
        return int(self.weights.size)

    def to_bytes(self) -> bytes:
        """The state as an ``.npz`` archive of its four arrays, the same bytes for the same state
        (the hub stores it content-addressed)."""
        buffer = io.BytesIO()
        np.savez(
            buffer,
            round_index=np.array(self.round_index),
            weights=self.weights,
            published=self.published,
            momentum=self.momentum,
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes) -> GlobalState:
        """The state ``to_bytes`` wrote; the archive may hold no pickles."""
        with np.load(io.BytesIO(blob), allow_pickle=False) as data:
            return cls(
                round_index=int(data["round_index"]),
                weights=data["weights"].astype(np.float32),
                published=data["published"].astype(np.float32),
                momentum=data["momentum"].astype(np.float32),
            )


@dataclass(frozen=True)
class ClosedRound:
    state: GlobalState  # the next round's state
    change: bytes  # what a worker holding the last round's weights downloads
    participants: int


def full_weights(state: GlobalState) -> bytes:
    """What a worker that joins (or rejoins) downloads: the published weights, uncompressed."""
    return encode(state.published, FULL_WEIGHTS)


def decode_updates(state: GlobalState, updates: Sequence[bytes]) -> list[np.ndarray]:
    """Every update decoded (and so validated) before anything changes: one bad update refuses
    the call with ``Rejected``, for the caller to retry without it."""
    return [decode(blob, state.numel) for blob in updates]


def apply_round(
    state: GlobalState, deltas: Sequence[np.ndarray], outer: OuterConfig, downlink: CodecConfig
) -> ClosedRound:
    """Apply the outer step to the mean of ``deltas`` and publish the compressed change.

    A round with no update to apply (every one was screened out) leaves the weights and the
    momentum as they were; it still publishes what compression owed the workers.
    """
    if deltas:
        mean = average_pseudo_gradients(deltas)
        weights, momentum = outer_step(state.weights, state.momentum, mean, outer)
    else:
        weights, momentum = state.weights, state.momentum
    change = encode(weights - state.published, downlink)
    published = state.published + decode(change, state.numel)
    next_state = replace(
        state,
        round_index=state.round_index + 1,
        weights=weights,
        published=published,
        momentum=momentum,
    )
    return ClosedRound(next_state, change, len(deltas))


def close_round(
    state: GlobalState, updates: Sequence[bytes], outer: OuterConfig, downlink: CodecConfig
) -> ClosedRound:
    """Decode the updates that arrived, apply the outer step and publish the compressed change."""
    return apply_round(state, decode_updates(state, updates), outer, downlink)
