"""One task's lifecycle on the node, against an in-memory stand-in for the hub's session."""

from __future__ import annotations

import hashlib
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import pytest

from lumbung.client import NodeSession
from lumbung.config import NodeConfig
from lumbung.crypto.keys import Identity
from lumbung.errors import Conflict, NotFound, Unavailable
from lumbung.node.checkpoints import pack_dir
from lumbung.node.logs import TRUNCATION_LINE
from lumbung.node.sandbox import ProcessRunner, probe_isolation
from lumbung.node.task_run import TaskRun
from lumbung.wire.api import (
    Assignment,
    CheckpointReport,
    Inventory,
    LogChunk,
    ResultCommitmentReport,
    ResumeFailed,
    TaskComplete,
    TaskRelease,
)
from lumbung.wire.commitment import ExecutionClass, signed_bytes
from lumbung.wire.spec import Resources

RUNNER: Any = ProcessRunner(probe_isolation())
MIB = 1024 * 1024
IDENTITY = Identity.generate()
INVENTORY = Inventory(cpus=2, memory_mib=4096, disk_free_mib=10_000)


@pytest.fixture(autouse=True, params=["process", "sandbox"])
def runner(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Every test runs under both runners: the plain process group and the bubblewrap sandbox."""
    chosen = RUNNER if request.param == "process" else request.getfixturevalue("sandbox_runner")
    monkeypatch.setattr(sys.modules[__name__], "RUNNER", chosen)
    return chosen


class FakeSession:
    """Records what the node reports; blobs live in a dict."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.logs: list[LogChunk] = []
        self.checkpoints: list[CheckpointReport] = []
        self.completed: list[TaskComplete] = []
        self.released: list[TaskRelease] = []
        self.resume_failures: list[ResumeFailed] = []
        # Calls of these names answer Unavailable this many more times (a hub outage).
        self.outage: dict[str, int] = {}
        self.refuse_checkpoints = False
        self.checkpoint_seen = threading.Event()
        self.commitments: list[dict[str, Any]] = []

    node_id = "act_faketasknode"

    def commit(self, body: Mapping[str, Any]) -> ResultCommitmentReport:
        self.commitments.append(dict(body))
        return ResultCommitmentReport(
            execution_class=ExecutionClass.model_validate(body["execution_class"]),
            public_key=IDENTITY.public_key_raw.hex(),
            signature=IDENTITY.sign(signed_bytes(body)).hex(),
        )

    def put(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        self.blobs[sha] = data
        return sha

    def _maybe_down(self, call: str) -> None:
        if self.outage.get(call, 0) > 0:
            self.outage[call] -= 1
            raise Unavailable(f"hub down ({call})")

    def upload_file(self, path: Path) -> str:
        self._maybe_down("upload_file")
        return self.put(path.read_bytes())

    def download(self, sha256: str, dest: Path) -> None:
        if sha256 not in self.blobs:
            raise NotFound(f"no blob {sha256}")
        dest.write_bytes(self.blobs[sha256])

    def send_logs(self, task_id: str, chunk: LogChunk) -> None:
        self.logs.append(chunk)

    def report_checkpoint(self, task_id: str, report: CheckpointReport) -> None:
        if self.refuse_checkpoints:
            raise Conflict("task is not leased to this node")
        self.checkpoints.append(report)
        self.checkpoint_seen.set()

    def complete(self, task_id: str, result: TaskComplete) -> None:
        self._maybe_down("complete")
        self.completed.append(result)

    def resume_failed(self, task_id: str, report: ResumeFailed) -> None:
        self.resume_failures.append(report)

    def release(self, task_id: str, release: TaskRelease) -> None:
        self.released.append(release)

    def text(self, stream: str) -> str:
        return "".join(c.text for c in self.logs if c.stream == stream)


def _assignment(**overrides: Any) -> Assignment:
    fields: dict[str, Any] = {
        "task_id": "task_aaaaaaaaaaaaaaaa",
        "job_id": "job_aaaaaaaaaaaaaaaa",
        "attempt": 1,
        "index": 0,
        "params": {},
        "command": None,
        "entrypoint": None,
        "inputs": {},
        "outputs": [],
        "resources": Resources(cpus=1, memory_gb=1.0, disk_gb=1.0, gpus=0),
        "max_runtime_s": 60,
        "checkpoint_interval_s": 0,
        "network": False,
        "env": {},
        "resume_from": None,
        "lease_expires_at": 0.0,
    }
    fields.update(overrides)
    return Assignment(**fields)


def _start(tmp_path: Path, session: FakeSession, assignment: Assignment, **config: Any) -> TaskRun:
    run = TaskRun(
        assignment,
        config=NodeConfig(data_dir=tmp_path, **config),
        session=cast(NodeSession, session),
        runner=RUNNER,
        inventory=INVENTORY,
    )
    run.start()
    return run


def _run(tmp_path: Path, session: FakeSession, assignment: Assignment, **config: Any) -> TaskRun:
    run = _start(tmp_path, session, assignment, **config)
    assert run.join(60)
    return run


def test_command_task_reports_its_output_and_logs(tmp_path: Path) -> None:
    session = FakeSession()
    script = "echo hello; echo oops >&2; echo $LUMBUNG_PARAM_LR > out/result.txt"
    a = _assignment(
        command=["sh", "-c", "mkdir out; " + script], params={"lr": 0.5}, outputs=["out/result.txt"]
    )
    run = _run(tmp_path, session, a)

    [done] = session.completed
    assert (done.exit_code, done.error) == (0, None)
    assert session.blobs[done.outputs["out/result.txt"]] == b"0.5\n"
    assert session.text("stdout") == "hello\n"
    assert session.text("stderr") == "oops\n"
    assert not run.workdir.exists()
    # The node signed what it claims: these outputs, this attempt, where it ran.
    assert done.commitment is not None
    [body] = session.commitments
    assert body["outputs"] == done.outputs
    assert (body["task_id"], body["attempt"], body["node"]) == (
        a.task_id,
        a.attempt,
        "act_faketasknode",
    )
    assert body["execution_class"]["device"] == "cpu"
    assert body["execution_class"]["deterministic"] is True


def test_a_failed_task_commits_to_nothing(tmp_path: Path) -> None:
    session = FakeSession()
    _run(tmp_path, session, _assignment(command=["sh", "-c", "exit 3"]))
    [done] = session.completed
    assert done.exit_code == 3
    assert done.commitment is None
    assert session.commitments == []


def test_entrypoint_is_called_with_params_from_an_input_module(tmp_path: Path) -> None:
    session = FakeSession()
    module = b"def main(n, name):\n    open('out.txt', 'w').write(name * n)\n"
    a = _assignment(
        entrypoint="job:main",
        params={"n": 3, "name": "ab"},
        inputs={"job.py": session.put(module)},
        outputs=["out.txt"],
    )
    _run(tmp_path, session, a)
    [done] = session.completed
    assert done.error is None
    assert session.blobs[done.outputs["out.txt"]] == b"ababab"


def test_failing_entrypoint_exits_1_with_its_traceback(tmp_path: Path) -> None:
    session = FakeSession()
    module = b"def main():\n    raise ValueError('bad input')\n"
    a = _assignment(entrypoint="job:main", inputs={"job.py": session.put(module)})
    _run(tmp_path, session, a)
    [done] = session.completed
    assert (done.exit_code, done.error) == (1, "exit code 1")
    assert "ValueError: bad input" in session.text("stderr")


def test_missing_output_fails_the_task(tmp_path: Path) -> None:
    session = FakeSession()
    _run(tmp_path, session, _assignment(command=["true"], outputs=["model.pt"]))
    [done] = session.completed
    assert done.error == "missing output model.pt"


def test_output_symlink_to_a_node_file_is_not_uploaded(tmp_path: Path) -> None:
    session = FakeSession()
    secret = tmp_path / "secret"
    secret.write_text("node key")
    a = _assignment(command=["ln", "-s", str(secret), "out.txt"], outputs=["out.txt"])
    _run(tmp_path, session, a)
    [done] = session.completed
    assert done.outputs == {}
    assert b"node key" not in session.blobs.values()


def test_inputs_are_read_only_for_the_task(tmp_path: Path) -> None:
    session = FakeSession()
    show = 'cd "$LUMBUNG_INPUTS_DIR"; cat d/x; stat -c %a d/x d'
    a = _assignment(command=["sh", "-c", show], inputs={"d/x": session.put(b"data\n")})
    run = _run(tmp_path, session, a)
    assert session.text("stdout") == "data\n444\n555\n"
    assert session.completed[0].exit_code == 0
    assert not run.workdir.exists()  # removed although read-only


def test_time_limit_kills_the_task(tmp_path: Path) -> None:
    session = FakeSession()
    _run(tmp_path, session, _assignment(command=["sleep", "100"], max_runtime_s=1))
    [done] = session.completed
    assert done.error == "time limit of 1 s exceeded"
    assert done.runtime_s < 10


def test_changed_checkpoint_is_uploaded_and_drain_releases_the_task(tmp_path: Path) -> None:
    session = FakeSession()
    script = (
        'echo 0.25 > "$LUMBUNG_PROGRESS_FILE"; echo s1 > "$LUMBUNG_CHECKPOINT_DIR/s"; sleep 100'
    )
    a = _assignment(command=["sh", "-c", script], checkpoint_interval_s=1)
    run = _start(tmp_path, session, a)
    assert session.checkpoint_seen.wait(15)
    assert run.progress() == 0.25

    run.stop_for_drain(grace_s=1)

    [report] = session.checkpoints  # unchanged at drain, so not sent again
    assert report.prev_sha256 is None
    assert report.progress == 0.25
    assert session.blobs[report.sha256][:2] == b"\x1f\x8b"
    assert [r.reason for r in session.released] == ["node draining"]
    assert session.completed == []


def test_resumed_task_finds_its_checkpoint_and_chains_from_it(tmp_path: Path) -> None:
    session = FakeSession()
    old = tmp_path / "old"
    old.mkdir()
    (old / "step").write_text("41")
    resume = pack_dir(old, tmp_path / "old.tgz")
    assert resume is not None
    session.put((tmp_path / "old.tgz").read_bytes())
    script = (
        'cat "$LUMBUNG_CHECKPOINT_DIR/step"; echo 42 > "$LUMBUNG_CHECKPOINT_DIR/step"; sleep 100'
    )
    a = _assignment(command=["sh", "-c", script], resume_from=resume, checkpoint_interval_s=1)
    run = _start(tmp_path / "node", session, a)
    assert session.checkpoint_seen.wait(15)
    run.cancel()
    assert run.join(30)
    assert session.text("stdout") == "41"
    assert session.checkpoints[0].prev_sha256 == resume


def test_cancelled_task_is_killed_and_not_reported(tmp_path: Path) -> None:
    session = FakeSession()
    run = _start(tmp_path, session, _assignment(command=["sleep", "100"]))
    run.cancel()
    assert run.join(30)
    assert (session.completed, session.released) == ([], [])


def test_refused_checkpoint_means_the_lease_is_gone(tmp_path: Path) -> None:
    session = FakeSession()
    session.refuse_checkpoints = True
    script = 'echo x > "$LUMBUNG_CHECKPOINT_DIR/s"; sleep 100'
    run = _start(
        tmp_path, session, _assignment(command=["sh", "-c", script], checkpoint_interval_s=1)
    )
    assert run.join(30)
    assert (session.completed, session.released) == ([], [])


def test_log_output_past_the_budget_is_truncated(tmp_path: Path) -> None:
    session = FakeSession()
    a = _assignment(command=["python", "-c", "print('x' * 100_000)"])
    _run(tmp_path, session, a, max_log_bytes=1000)
    out = session.text("stdout")
    assert out.endswith(TRUNCATION_LINE)
    assert out.count("x") == 1000
    assert session.completed[0].error is None


def test_missing_input_fails_before_the_task_starts(tmp_path: Path) -> None:
    session = FakeSession()
    _run(tmp_path, session, _assignment(command=["true"], inputs={"x": "0" * 64}))
    [done] = session.completed
    assert done.error is not None
    assert "could not prepare" in done.error


def test_writing_past_the_disk_budget_fails_the_task(tmp_path: Path) -> None:
    session = FakeSession()
    # Six files of 9 MB, each under the 10 MiB budget, 54 MB in all.
    script = "for i in 1 2 3 4 5 6; do head -c 9000000 /dev/zero > f$i; done; sleep 30"
    a = _assignment(
        command=["sh", "-c", script], resources=Resources(cpus=1, memory_gb=1.0, disk_gb=0.01)
    )
    run = _run(tmp_path, session, a)
    [done] = session.completed
    assert done.error is not None
    assert done.error.startswith("disk budget exceeded")
    assert done.runtime_s < 20
    assert not run.workdir.exists()


def test_a_task_that_cannot_start_is_reported_failed(tmp_path: Path) -> None:
    session = FakeSession()
    # The wire refuses NUL bytes; a node must still report, not hang, if one gets through.
    a = _assignment(command=["true"]).model_copy(update={"command": ["echo", "a\x00b"]})
    _run(tmp_path, session, a)
    [done] = session.completed
    assert done.exit_code == 127
    assert done.error is not None
    assert "cannot start the task" in done.error


def test_a_missing_program_is_reported_with_its_name(tmp_path: Path) -> None:
    session = FakeSession()
    _run(tmp_path, session, _assignment(command=["no-such-program-here"]))
    [done] = session.completed
    assert done.exit_code == 127
    assert "no-such-program-here" in session.text("stderr")


def _checkpoint(tmp_path: Path, session: FakeSession, step: str) -> str:
    src = tmp_path / f"ckpt-{step}"
    src.mkdir()
    (src / "step").write_text(step)
    sha = pack_dir(src, tmp_path / f"{step}.tgz")
    assert sha is not None
    return session.put((tmp_path / f"{step}.tgz").read_bytes())


def test_a_checkpoint_that_does_not_unpack_falls_back_to_the_one_before(tmp_path: Path) -> None:
    session = FakeSession()
    good = _checkpoint(tmp_path, session, "7")
    garbage = session.put(b"not a checkpoint at all")
    script = (
        'cat "$LUMBUNG_CHECKPOINT_DIR/step"; echo 8 > "$LUMBUNG_CHECKPOINT_DIR/step"; sleep 100'
    )
    a = _assignment(
        command=["sh", "-c", script],
        resume_from=garbage,
        resume_chain=[good],
        checkpoint_interval_s=1,
    )
    run = _start(tmp_path / "node", session, a)
    assert session.checkpoint_seen.wait(15)
    run.cancel()
    assert run.join(30)
    assert session.text("stdout") == "7"
    [failure] = session.resume_failures
    assert (failure.failed, failure.resumed_from) == ([garbage], good)
    assert session.checkpoints[0].prev_sha256 == good


def test_a_gzip_bomb_checkpoint_is_never_unpacked(tmp_path: Path) -> None:
    session = FakeSession()
    bomb_dir = tmp_path / "bomb"
    bomb_dir.mkdir()
    (bomb_dir / "zeros").write_bytes(bytes(40 * MIB))
    assert pack_dir(bomb_dir, tmp_path / "bomb.tgz") is not None
    bomb = session.put((tmp_path / "bomb.tgz").read_bytes())
    a = _assignment(
        command=["sh", "-c", 'ls "$LUMBUNG_CHECKPOINT_DIR" | wc -l'],
        resume_from=bomb,
        resources=Resources(cpus=1, memory_gb=1.0, disk_gb=0.01),
    )
    _run(tmp_path / "node", session, a)
    assert session.text("stdout").strip() == "0"
    [failure] = session.resume_failures
    assert (failure.failed, failure.resumed_from) == ([bomb], None)
    assert "disk budget" in failure.reason
    assert session.completed[0].error is None


def test_finished_outputs_survive_a_hub_outage(tmp_path: Path) -> None:
    session = FakeSession()
    session.outage = {"upload_file": 2, "complete": 2}
    a = _assignment(command=["sh", "-c", "echo done > out.txt"], outputs=["out.txt"])
    _run(tmp_path, session, a)
    [done] = session.completed
    assert done.error is None
    assert session.blobs[done.outputs["out.txt"]] == b"done\n"


def test_a_hub_gone_past_the_nodes_patience_is_not_reported_as_a_failure(tmp_path: Path) -> None:
    session = FakeSession()
    session.outage = {"upload_file": 1000}
    a = _assignment(command=["sh", "-c", "echo done > out.txt"], outputs=["out.txt"])
    _run(tmp_path, session, a, hub_patience_s=1.0)
    assert session.completed == []  # the lease runs out at the hub instead: no blame


def test_a_progress_file_that_is_a_fifo_does_not_block_the_node(tmp_path: Path) -> None:
    session = FakeSession()
    script = 'mkfifo "$LUMBUNG_PROGRESS_FILE"; sleep 100'
    run = _start(tmp_path, session, _assignment(command=["sh", "-c", script]))
    deadline = time.monotonic() + 10
    while not (run.workdir / "progress").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    started = time.monotonic()
    assert run.progress() == 0.0
    assert time.monotonic() - started < 1.0
    run.cancel()
    assert run.join(30)
