"""The command line without a hub: usage, spec errors, the one error edge, money and tables."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from lumbung.cli import render
from lumbung.cli.main import app
from lumbung.demo.sweep import sweep_spec_text
from lumbung.wire.api import Inventory, JobView, NodeView, Plan, PlanNode, RoundView, TaskView
from lumbung.wire.spec import parse_spec

GOOD_SPEC = """\
name: sweep
command: ["python", "train.py"]
max_price_micro_per_hour: 50000
"""


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CliRunner:
    # The client key must never land in the developer's home directory.
    monkeypatch.setenv("LUMBUNG_CLIENT_DATA_DIR", str(tmp_path / "client"))
    for name in ("LUMBUNG_CLIENT_HUB_URL", "LUMBUNG_CLIENT_TIMEOUT_S"):
        monkeypatch.delenv(name, raising=False)
    return CliRunner()


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def plain(renderable: object) -> str:
    console = Console(width=200, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_help_lists_every_command(runner: CliRunner) -> None:
    result = runner.invoke(app, ["--help"])

    assert result.exit_code == 0
    for command in ("hub", "node", "job", "nodes", "model", "demo"):
        assert command in result.stdout
    job_help = runner.invoke(app, ["job", "--help"]).stdout
    for command in ("submit", "plan", "status", "watch", "list", "logs", "results", "cancel"):
        assert command in job_help


def test_plan_of_malformed_spec_names_the_field_and_exits_1(
    runner: CliRunner, tmp_path: Path
) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(GOOD_SPEC + "resources:\n  gpus: -1\n")

    result = runner.invoke(app, ["job", "plan", str(spec)])

    assert result.exit_code == 1
    assert "error: resources.gpus" in result.stderr
    assert "field: resources.gpus" in result.stderr
    assert result.stdout == ""


def test_plan_of_missing_spec_file_is_an_error_not_a_traceback(
    runner: CliRunner, tmp_path: Path
) -> None:
    result = runner.invoke(app, ["job", "plan", str(tmp_path / "nope.yaml")])

    assert result.exit_code == 1
    assert "cannot read spec file" in result.stderr
    assert "field: spec" in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_json_error_leaves_stdout_empty_for_scripts(runner: CliRunner, tmp_path: Path) -> None:
    spec = tmp_path / "bad.json"
    spec.write_text('{"name": "x", "command": ["true"]}')

    result = runner.invoke(app, ["job", "plan", str(spec), "--json"])

    assert result.exit_code == 1
    assert result.stdout == ""
    assert "max_price_micro_per_hour" in result.stderr


def test_unreachable_hub_is_reported_as_an_error_with_exit_1(runner: CliRunner) -> None:
    hub = f"http://127.0.0.1:{unused_port()}"

    result = runner.invoke(app, ["job", "list", "--json", "--hub", hub])

    assert result.exit_code == 1
    assert result.stdout == ""
    assert "error: cannot reach the hub" in result.stderr


def test_bad_client_setting_in_environment_names_the_key(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LUMBUNG_CLIENT_TIMEOUT_S", "soon")

    result = runner.invoke(app, ["nodes"])

    assert result.exit_code == 1
    assert "field: timeout_s" in result.stderr


def test_watch_with_json_is_bad_usage(runner: CliRunner, tmp_path: Path) -> None:
    spec = tmp_path / "ok.yaml"
    spec.write_text(GOOD_SPEC)

    result = runner.invoke(app, ["job", "submit", str(spec), "--watch", "--json"])

    assert result.exit_code == 2


@pytest.mark.parametrize(
    ("micro", "text"),
    [
        (1_234_567, "1.234567 cr"),
        (0, "0 cr"),
        (12_000, "0.012 cr"),
        (1, "0.000001 cr"),
        (-1_500_000, "-1.5 cr"),
        (10**15 + 1, "1,000,000,000.000001 cr"),
    ],
)
def test_money_is_formatted_exactly_from_micro_credits(micro: int, text: str) -> None:
    assert render.format_credits(micro) == text


def test_plan_view_shows_fitting_nodes_exclusions_and_explanation() -> None:
    plan = Plan(
        task_count=6,
        fits=[
            PlanNode(
                node_id="ak_x",
                name="node-a",
                online=True,
                reliability=0.975,
                price_micro_per_hour=8_000,
                max_cost_micro=4_000,
            )
        ],
        excluded={"price_above_limit": 2},
        nodes_considered=3,
        max_cost_micro=25_000,
        explanation=["1 of 3 nodes fit."],
    )

    text = plain(render.plan_view(plan))

    assert "node-a" in text
    assert "0.008 cr/h" in text
    assert "97.5%" in text
    assert "0.004 cr" in text
    assert "price above limit" in text
    assert "0.025 cr" in text
    assert "1 of 3 nodes fit." in text


def test_watch_view_counts_tasks_by_state_and_names_their_nodes() -> None:
    spec = parse_spec(GOOD_SPEC)
    tasks = [
        TaskView(
            id=f"task_{i}",
            index=i,
            params={"hidden": 32},
            state=state,
            attempt=1,
            node_id="ak_b" if state == "running" else None,
            progress=0.4 if state == "running" else 0.0,
            exit_code=None,
            outputs={},
            error=None,
            checkpoints=[],
            updated_at=0.0,
        )
        for i, state in enumerate(["running", "queued", "queued", "succeeded"])
    ]
    job = JobView(
        id="job_x",
        owner="ak_o",
        name="sweep",
        state="running",
        spec=spec,
        created_at=0.0,
        updated_at=0.0,
        tasks=tasks,
        waiting_reason=None,
        error=None,
        work=[],
    )

    text = plain(render.watch_view(job, {"ak_b": "node-b"}, []))

    assert "queued 2" in text
    assert "running 1" in text
    assert "succeeded 1" in text
    assert "failed 0" in text
    assert "node-b" in text
    assert "40.0%" in text


@pytest.mark.parametrize(
    ("max_tasks", "expected"), [(6, 6), (5, 4), (4, 4), (3, 3), (2, 2), (1, 1)]
)
def test_demo_sweep_is_a_valid_spec_within_the_task_limit(max_tasks: int, expected: int) -> None:
    spec = parse_spec(sweep_spec_text(max_tasks))

    assert spec.task_count() == expected
    assert spec.inputs[0].path is not None
    assert Path(spec.inputs[0].path).is_file()
    assert spec.command == ["python", f"inputs/{spec.inputs[0].name}"]


def test_nodes_table_shows_prices_and_heartbeat_age() -> None:
    node = NodeView(
        id="ak_n",
        name="node-c",
        inventory=Inventory(cpus=4, memory_mib=8192, disk_free_mib=1000),
        price_micro_per_gpu_hour=1_000_000,
        price_micro_per_cpu_hour=20_000,
        slots=2,
        online=True,
        reliability=1.0,
        last_heartbeat_at=1000.0,
    )

    text = plain(render.nodes_table([node], now_s=1003.0))

    assert "node-c" in text
    assert "4 CPU, 8 GiB, no GPU" in text
    assert "0.02 cr" in text
    assert "1 cr" in text
    assert "3s ago" in text
    assert "process" in text  # the isolation level its inventory reports


def test_rounds_table_shows_losses_bytes_and_the_open_round() -> None:
    closed = RoundView(
        index=0,
        state="closed",
        participants=3,
        opened_at=0.0,
        closed_at=12.5,
        base_sha="ab" * 32,
        metrics={
            "train_loss": 3.1234,
            "base_val_loss": 4.2,
            "bytes_up": 3_702.0,
            "bytes_down": 2_500_000.0,
            "duration_s": 12.5,
        },
    )
    open_round = RoundView(
        index=1,
        state="open",
        participants=0,
        opened_at=12.5,
        closed_at=None,
        base_sha=None,
        metrics={},
    )

    text = plain(render.rounds_table([closed, open_round]))

    assert "3.123" in text
    assert "4.200" in text
    assert "3.7 KB" in text
    assert "2.5 MB" in text
    assert "12.5 s" in text
    assert "..." in text
    assert "open" in text


def test_loss_curve_is_a_sparkline_from_first_to_last_loss() -> None:
    rounds = [
        RoundView(
            index=i,
            state="closed",
            participants=2,
            opened_at=0.0,
            closed_at=1.0,
            base_sha=None,
            metrics={"train_loss": loss},
        )
        for i, loss in enumerate([4.0, 3.0, 2.5, 2.0])
    ]
    text = plain(render.loss_curve(rounds))
    assert text.strip() == "train loss 4.000 █▅▃▁ 2.000"
    assert "no round closed" in plain(render.loss_curve([]))
