"""The README quickstart, end to end: `capstan up`, a resource group, a task, its logs, `capstan down`.

Runs the real platform (nats-server, services, gateway, agents) as subprocesses; skipped while
the platform's packages are not all installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from capstan_core.natsserver import free_port

BIN = Path(sys.executable).parent
NEEDED_MODULES = ("capstan_scheduler.service", "capstan_trainer.service", "capstan_gateway.app")


def _missing() -> list[str]:
    missing = []
    for mod in NEEDED_MODULES:
        try:
            found = importlib.util.find_spec(mod) is not None
        except ImportError:
            found = False
        if not found:
            missing.append(f"module {mod}")
    if not (BIN / "capstan-trainer-agent").exists():
        missing.append(f"{BIN / 'capstan-trainer-agent'}")
    return missing


pytestmark = pytest.mark.skipif(
    bool(_missing()), reason=f"the platform is not all installed yet: missing {', '.join(_missing())}"
)


def capstan(data_dir: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CAPSTAN_API", "CAPSTAN_TOKEN", "CAPSTAN_DATA_DIR")}
    return subprocess.run(
        [str(BIN / "capstan"), *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def platform_pids(data_dir: Path) -> dict[str, int]:
    pids = {p.stem: int(p.read_text()) for p in (data_dir / "run").glob("*.pid")}
    for p in (data_dir / "agents").glob("*/instances/*/runner.pid"):
        pids[f"runner {p.parent.name}"] = int(p.read_text())
    return pids


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def assert_all_dead(pids: dict[str, int]) -> None:
    deadline = time.monotonic() + 5  # an exited process may stay a zombie a moment until reaped
    while time.monotonic() < deadline and any(alive(p) for p in pids.values()):
        time.sleep(0.1)
    assert {n: p for n, p in pids.items() if alive(p)} == {}


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Path]:
    data_dir = tmp_path / "capstan"
    seen: dict[str, int] = {}
    try:
        up = capstan(data_dir, "up", "--port", str(free_port()))
        seen.update(platform_pids(data_dir))
        assert up.returncode == 0, f"capstan up failed:\n{up.stdout}\n{up.stderr}"
        yield data_dir
        seen.update(platform_pids(data_dir))
    finally:
        seen.update(platform_pids(data_dir))
        down = capstan(data_dir, "down")
        assert down.returncode == 0, down.stderr
        assert_all_dead(seen)


def test_quickstart(platform: Path) -> None:
    data_dir = platform
    rg = capstan(data_dir, "rg", "create", "team-a")
    assert rg.returncode == 0, rg.stderr
    assert rg.stdout.strip().startswith("rsg-")

    submit = capstan(
        data_dir,
        "task", "submit", "--name", "hello",
        "--command", "echo hello from $(pwd); cat /opt/ml/input/config/hyperparameters.json",
        "--hyperparameters", '{"lr": 0.1}',
        "--wait",
    )  # fmt: skip
    assert submit.returncode == 0, f"{submit.stdout}\n{submit.stderr}"
    task_id = submit.stdout.splitlines()[0].strip()
    assert "Succeeded" in submit.stderr

    deadline = time.monotonic() + 15  # lines reach the log store shortly after the task ends
    while True:
        logs = capstan(data_dir, "task", "logs", task_id)
        assert logs.returncode == 0, logs.stderr
        if "hello from /opt/ml/code" in logs.stdout and '"lr": 0.1' in logs.stdout:
            break
        assert time.monotonic() < deadline, f"logs so far:\n{logs.stdout}"
        time.sleep(0.5)

    status = capstan(data_dir, "task", "status", task_id)
    assert status.returncode == 0, status.stderr
    assert "Succeeded" in status.stdout
    detail = json.loads(capstan(data_dir, "--json", "task", "status", task_id).stdout)
    assert detail["status"] == "Succeeded" and detail["exit_code"] == 0


def test_up_again_restart_and_down(platform: Path) -> None:
    """Operator paths: `up` is idempotent, a killed service comes back with restart-component,
    an added agent joins, and `down` stops instance runners too."""
    data_dir = platform
    port = json.loads((data_dir / "run" / "ports.json").read_text())["http"]
    again = capstan(data_dir, "up", "--port", str(port))
    assert again.returncode == 0, again.stderr
    assert "already up" in again.stdout

    taken = capstan(data_dir.parent / "other", "up", "--port", str(port))
    assert taken.returncode == 1 and "already in use" in taken.stderr

    ports_before = (data_dir / "run" / "ports.json").read_text()
    old = int((data_dir / "run" / "scheduler.pid").read_text())
    os.kill(old, 9)
    restart = capstan(data_dir, "restart-component", "scheduler")
    assert restart.returncode == 0, restart.stderr
    assert int((data_dir / "run" / "scheduler.pid").read_text()) != old
    assert (data_dir / "run" / "ports.json").read_text() == ports_before

    agent = capstan(data_dir, "agent", "start", "--name", "extra", "--cpu", "2", "--memory", "2", "--gpus", "T4:2")
    assert agent.returncode == 0, agent.stderr
    nodes = json.loads(capstan(data_dir, "--json", "nodes").stdout)
    assert {"extra": {"T4": 2}}.items() <= {n["name"]: n["gpus"] for n in nodes}.items()

    sleeper = capstan(data_dir, "task", "submit", "--name", "sleeper", "--command", "sleep 600")
    assert sleeper.returncode == 0, sleeper.stderr
    task_id = sleeper.stdout.strip()
    deadline = time.monotonic() + 60
    while not list((data_dir / "agents").glob(f"*/instances/{task_id}-*/runner.pid")):
        assert time.monotonic() < deadline, "the sleeper task never started"
        time.sleep(0.2)
    pids = platform_pids(data_dir)
    assert any(name.startswith("runner ") for name in pids)
    down = capstan(data_dir, "down")
    assert down.returncode == 0, down.stderr
    assert "stopped instance runner" in down.stdout
    assert_all_dead(pids)
    assert list((data_dir / "run").glob("*.pid")) == []


def test_group_edit_release_and_delete(platform: Path) -> None:
    """An operator's round: a group with its own machine, edited, drained and deleted."""
    data_dir = platform
    rg_id = capstan(data_dir, "rg", "create", "ops", "--tag", "team=ops").stdout.strip()
    upd = capstan(data_dir, "rg", "update", rg_id, "--name", "ops-2", "--policy", '{"ResourceRule": {"DefaultQueue": 2}}')
    assert upd.returncode == 0, upd.stderr
    got = json.loads(capstan(data_dir, "--json", "rg", "get", rg_id).stdout)
    assert got["name"] == "ops-2" and got["tags"] == {"team": "ops"} and got["policy"]["ResourceRule"]["DefaultQueue"] == 2
    bad = capstan(data_dir, "rg", "update", rg_id, "--policy", '{"ResourceRule": {"Preempted": 3}}')
    assert bad.returncode == 1 and "ResourceRule.Preempted must be 0 or 1" in bad.stderr

    started = capstan(data_dir, "agent", "start", "--name", "ops-node", "--resource-group", rg_id, "--cpu", "1", "--memory", "1")
    assert started.returncode == 0, started.stderr
    node = json.loads(capstan(data_dir, "--json", "nodes", "--resource-group", rg_id).stdout)[0]
    queue = capstan(data_dir, "rg", "queue", rg_id)
    assert queue.returncode == 0 and "queue: empty" in queue.stdout and node["id"] in queue.stdout, queue.stderr
    refused = capstan(data_dir, "rg", "delete", rg_id)
    assert refused.returncode == 1 and node["id"] in refused.stderr and "release" in refused.stderr
    released = capstan(data_dir, "nodes", "release", node["id"])
    assert released.returncode == 0 and "Releasing" in released.stdout, released.stderr
    deadline = time.monotonic() + 15
    while json.loads(capstan(data_dir, "--json", "nodes", "--resource-group", rg_id).stdout)[0]["state"] != "Released":
        assert time.monotonic() < deadline
        time.sleep(0.3)
    deleted = capstan(data_dir, "rg", "delete", rg_id)
    assert deleted.returncode == 0, deleted.stderr
    assert capstan(data_dir, "rg", "get", rg_id).returncode == 1
