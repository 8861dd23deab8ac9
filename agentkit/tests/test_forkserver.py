"""Instance runners forked by the warm runner server: the same runner as a fresh interpreter's (its exit
code, its sandbox, a stop, a kill -9), recognised by its working directory, cheaper; a server that no
longer matches the agent (code, settings) is replaced; one that cannot be reached is never needed."""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from capstan_agentkit.sandbox import EXIT_RUNNER_LOST, BwrapExecutor, InstanceSpec, config, forkserver, launch
from capstan_agentkit.sandbox import testing as sandbox_testing
from capstan_agentkit.sandbox.spec import RUNNER_MODULE

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="containment needs root")


def _exited(ex: BwrapExecutor, key: str, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while (st := ex.status(key, 0)).state != "exited":
        assert time.monotonic() < deadline, f"{key} is {st}"
        time.sleep(0.02)
    assert st.exit_code is not None
    return st.exit_code


def _cmdline(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")


def _server_pid(ex: BwrapExecutor) -> int:
    assert ex._runners is not None and ex._runners._server is not None
    return ex._runners._server.pid


def test_runners_are_forked_by_one_server_and_behave_as_their_own(executor: BwrapExecutor) -> None:
    executor.start(InstanceSpec(task_id="fs-a", instance_index=0, command="sleep 60", cpu=0.5, memory_gib=0.25))
    st = executor.status("fs-a", 0)
    assert st.state == "running" and st.pid is not None
    runner = st.pid
    # forked by the server (its command line), in the instance's directory: that is how it is known
    assert forkserver.FORKSERVER_MODULE.encode() in _cmdline(runner)
    assert os.readlink(f"/proc/{runner}/cwd") == str(executor.instance_dir("fs-a", 0))
    server = _server_pid(executor)
    assert runner != server and os.getsid(runner) == runner  # a session of its own: outlives the agent
    # a second instance comes from the same server
    executor.start(InstanceSpec(task_id="fs-b", instance_index=0, command="exit 3", cpu=0.5, memory_gib=0.25))
    assert _exited(executor, "fs-b") == 3
    assert _server_pid(executor) == server
    # a stop is the runner's graceful stop (SIGTERM to the sandbox: sleep dies of it)
    executor.stop("fs-a", 0)
    assert _exited(executor, "fs-a") == 143
    # an agent restarted meanwhile (a new executor) re-adopts and uses the same server
    again = BwrapExecutor(executor.root, executor.config)
    again.start(InstanceSpec(task_id="fs-c", instance_index=0, command="true", cpu=0.5, memory_gib=0.25))
    assert _exited(again, "fs-c") == 0
    assert again._runners is not None and again._runners._server is None  # it started none of its own


def test_a_killed_forked_runner_is_reported_lost(executor: BwrapExecutor) -> None:
    executor.start(InstanceSpec(task_id="fs-k", instance_index=0, command="sleep 60", cpu=0.5, memory_gib=0.25))
    pid = executor.status("fs-k", 0).pid
    assert pid is not None
    # killed once its sandbox runs (a kill in the middle of the set-up is another case: what the lock's
    # block had made before its state was saved is not recorded anywhere yet)
    deadline = time.monotonic() + 20
    while executor.address("fs-k", 0) is None:
        assert time.monotonic() < deadline, executor.status("fs-k", 0)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    assert _exited(executor, "fs-k") == EXIT_RUNNER_LOST
    assert sandbox_testing.settled_leftovers(executor.config) == []


def test_a_server_that_no_longer_matches_is_replaced(executor: BwrapExecutor, monkeypatch: pytest.MonkeyPatch) -> None:
    executor.start(InstanceSpec(task_id="fs-1", instance_index=0, command="true", cpu=0.5, memory_gib=0.25))
    assert _exited(executor, "fs-1") == 0
    old = _server_pid(executor)
    # a changed setting (an environment variable the runner reads): runners must not be forked from the old one
    monkeypatch.setenv("CAPSTAN_SANDBOX_METRICS_S", "7")
    ex2 = BwrapExecutor(executor.root, executor.config)
    ex2.start(InstanceSpec(task_id="fs-2", instance_index=0, command="true", cpu=0.5, memory_gib=0.25))
    assert _exited(ex2, "fs-2") == 0
    assert _server_pid(ex2) != old
    deadline = time.monotonic() + 10
    while executor._runners is not None and executor._runners._server is not None:
        executor._runners.reap()  # the stale server exits at once
        assert time.monotonic() < deadline, "the stale server is still running"
        time.sleep(0.02)


def test_the_server_forks_only_for_its_own_instance_dirs(executor: BwrapExecutor, tmp_path: Path) -> None:
    executor.start(InstanceSpec(task_id="fs-own", instance_index=0, command="true", cpu=0.5, memory_gib=0.25))
    assert _exited(executor, "fs-own") == 0
    assert executor._runners is not None
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for target in (elsewhere, executor.root, executor.root / ".." / "elsewhere"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(executor._runners.path))
            s.sendall(json.dumps({"token": executor._runners._token, "dir": str(target)}).encode() + b"\n")
            assert "error" in json.loads(s.makefile().readline())
    assert not (elsewhere / "runner.err").exists()
    # and a request that is not even JSON, or JSON of another shape, changes nothing: the next one is served
    for junk in (b"\xff\xfe not json\n", b"[1, 2]\n", b'{"dir": 5}\n', b"null\n"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(executor._runners.path))
            s.sendall(junk)
            s.makefile("rb").readline()  # answered or closed: either way served
    assert executor._runners._server is not None and executor._runners._server.poll() is None  # still serving
    executor.start(InstanceSpec(task_id="fs-next", instance_index=0, command="true", cpu=0.5, memory_gib=0.25))
    assert _exited(executor, "fs-next") == 0


def test_without_a_server_the_runner_is_an_interpreter_of_its_own(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = sandbox_testing.fresh()
    ex = BwrapExecutor(tmp_path / "instances", cfg)
    assert ex._runners is not None
    monkeypatch.setattr(forkserver, "socket_path", lambda root: Path("/proc/nowhere/x.sock"))
    ex._runners.path = forkserver.socket_path(ex.root)  # an unusable place: the server cannot start
    try:
        ex.start(InstanceSpec(task_id="fs-solo", instance_index=0, command="sleep 60", cpu=0.5, memory_gib=0.25))
        pid = ex.status("fs-solo", 0).pid
        assert pid is not None and RUNNER_MODULE.encode() in _cmdline(pid)
        ex.stop("fs-solo", 0)
        assert _exited(ex, "fs-solo") == 143
    finally:
        sandbox_testing.stop_all(ex, cfg)


def test_the_launch_steps_run_in_bubblewraps_child_and_a_failure_is_recorded(tmp_path: Path) -> None:
    """The runner does the launcher's steps as bubblewrap's preexec_fn: one that fails ends the child with
    125 (nothing is exec'd) and says why in the plan's error file, as the launcher process would."""
    error = tmp_path / "launch.err"
    plan = {"cgroup_procs": [str(tmp_path / "no-such-cgroup" / "cgroup.procs")], "stage": str(tmp_path), "binds": [],
            "masks": [], "netns": None, "uid": 2_000_000, "gid": 2_000_000, "error_file": str(error)}
    marker = tmp_path / "exec-happened"
    proc = subprocess.run(["touch", str(marker)], preexec_fn=functools.partial(launch.in_child, plan))  # noqa: PLW1509
    assert proc.returncode == launch.EXIT_LAUNCH_FAILED
    assert not marker.exists()
    assert "No such file or directory" in error.read_text()


@pytest.mark.parametrize("value", ["abc", "nan", "inf", "-5", "0"])
def test_an_idle_time_that_is_no_positive_number_is_the_default(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPSTAN_RUNNER_SERVER_IDLE_S", value)
    assert forkserver._idle_exit_s() == 600.0
    monkeypatch.setenv("CAPSTAN_RUNNER_SERVER_IDLE_S", "15")
    assert forkserver._idle_exit_s() == 15.0


def test_the_platform_umask_leaves_the_sandbox_state_reachable(tmp_path: Path) -> None:
    """The platform runs with umask 077; the sandbox's state dir (its staging mount point) and the
    directories made for it must still be 0755, or bubblewrap, as the instance's uid, cannot reach the
    stage and no instance starts (it happened on a fresh host with ``capstan up``)."""
    top = Path("/run") / f"capstan-test-{sandbox_testing.PREFIX}-{os.getpid()}"
    state = top / "a" / "sandbox"
    cfg = sandbox_testing.fresh(state_dir=state, uid_base=2_060_000, uid_count=1_000)
    ex = BwrapExecutor(tmp_path / "instances", cfg, runner_server=False)
    old = os.umask(0o077)
    try:
        ex.start(InstanceSpec(task_id="um-a", instance_index=0, command="cat /etc/hostname", cpu=0.5,
                              memory_gib=0.25, network="none"))
        assert _exited(ex, "um-a") == 0, ex.log_path("um-a", 0).read_text()
        for d in (top, top / "a", state, state / "stage"):
            assert (d.stat().st_mode & 0o777) == 0o755, d
    finally:
        os.umask(old)
        sandbox_testing.stop_all(ex, cfg)
        shutil.rmtree(top, ignore_errors=True)


def test_an_earlier_runs_private_run_dir_is_made_reachable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The platform's own /run/capstan left 0700 by an earlier start is repaired; any other existing
    directory above the state dir is left as it is."""
    other = tmp_path / "other"
    run_root = other / "capstan"
    run_root.mkdir(parents=True, mode=0o700)
    os.chmod(other, 0o711)
    os.chmod(run_root, 0o700)
    monkeypatch.setattr(config, "RUN_ROOT", run_root)
    config.reachable_dir(run_root / "sandbox" / "stage")
    assert (run_root.stat().st_mode & 0o777) == 0o755
    assert (other.stat().st_mode & 0o777) == 0o711
    assert ((run_root / "sandbox").stat().st_mode & 0o777) == 0o755
