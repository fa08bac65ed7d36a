"""One typed configuration per process, read once at start-up.

Precedence: field defaults < a TOML file < ``LUMBUNG_<PROCESS>_<FIELD>`` environment variables <
explicit overrides (command-line flags). A bad value fails loudly with a ``ConfigError`` naming the
key. Nothing here reads the environment at import time: ``load`` is given the environment.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from lumbung.errors import ConfigError


@dataclass(frozen=True)
class HubConfig:
    # Where the hub keeps its key, its SQLite database and its blob directory.
    data_dir: Path = Path(".lumbung/hub")
    # Interface to listen on; 127.0.0.1 keeps a test hub off the network.
    host: str = "127.0.0.1"
    # TCP port; 0 lets the OS pick (the chosen port is written to data_dir/port).
    port: int = 8600
    # SQLAlchemy URL; empty means SQLite in data_dir/hub.sqlite3 (WAL mode).
    db_url: str = ""
    # A lease not renewed by a heartbeat within this many seconds returns its task to the queue.
    lease_timeout_s: float = 15.0
    # How often the hub looks for expired leases.
    reaper_interval_s: float = 1.0
    # A lease held this long past its job's max_runtime_s is ended by the hub as a timed-out,
    # failed attempt: the node enforces the limit itself, this covers its report on the way.
    runtime_grace_s: float = 30.0
    # Signatures older than this are rejected as stale (RFC 9421 section 3.2.1).
    signature_max_age_s: int = 300
    # Longest a node's claim request is held open waiting for work.
    claim_wait_max_s: float = 20.0
    # A cheaper idle node gets first refusal on a task for this long; then any node may take it.
    cheaper_node_grace_s: float = 2.0
    # Largest artifact accepted, in bytes.
    max_blob_bytes: int = 512 * 1024 * 1024
    # Largest JSON request body accepted, in bytes.
    max_body_bytes: int = 4 * 1024 * 1024
    # Log bytes kept per task attempt; output past this is dropped and marked truncated.
    max_log_bytes_per_task: int = 1024 * 1024
    # A node is online while its last heartbeat is younger than this.
    node_online_s: float = 30.0
    # Micro-credits POST /v1/ledger/faucet mints to whoever signs the request; 0 turns it off.
    # For demos and tests only: a hub with real money keeps this at 0.
    faucet_micro: int = 0
    # The hub's fee on what providers earn, in basis points (100 = 1%), paid from the job's
    # escrow to the treasury; the provider receives the rest of its price for kept work.
    fee_bps: int = 0
    # The witnesses whose cosignatures the hub adds to its checkpoints: their verifier keys (as
    # ``lumbung witness --print-vkey`` prints them), separated by commas or whitespace. A
    # cosignature by any other key is refused (403), so nobody can fill the checkpoint's limited
    # signature lines with throwaway keys. Empty: the hub takes no cosignatures.
    witnesses: str = ""
    # Signed writes (job submits, artifact uploads, ledger appends, the faucet, cosignatures) each
    # actor may make per second, sustained, in this hub process; 0 turns the limit off. Over it:
    # 429 with Retry-After, which the client waits out and retries.
    write_rate_per_s: float = 20.0
    # Writes an actor may make at once before that rate applies (the size of its token bucket).
    write_burst: int = 200
    # Ledger entries each author may append per second through POST /v1/ledger/entries, sustained;
    # 0 turns the limit off. Entries are permanent and every start and audit replays them.
    entry_rate_per_s: float = 100.0
    # Entries an author may append at once (a batch of up to 1,000 fits).
    entry_burst: int = 2000

    def __post_init__(self) -> None:
        if not 0 <= self.fee_bps <= 10_000:
            raise ConfigError(f"fee_bps must be 0 to 10000, got {self.fee_bps}", field="fee_bps")
        if self.faucet_micro < 0:
            raise ConfigError("faucet_micro must not be negative", field="faucet_micro")
        for rate in ("write_rate_per_s", "entry_rate_per_s"):
            if getattr(self, rate) < 0:
                raise ConfigError(f"{rate} must not be negative", field=rate)
        for burst in ("write_burst", "entry_burst"):
            if getattr(self, burst) < 1:
                raise ConfigError(f"{burst} must be at least 1", field=burst)
        if not 0 <= self.runtime_grace_s < float("inf"):
            raise ConfigError(
                f"runtime_grace_s must be a finite number of seconds, 0 or more, got "
                f"{self.runtime_grace_s}",
                field="runtime_grace_s",
            )


@dataclass(frozen=True)
class NodeConfig:
    # Base URL of the hub this node dials; the node never listens on a port.
    hub_url: str = "http://127.0.0.1:8600"
    # Where the node keeps its key and its task working directories.
    data_dir: Path = Path(".lumbung/node")
    # Human-readable name shown in plans and results.
    name: str = ""
    # Asking price per GPU-hour, in micro-credits.
    price_micro_per_gpu_hour: int = 1_000_000
    # Asking price per CPU-core-hour, in micro-credits.
    price_micro_per_cpu_hour: int = 10_000
    # CPU cores offered to tasks; 0 means all cores of the machine.
    cpus: int = 0
    # Tasks run at the same time.
    slots: int = 1
    # Seconds between heartbeats; leases are renewed by them.
    heartbeat_s: float = 2.0
    # How long a claim waits at the hub for work before asking again.
    claim_wait_s: float = 10.0
    # On SIGTERM, how long running tasks may go on before they are checkpointed and stopped.
    grace_s: float = 10.0
    # Task runner: "process" (a sandboxed process group) or "container" (Docker or Podman).
    runner: str = "process"
    # Bytes of task output streamed to the hub per attempt (the hub caps it too).
    max_log_bytes: int = 1024 * 1024
    # Where bubblewrap cannot run, run tasks as plain processes (isolation level "process":
    # they can read what the node's user can) instead of refusing to start.
    allow_unsandboxed: bool = False
    # Processes and threads one task may run at once.
    task_max_processes: int = 512
    # A root node runs task slot i as uid and gid task_uid_base + i, never as root; 0 derives
    # the base from the data directory, so that nodes on one machine use uids of their own.
    task_uid_base: int = 0
    # How long finished outputs and reports are kept and retried while the hub is unreachable.
    hub_patience_s: float = 900.0


@dataclass(frozen=True)
class ClientConfig:
    # Base URL of the hub.
    hub_url: str = "http://127.0.0.1:8600"
    # Where the client keeps its key ("~" is the user's home, expanded when the key is used).
    data_dir: Path = Path("~/.lumbung/client")
    # Seconds before an HTTP request gives up.
    timeout_s: float = 30.0


C = TypeVar("C")


def load(
    cls: type[C],
    *,
    env: Mapping[str, str],
    file: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> C:
    """Build ``cls`` from defaults, then ``file``, then the environment, then ``overrides``.

    Environment keys are ``LUMBUNG_<PREFIX>_<FIELD>`` where PREFIX is the class name less "Config"
    (``LUMBUNG_HUB_DB_URL``). Overrides whose value is None are ignored, so CLI flags left unset
    do not mask the environment.
    """
    prefix = "LUMBUNG_" + cls.__name__.removesuffix("Config").upper() + "_"
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    if file is not None:
        try:
            raw = tomllib.loads(file.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {file}: {exc}", field=str(file)) from exc
        for key, value in raw.items():
            values[key] = _coerce(cls, hints, key, value, source=str(file))
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        env_key = prefix + f.name.upper()
        if env_key in env:
            values[f.name] = _coerce(cls, hints, f.name, env[env_key], source=env_key)
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = _coerce(cls, hints, key, value, source=f"--{key.replace('_', '-')}")
    return cls(**values)


def _coerce(cls: type, hints: dict[str, Any], key: str, value: Any, *, source: str) -> Any:
    if key not in hints:
        raise ConfigError(f"unknown configuration key {key!r} in {source}", field=key)
    target = hints[key]
    if isinstance(target, types.UnionType):
        target = next(t for t in typing.get_args(target) if t is not type(None))
    try:
        if target is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in {"1", "true", "yes", "on"}:
                return True
            if text in {"0", "false", "no", "off"}:
                return False
            raise ValueError(f"not a boolean: {value!r}")
        if target is Path:
            return Path(value).expanduser()
        if target is int and isinstance(value, float):
            raise ValueError(f"not an integer: {value!r}")
        return target(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad value for {key} from {source}: {exc}", field=key) from exc


__all__ = ["ClientConfig", "HubConfig", "NodeConfig", "load"]
