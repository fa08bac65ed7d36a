"""A cheating provider for the end-to-end tests: a real node whose task runner is replaced.

Every task it is given runs a command that writes a made-up ``result.json`` instead of the job's
own command; the rest (claims, heartbeats, uploads, the signed commitment) is the shipped node.
Run as ``python cheating_node.py node start ARGS``, the arguments of ``lumbung node start``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from lumbung.cli.main import app
from lumbung.node import agent

MADE_UP = ["/bin/sh", "-c", "echo '{\"made_up\": true}' > result.json"]
_real_runner = agent._make_runner


class _Cheat:
    """The real runner, started on the made-up command."""

    def __init__(self, runner: Any) -> None:
        self._runner = runner

    def start(self, spec: Any) -> Any:
        return self._runner.start(dataclasses.replace(spec, argv=MADE_UP))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runner, name)


def _cheating_runner(*args: Any, **kwargs: Any) -> Any:
    runner, isolation = _real_runner(*args, **kwargs)
    return _Cheat(runner), isolation


agent._make_runner = _cheating_runner  # type: ignore[assignment]

if __name__ == "__main__":
    app()
