"""up/down/restart-component behaviour that needs nothing of the platform running."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from capstan_cli import procs
from capstan_cli.main import cli
from capstan_cli.platform import Paths, Ports

SLEEP = "import time; time.sleep(60)"


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait()


def _sleeper(spawned: list[subprocess.Popen[bytes]], *argv: str) -> subprocess.Popen[bytes]:
    p = subprocess.Popen([sys.executable, "-c", SLEEP, *argv])
    spawned.append(p)
    return p


def test_down_on_an_empty_dir(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(cli, ["down", "--data-dir", str(tmp_path / "none")])
    assert result.exit_code == 0
    assert "Nothing to stop" in result.output
    (tmp_path / "empty" / "run").mkdir(parents=True)
    result = runner.invoke(cli, ["down", "--data-dir", str(tmp_path / "empty")])
    assert result.exit_code == 0
    assert "Nothing was running" in result.output


def test_down_removes_stale_pid_files(runner: CliRunner, tmp_path: Path, spawned: list) -> None:
    paths = Paths.of(tmp_path)
    paths.make()
    dead = _sleeper(spawned)
    dead.kill()
    dead.wait()
    procs.record_pid(paths, "scheduler", dead.pid)
    result = runner.invoke(cli, ["down", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "scheduler was not running" in result.output
    assert not paths.pid_file("scheduler").exists()


def test_down_leaves_a_reused_pid_alone(runner: CliRunner, tmp_path: Path, spawned: list) -> None:
    """A pid file naming a process that is not ours (pid reused) must not be signalled."""
    paths = Paths.of(tmp_path)
    paths.make()
    stranger = _sleeper(spawned)
    procs.record_pid(paths, "gateway", stranger.pid)
    result = runner.invoke(cli, ["down", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0
    assert stranger.poll() is None  # still running
    assert not paths.pid_file("gateway").exists()


def test_down_stops_components_then_runners_in_order(runner: CliRunner, tmp_path: Path, spawned: list) -> None:
    paths = Paths.of(tmp_path)
    paths.make()
    # Stand-ins whose command lines hold what the real ones would: their ready file, "runner".
    svc = _sleeper(spawned, "--ready-file", str(paths.run / "trainer.addr"))
    agent = _sleeper(spawned, "--ready-file", str(paths.run / "agent-x.ready"))
    inst = paths.agents / "x" / "instances" / "t-0"
    inst.mkdir(parents=True)
    runner_proc = _sleeper(spawned, "capstan_agentkit.sandbox.runner", str(inst))
    (inst / "runner.pid").write_text(str(runner_proc.pid))
    procs.record_pid(paths, "trainer", svc.pid)
    procs.record_pid(paths, "agent-x", agent.pid)
    result = runner.invoke(cli, ["down", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = [ln.strip() for ln in result.output.splitlines()]
    assert lines == [
        f"stopped agent-x (pid {agent.pid})",
        f"stopped instance runner (pid {runner_proc.pid}, agents/x/instances/t-0)",
        f"stopped trainer (pid {svc.pid})",
    ]
    for p in (svc, agent, runner_proc):
        assert p.wait(timeout=5) is not None
    assert list(paths.run.glob("*.pid")) == []


def test_up_refuses_a_taken_port(runner: CliRunner, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = runner.invoke(cli, ["up", "--data-dir", str(tmp_path), "--port", str(port)])
    assert result.exit_code == 1
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
    assert "choose another --port" in result.stderr
    assert list((tmp_path / "run").glob("*.pid")) == []  # nothing was started


def test_restart_needs_a_platform(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(cli, ["restart-component", "scheduler", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "run capstan up first" in result.stderr


def test_restart_unknown_component(runner: CliRunner, tmp_path: Path) -> None:
    paths = Paths.of(tmp_path)
    Ports.allocate(8080, "127.0.0.1").save(paths)
    result = runner.invoke(cli, ["restart-component", "nope", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "unknown component 'nope'" in result.stderr and "scheduler" in result.stderr


def test_alive_checks_the_command_line(spawned: list) -> None:
    p = _sleeper(spawned, "--ready-file", "/x/run/scheduler.addr")
    assert procs.alive(p.pid, "/x/run/scheduler.addr")
    assert not procs.alive(p.pid, "/y/run/scheduler.addr")
    p.kill()
    p.wait()
    assert not procs.alive(p.pid)


class _Groups:
    """Just what ``own_named`` asks of a client: a list, and whoami."""

    def __init__(self, items: list[dict[str, str]], tenant: str) -> None:
        self.items, self.tenant = items, tenant

    def paginate(self, path: str) -> Iterator[dict[str, str]]:
        assert path == "/resource-groups"
        return iter(self.items)

    def get(self, path: str) -> dict[str, object]:
        assert path == "/whoami"
        return {"account": {"tenant": self.tenant}}


def test_a_name_means_the_own_tenants_group() -> None:
    """Names are unique per tenant (#8): the operator's list holds every tenant's "default"."""
    from capstan_cli.lifecycle import own_named, resolve_group
    from capstan_cli.platform import PlatformError

    groups = [{"id": "rsg-b", "name": "default", "tenant": "acct-b"},
              {"id": "rsg-op", "name": "default", "tenant": "acct-op"},
              {"id": "rsg-x", "name": "x", "tenant": "acct-b"}]
    assert own_named(_Groups(groups, "acct-op"), "/resource-groups", "default")["id"] == "rsg-op"  # type: ignore[arg-type,index]
    assert resolve_group(_Groups(groups, "acct-op"), "x") == "rsg-x"  # type: ignore[arg-type]  # the only one seen
    assert own_named(_Groups(groups, "acct-c"), "/resource-groups", "default") is None  # type: ignore[arg-type]
    with pytest.raises(PlatformError, match="no resource group named 'default' of your tenant"):
        resolve_group(_Groups(groups, "acct-c"), "default")  # type: ignore[arg-type]
