"""Result commitments: a node's signed claim about a result, checked, then kept in the ledger.

A node that completes a task signs its outputs and execution class (``lumbung.wire.commitment``)
before it can know whether the result will be checked. The hub rebuilds the signed body from
the task it holds and the report, and refuses a report whose signature does not cover exactly
that (422, nothing written). Once the completion is stored it appends the body, the node's key
and its signature as a ``result_commitment`` entry: anyone can check the signature against the
node's actor id and hold a later verdict against it. A replicated task's result needs one.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from lumbung.errors import Rejected
from lumbung.hub.context import HubContext
from lumbung.hub.escrow import ledger_of
from lumbung.ledger.commitments import verify_commitment
from lumbung.ledger.entries import ResultCommitment
from lumbung.market.model import Task
from lumbung.wire.api import TaskComplete
from lumbung.wire.commitment import commitment_body

log = logging.getLogger("lumbung.hub.commitments")


def checked(
    task: Task, node_id: str, result: TaskComplete, *, required: bool
) -> dict[str, Any] | None:
    """The ledger body of the report's commitment, once its signature is checked; None when
    the report has none and none is ``required``."""
    commitment = result.commitment
    if commitment is None:
        if required:
            raise Rejected(
                "a replicated task's result must come with the node's signed commitment",
                field="commitment",
            )
        return None
    body = {
        **commitment_body(
            job_id=task.job_id,
            task_id=task.id,
            attempt=result.attempt,
            node=node_id,
            outputs=result.outputs,
            execution_class=commitment.execution_class,
        ),
        "public_key": commitment.public_key,
        "signature": commitment.signature,
    }
    try:
        verify_commitment(body)
    except Rejected as exc:
        raise Rejected(exc.message, field=f"commitment.{exc.field}") from exc
    return body


def record(ctx: HubContext, body: dict[str, Any]) -> None:
    """Append the commitment to the ledger, after the completion it belongs to is stored. A
    failure here must not fail the node's report, which the store already holds."""
    try:
        ledger_of(ctx).append_as_hub(lambda _: [functools.partial(ResultCommitment, body=body)])
    except Exception:
        log.exception("appending task %s's result commitment failed", body.get("task_id"))
