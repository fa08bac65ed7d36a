"""A node's result commitment: what it signs about a result when it reports it.

On completion a node signs the task's output hashes and the execution class it ran in, before it
can know whether the result will be checked. The hub appends the commitment to the ledger as a
``result_commitment`` entry, so anyone can later hold a verdict against what the node said.

The signed bytes are ``COMMITMENT_CONTEXT`` followed by the RFC 8785 canonical JSON of
``commitment_body`` (version, job, task, attempt, node, outputs, execution class): the context
keeps the node's signature apart from its request and ledger signatures, made with the same key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import Field

from lumbung.wire.canonical import canonical_json
from lumbung.wire.fields import Inbound

COMMITMENT_VERSION = 1
COMMITMENT_CONTEXT = b"lumbung-result-commitment-v1\x00"

_Text = Annotated[str, Field(max_length=200)]


class ExecutionClass(Inbound):
    """Where a result was computed: within one class an honest task is bit for bit
    reproducible, so replicas there must match exactly; across classes they may differ in the
    last bits of their floating-point results."""

    device: Annotated[str, Field(min_length=1, max_length=64)]  # "cpu", "cuda"
    device_model: _Text  # the CPU's or the GPU's model name
    platform: _Text  # operating system and machine, e.g. "Linux-x86_64"
    python: Annotated[str, Field(max_length=100)]
    torch: Annotated[str, Field(max_length=100)] | None = None
    numpy: Annotated[str, Field(max_length=100)] | None = None
    threads: Annotated[int, Field(ge=1, le=4096)]  # the BLAS/OpenMP threads the task was given
    # Python's hash seed fixed for the task (PYTHONHASHSEED), so set and dict orders repeat
    deterministic: bool

    def digest(self) -> str:
        """The class's SHA-256 over its canonical JSON: equal digests, same class."""
        return hashlib.sha256(canonical_json(self.model_dump(mode="json"))).hexdigest()


def commitment_body(
    *,
    job_id: str,
    task_id: str,
    attempt: int,
    node: str,
    outputs: Mapping[str, str],
    execution_class: ExecutionClass,
) -> dict[str, Any]:
    return {
        "v": COMMITMENT_VERSION,
        "job_id": job_id,
        "task_id": task_id,
        "attempt": attempt,
        "node": node,
        "outputs": dict(outputs),
        "execution_class": execution_class.model_dump(mode="json"),
    }


def signed_bytes(body: Mapping[str, Any]) -> bytes:
    """What the node's Ed25519 key signs for ``body``."""
    return COMMITMENT_CONTEXT + canonical_json(dict(body))
