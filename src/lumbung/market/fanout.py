"""Fan-out: a job spec becomes one queued task per parameter set, and each task's command line.

A command names grid parameters as ``{name}``; ``{{`` and ``}}`` stand for literal braces, as in
``str.format``. Unlike ``str.format`` nothing else is allowed inside braces (no attribute access,
indexing or format specs), so a spec can never reach into Python objects, and a placeholder the grid
does not define is rejected at submit time, before any task exists, rather than on a node later.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping

from lumbung.errors import Rejected
from lumbung.ids import new_id
from lumbung.market.model import Task, TaskState
from lumbung.wire.spec import JobSpec, Scalar

# One token per match: an escaped brace, a placeholder (its inside captured), or a stray brace.
_TOKEN_RE = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def tasks_for(job_id: str, spec: JobSpec, now: float) -> list[Task]:
    """One QUEUED task per entry of ``spec.task_params()``, indexed 0..n-1 in that order; a job
    with ``verify.mode: replicate`` has ``verify.replicas`` of each, sharing its index.
    """
    validate_command_placeholders(spec)
    copies = spec.verify.first_replicas()
    return [
        replica_task(job_id, index, params, replica, now)
        for index, params in enumerate(spec.task_params())
        for replica in range(copies)
    ]


def replica_task(
    job_id: str, index: int, params: dict[str, Scalar], replica: int, now: float
) -> Task:
    return Task(
        id=new_id("task"),
        job_id=job_id,
        index=index,
        params=params,
        state=TaskState.QUEUED,
        queued_at=now,
        updated_at=now,
        replica=replica,
    )


def render_command(command: list[str], params: Mapping[str, Scalar]) -> list[str]:
    """``command`` with every ``{name}`` replaced by ``str(params[name])``.

    Raises ``Rejected`` (field ``command``) for a placeholder not in ``params`` or a stray brace.
    """
    return [
        _render_arg(arg, i, params.keys(), lambda name: str(params[name]))
        for i, arg in enumerate(command)
    ]


def validate_command_placeholders(spec: JobSpec) -> None:
    """Reject a spec whose command uses a placeholder its grid does not define."""
    if spec.command is None:
        return
    names = spec.grid.keys()
    for i, arg in enumerate(spec.command):
        _render_arg(arg, i, names, lambda name: "")


def _render_arg(
    arg: str, position: int, names: Collection[str], value_of: Callable[[str], str]
) -> str:
    def replace(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "{{":  # noqa: S105 - a template token, not a password
            return "{"
        if token == "}}":  # noqa: S105
            return "}"
        name = match.group(1)
        if name is None:
            raise Rejected(
                f"command argument {position} ({arg!r}) has an unmatched {token!r}; "
                "write '{{' or '}}' for a literal brace",
                field="command",
            )
        if not _NAME_RE.match(name) or name not in names:
            known = ", ".join(sorted(names)) or "none: the spec has no grid"
            raise Rejected(
                f"command argument {position} ({arg!r}) uses unknown placeholder "
                f"{{{name}}}; known parameters: {known} "
                "(write '{{' or '}}' for literal braces)",
                field="command",
            )
        return value_of(name)

    return _TOKEN_RE.sub(replace, arg)
