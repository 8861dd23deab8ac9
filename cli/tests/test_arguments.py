"""Argument parsing: what the commands accept and refuse before anything is called."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from capstan_cli.main import cli
from capstan_cli.output import duration, table, time_arg


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["up"],
        ["down"],
        ["ps"],
        ["restart-component"],
        ["agent", "start"],
        ["agent", "stop"],
        ["rg", "create"],
        ["rg", "list"],
        ["rg", "get"],
        ["nodes"],
        ["task", "submit"],
        ["task", "list"],
        ["task", "status"],
        ["task", "stop"],
        ["task", "logs"],
    ],
)
def test_every_command_has_help(runner: CliRunner, args: list[str]) -> None:
    result = runner.invoke(cli, [*args, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def _submit(runner: CliRunner, data_dir: Path, *args: str) -> tuple[int, str]:
    # --api points nowhere: each of these must fail before any request.
    result = runner.invoke(cli, ["--api", "http://127.0.0.1:9", "--data-dir", str(data_dir), "task", "submit", *args])
    return result.exit_code, result.output


def test_submit_needs_a_command(runner: CliRunner, data_dir: Path) -> None:
    code, out = _submit(runner, data_dir, "--name", "x")
    assert code == 2 and "give --command or --command-file" in out


def test_submit_refuses_command_and_command_file(runner: CliRunner, data_dir: Path, tmp_path: Path) -> None:
    f = tmp_path / "cmd.sh"
    f.write_text("echo hi\n")
    code, out = _submit(runner, data_dir, "--name", "x", "--command", "echo", "--command-file", str(f))
    assert code == 2 and "not both" in out


@pytest.mark.parametrize("hp", ["[1, 2]", "{not json", "3"])
def test_submit_hyperparameters_must_be_a_json_object(runner: CliRunner, data_dir: Path, hp: str) -> None:
    code, out = _submit(runner, data_dir, "--name", "x", "--command", "true", "--hyperparameters", hp)
    assert code == 2 and "--hyperparameters" in out


def test_submit_tag_needs_key_value(runner: CliRunner, data_dir: Path) -> None:
    code, out = _submit(runner, data_dir, "--name", "x", "--command", "true", "--tag", "novalue")
    assert code == 2 and "KEY=VALUE" in out


def test_submit_gpu_type_needs_gpu(runner: CliRunner, data_dir: Path) -> None:
    code, out = _submit(runner, data_dir, "--name", "x", "--command", "true", "--gpu-type", "A100")
    assert code == 2 and "--gpu" in out


@pytest.mark.parametrize("nodes", ["0", "-1", "x"])
def test_submit_nodes_at_least_one(runner: CliRunner, data_dir: Path, nodes: str) -> None:
    code, _ = _submit(runner, data_dir, "--name", "x", "--command", "true", "--nodes", nodes)
    assert code == 2


def test_agent_start_checks_gpus(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(cli, ["agent", "start", "--data-dir", str(tmp_path), "--name", "n", "--gpus", "A100"])
    assert result.exit_code == 2 and "TYPE:COUNT" in result.output


def test_up_port_range(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(cli, ["up", "--data-dir", str(tmp_path), "--port", "70000"])
    assert result.exit_code == 2


def test_no_api_address_is_explained(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(cli, ["--data-dir", str(tmp_path), "rg", "list"])
    assert result.exit_code == 1
    assert "no API address" in result.stderr and "capstan up" in result.stderr


def test_time_arguments() -> None:
    from datetime import UTC, datetime

    now = datetime(2025, 1, 31, 12, 0, 0, tzinfo=UTC)
    assert time_arg("10m", now) == "2025-01-31T11:50:00Z"
    assert time_arg("1d", now) == "2025-01-30T12:00:00Z"
    assert time_arg("2025-01-31T10:00:00+02:00") == "2025-01-31T08:00:00Z"
    with pytest.raises(Exception, match="use an age"):
        time_arg("yesterday")


def test_table_and_duration() -> None:
    out = table(["ID", "NAME"], [["a", None], ["bbb", {"k": "v"}]])
    assert out.splitlines() == ["ID   NAME", "a    -", "bbb  k=v"]
    assert [duration(s) for s in (5, 65, 3700, 90000)] == ["5s", "1m05s", "1h01m", "1d01h"]


@pytest.mark.parametrize("n", ["11", "-1", "x"])
def test_submit_max_restarts_is_0_to_10(runner: CliRunner, data_dir: Path, n: str) -> None:
    code, out = _submit(runner, data_dir, "--name", "x", "--command", "true", "--max-restarts", n)
    assert code == 2 and "--max-restarts" in out
