"""A platform stop is not a failure (and the data dir is the platform's alone): ``capstan down`` then ``capstan up`` requeues a running task as an
eviction (not Failed with 143, not a restart), and it resumes from the output it had checkpointed."""

from __future__ import annotations

import time
from pathlib import Path

from .platform_harness import Platform, cli

# Counts its runs in its durable output, then works until stopped.
COMMAND = (
    'n=$(cat /opt/ml/output/runs 2>/dev/null || echo 0); n=$((n+1)); echo $n > /opt/ml/output/runs; '
    'echo "run $n"; sleep 600'
)


def test_down_then_up_requeues_a_running_task_as_an_eviction(tmp_path: Path) -> None:
    platform = Platform.up(tmp_path / "data")
    try:
        task = platform.submit(COMMAND, name="long")
        platform.wait_status(task["id"], ("Running",))
        _wait_line(platform, task["id"], "run 1")
        cli("down", data_dir=platform.data_dir)
        cli("up", "--port", str(platform.port), data_dir=platform.data_dir, timeout=180)
        again = _wait_attempt(platform, task["id"], 1)
        assert again["status"] == "Running", again
        assert again["preemptions"] == 1 and again["restarts"] == 0 and again["restarts_used"] == 0, again
        _wait_line(platform, task["id"], "run 2")  # it resumed from what it wrote before the stop
        assert _open_to_others(platform.data_dir) == []
        with platform.client() as c:
            assert c.post(f"/api/v1/training-tasks/{task['id']}/stop").status_code == 200
        done = platform.wait_status(task["id"], ("Stopped", "Failed", "Succeeded"))
        assert done["status"] == "Stopped", done
    finally:
        platform.down()


def _wait_attempt(platform: Platform, task_id: str, attempt: int) -> dict[str, object]:
    deadline = time.monotonic() + 120
    while True:
        t = platform.task(task_id)
        assert t["status"] != "Failed", t
        if t["attempt"] == attempt and t["status"] == "Running":
            return t
        assert time.monotonic() < deadline, t
        time.sleep(0.2)


def _wait_line(platform: Platform, task_id: str, line: str) -> None:
    deadline = time.monotonic() + 60
    while line not in platform.logs(task_id):
        assert time.monotonic() < deadline, platform.logs(task_id)
        time.sleep(0.2)


def _open_to_others(root: Path) -> list[str]:
    """Paths in the data dir open to another user of the machine: the data dir is 0700 and what the
    platform writes is 0600/0700. Inside instance directories (root-only, 0700) the files an instance's
    unprivileged uid must read, and what user code wrote, may have other bits: none is reachable."""
    found = [f"{root.name} {oct(root.stat().st_mode & 0o777)}"] if root.stat().st_mode & 0o077 else []

    def walk(d: Path, reachable: bool) -> None:
        for p in d.iterdir():
            if p.is_symlink():
                continue
            mode = p.stat().st_mode
            in_instance = "instances" in p.relative_to(root).parts[:-1]
            if mode & 0o077 and (reachable or not in_instance):
                found.append(f"{p.relative_to(root.parent)} {oct(mode & 0o777)}")
            if p.is_dir():
                walk(p, reachable and bool(mode & 0o011))

    walk(root, bool(root.stat().st_mode & 0o011))
    return found
