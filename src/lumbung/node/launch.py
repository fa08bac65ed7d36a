"""The first program inside a task's sandbox: set the task's limits, drop to its user, exec it.

It runs with only the standard library, ``python -I -S``, before any of the task's code, as
``launch.py [--uid N --gid N] --limit NAME=VALUE ... -- argv...``. Limits are set here, inside the
sandbox's namespaces, rather than before bubblewrap starts: RLIMIT_NPROC is counted per user
*per user namespace*, so set inside it holds this task alone, not every task of the same user.

On a node run by root the sandbox has no user namespace; ``--uid``/``--gid`` then drop the task
to an unprivileged user of its own (all capabilities go with root, and bubblewrap's
no_new_privs keeps them from coming back through a setuid program), which is also what makes
RLIMIT_NPROC count: the kernel never holds root to it.

A program that cannot be started exits 127 with the reason on stderr, as a shell does.
"""

from __future__ import annotations

import os
import resource
import sys

_LIMITS = {
    "as": resource.RLIMIT_AS,
    "core": resource.RLIMIT_CORE,
    "cpu": resource.RLIMIT_CPU,
    "fsize": resource.RLIMIT_FSIZE,
    "nofile": resource.RLIMIT_NOFILE,
    "nproc": resource.RLIMIT_NPROC,
}
EXIT_CANNOT_START = 127


def _parse(args: list[str]) -> tuple[dict[str, int], int | None, int | None, list[str]]:
    limits: dict[str, int] = {}
    uid = gid = None
    while args and args[0] != "--":
        flag, value = args[0], args[1]
        args = args[2:]
        if flag == "--limit":
            name, _, number = value.partition("=")
            limits[name] = int(number)
        elif flag == "--uid":
            uid = int(value)
        elif flag == "--gid":
            gid = int(value)
        else:
            raise SystemExit(f"launch: unknown flag {flag}")
    return limits, uid, gid, args[1:]


def _set_limits(limits: dict[str, int]) -> None:
    for name, value in limits.items():
        which = _LIMITS[name]
        _, hard = resource.getrlimit(which)
        # Never ask for more than the hard limit the node was given: only root may raise it.
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(which, (value, value))


def _drop_to(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getuid() == 0 or os.geteuid() == 0:  # pragma: no cover - the kernel said yes above
        raise SystemExit("launch: still root after dropping privileges")


def main(argv: list[str]) -> int:
    limits, uid, gid, command = _parse(argv)
    if not command:
        print("launch: no command", file=sys.stderr)
        return EXIT_CANNOT_START
    _set_limits(limits)
    if uid is not None:
        _drop_to(uid, uid if gid is None else gid)
    try:
        os.execvp(command[0], command)  # noqa: S606 - becoming the task is the launcher's job
    except OSError as exc:
        print(f"cannot start {command[0]!r}: {exc.strerror}", file=sys.stderr)
    return EXIT_CANNOT_START


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
