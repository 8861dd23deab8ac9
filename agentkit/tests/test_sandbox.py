"""Tests for the trainer agent's sandbox executor, with real bubblewrap.

``ExecutorContract`` holds the behaviour every executor must have; a future
executor (e.g. Kubernetes) reuses it by subclassing and filling in the hooks.
``TestBwrapExecutor`` runs it against :class:`BwrapExecutor` and adds the
checks that only make sense for bwrap (capabilities, a killed runner, ...).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from capstan_agentkit.sandbox import (
    EXIT_RUNNER_LOST,
    EXIT_SANDBOX_UNAVAILABLE,
    EXIT_STOPPED_BEFORE_START,
    BwrapExecutor,
    Executor,
    InstanceSpec,
    InstanceStatus,
    network,
    read_log,
)
from capstan_agentkit.sandbox import testing as sandbox_testing
from capstan_agentkit.sandbox.cgroups import CgroupsV1, CgroupsV2, detect
from capstan_agentkit.sandbox.config import Limits, SandboxConfig, thread_env
from capstan_agentkit.sandbox.containment import Containment
from capstan_agentkit.sandbox.leases import HostState
from capstan_agentkit.sandbox.network import gateway, hosts_file, instance_address
from capstan_agentkit.sandbox.spec import InstancePaths

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def unique_sleep() -> str:
    """A sleep duration no other process on the host uses, to find our sleepers in /proc."""
    return f"{1000 + uuid.uuid4().int % 10**6}.5"


def pids_running(*argv: str) -> list[int]:
    """Host pids whose command line starts with ``argv``."""
    needle = "\0".join(argv).encode() + b"\0"
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(needle):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


class ExecutorContract:
    """Behaviour every :class:`Executor` must have.  Subclasses implement the hooks."""

    def make_executor(self, tmp_path: Path) -> Executor:
        """An executor whose state lives under ``tmp_path``; a second call = a restarted agent."""
        raise NotImplementedError

    def spawn_source(self, tmp_path: Path) -> str:
        """Python source, run in a fresh interpreter, that binds ``executor`` like make_executor."""
        raise NotImplementedError

    def host_path(self, executor: Executor, task_id: str, index: int, name: str) -> Path:
        """Where the sandbox's /opt/ml/<name> (output, model) lands on the host."""
        raise NotImplementedError

    @pytest.fixture
    def executor(self, tmp_path: Path) -> Iterator[Executor]:
        ex = self.make_executor(tmp_path)
        yield ex
        # Leave nothing running behind, whatever the test did.
        for key in ex.list_instances():
            ex.stop(*key)

        def all_ended() -> bool:
            return all(ex.status(*key).state != "running" for key in ex.list_instances())

        wait_until(all_ended, timeout=5)

    def spec(self, command: str, **kw: Any) -> InstanceSpec:
        task_id, index = kw.pop("task_id", "task-1"), kw.pop("instance_index", 0)
        return InstanceSpec(task_id=task_id, instance_index=index, command=command, **kw)

    def run_to_end(self, ex: Executor, spec: InstanceSpec, timeout: float = 8.0) -> InstanceStatus:
        ex.start(spec)
        assert wait_until(lambda: ex.status(spec.task_id, spec.instance_index).state == "exited", timeout)
        return ex.status(spec.task_id, spec.instance_index)

    def records(self, ex: Executor, spec: InstanceSpec) -> list[dict[str, Any]]:
        return read_log(ex.log_path(spec.task_id, spec.instance_index))[0]

    def lines(self, ex: Executor, spec: InstanceSpec, stream: str = "stdout") -> list[str]:
        return [r["line"] for r in self.records(ex, spec) if r["stream"] == stream]

    def wait_for_line(self, ex: Executor, spec: InstanceSpec, line: str) -> None:
        assert wait_until(lambda: line in self.lines(ex, spec)), self.records(ex, spec)

    def test_exit_codes(self, executor: Executor) -> None:
        ok, three = self.spec("exit 0", instance_index=0), self.spec("exit 3", instance_index=1)
        killed = self.spec("kill -9 $$", instance_index=2)
        status = self.run_to_end(executor, ok)
        assert (status.state, status.exit_code) == ("exited", 0)
        assert self.run_to_end(executor, three).exit_code == 3
        assert self.run_to_end(executor, killed).exit_code == 128 + signal.SIGKILL
        platform = [r["line"] for r in self.records(executor, three) if r["stream"] == "platform"]
        assert any(x.startswith("instance started") for x in platform) and platform[-1] == "exit code 3"

    def test_sees_the_opt_ml_layout(self, executor: Executor) -> None:
        hp = {"lr": 0.01, "layers": [64, 32], "name": "ünï"}
        command = """
            pwd
            cat /opt/ml/input/config/hyperparameters.json; echo
            echo hello > /opt/ml/output/x
            echo world > /opt/ml/model/y
            python3 -c 'import json; print(json.dumps({"py": "ok"}))'
            echo "$HOME $PYTHONUNBUFFERED $MY_VAR"
        """
        spec = self.spec(command, hyperparameters=hp, env={"MY_VAR": "from spec"})
        assert self.run_to_end(executor, spec).exit_code == 0, self.records(executor, spec)
        out = self.lines(executor, spec)
        assert out[0] == "/opt/ml/code"
        assert json.loads(out[1]) == hp
        assert json.loads(out[2]) == {"py": "ok"}
        assert out[3] == "/tmp 1 from spec"
        assert self.host_path(executor, "task-1", 0, "output").joinpath("x").read_text() == "hello\n"
        assert self.host_path(executor, "task-1", 0, "model").joinpath("y").read_text() == "world\n"

    def test_log_keeps_streams_apart_and_in_order(self, executor: Executor) -> None:
        spec = self.spec("for i in 1 2 3 4 5 6 7 8; do echo out$i; echo err$i >&2; done")
        t0 = int(time.time() * 1000)
        self.run_to_end(executor, spec)
        assert self.lines(executor, spec, "stdout") == [f"out{i}" for i in range(1, 9)]
        assert self.lines(executor, spec, "stderr") == [f"err{i}" for i in range(1, 9)]
        for r in self.records(executor, spec):
            assert set(r) == {"ts_ms", "stream", "line"}
            assert isinstance(r["ts_ms"], int) and t0 - 1000 <= r["ts_ms"] <= time.time() * 1000 + 1000

    def test_cannot_see_the_host(self, executor: Executor, tmp_path: Path) -> None:
        secret = tmp_path / "secret.txt"
        secret.write_text("host only")
        # Python may have to live under /root; anything else there must stay hidden.
        prefixes = [Path(p).resolve() for p in (sys.prefix, sys.base_prefix)]
        needed = {p.relative_to("/root").parts[0] for p in prefixes if p.is_relative_to("/root")}
        hidden = {p.name for p in Path("/root").iterdir()} - needed if os.access("/root", os.R_OK) else set()
        assert hidden or not os.access("/root", os.R_OK)  # the check below must check something
        spec = self.spec(f"test -e {secret} && echo visible || echo hidden; echo $$; ls -A /root 2>/dev/null; true")
        assert self.run_to_end(executor, spec).exit_code == 0
        out = self.lines(executor, spec)
        assert out[0] == "hidden"
        assert int(out[1]) < 10  # a pid namespace of its own
        assert not hidden & set(out[2:]), out

    def test_stop_kills_the_whole_tree(self, executor: Executor) -> None:
        duration = unique_sleep()
        spec = self.spec(f"sleep {duration} & sleep {duration}")
        executor.start(spec)
        assert wait_until(lambda: len(pids_running("sleep", duration)) == 2)
        started = time.monotonic()
        executor.stop("task-1", 0)
        assert wait_until(lambda: executor.status("task-1", 0).state == "exited", spec.stop_grace_seconds + 2)
        assert time.monotonic() - started < 5  # plain processes die on SIGTERM, no grace needed
        assert executor.status("task-1", 0).exit_code == 128 + signal.SIGTERM
        assert pids_running("sleep", duration) == []

    def test_stop_lets_the_command_handle_sigterm(self, executor: Executor) -> None:
        spec = self.spec("trap 'echo got-term; exit 0' TERM; echo ready; while true; do sleep 0.1; done")
        executor.start(spec)
        self.wait_for_line(executor, spec, "ready")
        executor.stop("task-1", 0)
        assert wait_until(lambda: executor.status("task-1", 0).state == "exited")
        assert executor.status("task-1", 0).exit_code == 0
        assert "got-term" in self.lines(executor, spec)

    def test_stop_kills_after_the_grace_period(self, executor: Executor) -> None:
        spec = self.spec("trap '' TERM; echo ready; while true; do sleep 0.1; done", stop_grace_seconds=1)
        executor.start(spec)
        self.wait_for_line(executor, spec, "ready")
        started = time.monotonic()
        executor.stop("task-1", 0)
        assert executor.status("task-1", 0).state == "running"  # stop does not block
        assert wait_until(lambda: executor.status("task-1", 0).state == "exited")
        assert 0.8 <= time.monotonic() - started < 4
        assert executor.status("task-1", 0).exit_code == 128 + signal.SIGKILL

    def test_stop_right_after_start_is_recorded_as_a_stop(self, executor: Executor) -> None:
        # The runner may not have installed its SIGTERM handler yet: the stop must still be recorded
        # (as a stop before the start), never as a runner lost without an exit code. A runner fast enough
        # to have started the sandbox already (a forked one can be) stops it as any running instance.
        spec = self.spec("echo should-not-run; sleep 30")
        executor.start(spec)
        executor.stop("task-1", 0)
        assert wait_until(lambda: executor.status("task-1", 0).state == "exited", timeout=10)
        assert executor.status("task-1", 0).exit_code == EXIT_STOPPED_BEFORE_START  # 143 either way
        said = self.lines(executor, spec, "platform")
        if "stop requested before the instance started" in said:
            assert "should-not-run" not in self.lines(executor, spec)
        else:
            assert any(line.startswith("stop requested: SIGTERM") for line in said), said

    def test_stop_is_a_no_op_unless_running(self, executor: Executor) -> None:
        executor.stop("nothing", 0)
        assert executor.status("nothing", 0) == InstanceStatus("absent")
        assert executor.list_instances() == []
        spec = self.spec("exit 4")
        self.run_to_end(executor, spec)
        executor.stop("task-1", 0)
        assert executor.status("task-1", 0).exit_code == 4

    def test_restarted_agent_adopts_running_instances(self, executor: Executor, tmp_path: Path) -> None:
        duration = unique_sleep()
        spec = self.spec(f"echo ready; sleep {duration}")
        executor.start(spec)
        self.wait_for_line(executor, spec, "ready")
        pid = executor.status("task-1", 0).pid
        restarted = self.make_executor(tmp_path)
        assert restarted.list_instances() == [("task-1", 0)]
        assert restarted.status("task-1", 0) == InstanceStatus("running", None, pid)
        restarted.start(spec)  # already running: must not start a second one
        time.sleep(0.3)
        assert restarted.status("task-1", 0).pid == pid
        assert len(pids_running("sleep", duration)) == 1
        restarted.stop("task-1", 0)
        assert wait_until(lambda: restarted.status("task-1", 0).state == "exited")
        assert executor.status("task-1", 0).exit_code == 128 + signal.SIGTERM

    def test_instance_survives_the_agent_being_killed(self, tmp_path: Path) -> None:
        script = f"""
import sys, time
from pathlib import Path
from capstan_agentkit.sandbox import *
{self.spawn_source(tmp_path)}
executor.start(InstanceSpec("task-1", 0, "sleep 1; exit 7"))
print("started", flush=True)
time.sleep(60)
"""
        with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) as agent:
            try:
                assert agent.stdout is not None and agent.stdout.readline() == "started\n"
            finally:
                agent.kill()  # the agent dies the hard way while the instance runs
        restarted = self.make_executor(tmp_path)
        assert restarted.status("task-1", 0).state == "running"
        assert wait_until(lambda: restarted.status("task-1", 0).state == "exited")
        assert restarted.status("task-1", 0).exit_code == 7

    def test_remove(self, executor: Executor) -> None:
        duration = unique_sleep()
        running = self.spec(f"sleep {duration}", instance_index=1)
        executor.start(running)
        self.run_to_end(executor, self.spec("exit 0"))
        assert sorted(executor.list_instances()) == [("task-1", 0), ("task-1", 1)]
        with pytest.raises(RuntimeError):
            executor.remove("task-1", 1)
        executor.remove("task-1", 0)
        assert executor.status("task-1", 0) == InstanceStatus("absent")
        assert executor.list_instances() == [("task-1", 1)]
        executor.remove("task-1", 0)  # already gone: fine


class TestBwrapExecutor(ExecutorContract):
    """Contained, as every node is unless its operator opts out (that case: TestUncontainedBwrapExecutor)."""

    def make_executor(self, tmp_path: Path) -> Executor:
        return BwrapExecutor(tmp_path / "instances", sandbox_testing.CONFIG)

    def spawn_source(self, tmp_path: Path) -> str:
        return (f"from capstan_agentkit.sandbox import testing\n"
                f"executor = BwrapExecutor(Path({str(tmp_path / 'instances')!r}), testing.CONFIG)")

    def host_path(self, executor: Executor, task_id: str, index: int, name: str) -> Path:
        assert isinstance(executor, BwrapExecutor)
        return executor.instance_dir(task_id, index) / name

    def test_sandbox_is_unprivileged(self, executor: Executor) -> None:
        # bwrap run as root keeps every capability unless told to drop them.
        spec = self.spec("grep CapEff /proc/self/status; echo x > /proc/sys/kernel/hostname || echo ro")
        self.run_to_end(executor, spec)
        assert self.lines(executor, spec) == ["CapEff:\t0000000000000000", "ro"]

    def test_killed_runner_reports_lost(self, executor: Executor) -> None:
        duration = unique_sleep()
        spec = self.spec(f"sleep {duration}")
        executor.start(spec)
        assert wait_until(lambda: len(pids_running("sleep", duration)) == 1)
        os.kill(executor.status("task-1", 0).pid or 0, signal.SIGKILL)
        assert wait_until(lambda: executor.status("task-1", 0).state == "exited")
        assert executor.status("task-1", 0).exit_code == EXIT_RUNNER_LOST
        # --die-with-parent: the sandbox went down with its runner.
        assert wait_until(lambda: pids_running("sleep", duration) == [])
        assert "gone without recording an exit code" in self.records(executor, spec)[-1]["line"]

    def test_a_runner_not_yet_execd_is_not_lost(self, executor: Executor, monkeypatch: pytest.MonkeyPatch) -> None:
        """Between fork and exec a runner's command line is still the agent's: the executor that spawned
        it must not take it for lost (that reported 137 for a task that then exited 0)."""
        from capstan_agentkit.sandbox import executor as executor_module

        monkeypatch.setattr(executor_module, "_runner_alive", lambda pid, d: False)  # the named window
        spec = self.spec("echo done")
        executor.start(spec)
        assert executor.status("task-1", 0).state in ("running", "exited")
        assert wait_until(lambda: executor.status("task-1", 0).state == "exited")
        assert executor.status("task-1", 0).exit_code == 0

    def test_refuses_to_run_without_bwrap(
        self, executor: Executor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        (tmp_path / "empty-bin").mkdir()
        monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # inherited by the runner
        spec = self.spec("echo ran unsandboxed")
        assert self.run_to_end(executor, spec).exit_code == EXIT_SANDBOX_UNAVAILABLE
        assert self.lines(executor, spec) == []
        assert "bwrap not found" in self.records(executor, spec)[0]["line"]


class TestUncontainedBwrapExecutor(ExecutorContract):
    """The operator's opt-out (CAPSTAN_SANDBOX_UNCONTAINED=true) must still behave as an executor."""

    def make_executor(self, tmp_path: Path) -> Executor:
        return BwrapExecutor(tmp_path / "instances", sandbox_testing.config(contained=False))

    def spawn_source(self, tmp_path: Path) -> str:
        return (f"from capstan_agentkit.sandbox import testing\n"
                f"executor = BwrapExecutor(Path({str(tmp_path / 'instances')!r}), testing.config(contained=False))")

    def host_path(self, executor: Executor, task_id: str, index: int, name: str) -> Path:
        assert isinstance(executor, BwrapExecutor)
        return executor.instance_dir(task_id, index) / name

    def test_says_loudly_that_it_is_uncontained(self, executor: Executor) -> None:
        check = executor.health_check()
        assert check is not None and check.ok and "UNCONTAINED" in check.detail
        spec = self.spec("id -u")
        self.run_to_end(executor, spec)
        assert self.lines(executor, spec) == ["0"]
        assert any("UNCONTAINED" in r["line"] for r in self.records(executor, spec) if r["stream"] == "platform")


def test_read_log_returns_complete_lines_only(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    assert read_log(log) == ([], 0)
    first = {"ts_ms": 1, "stream": "stdout", "line": "a"}
    second = {"ts_ms": 2, "stream": "stderr", "line": "b"}
    partial = json.dumps({"ts_ms": 3, "stream": "stdout", "line": "c"})
    log.write_text(f"{json.dumps(first)}\n{json.dumps(second)}\n{partial[:10]}")
    records, offset = read_log(log)
    assert records == [first, second]
    assert read_log(log, offset) == ([], offset)  # the half line is not returned yet
    with log.open("a") as f:
        f.write(partial[10:] + "\n")
    records, end = read_log(log, offset)
    assert records == [json.loads(partial)] and end == log.stat().st_size
    assert read_log(log, 0, max_bytes=5)[0] == [first]  # a long line still comes back whole


def test_spec_round_trips_and_validates() -> None:
    spec = InstanceSpec("t-1", 2, "echo hi\necho there", {"a": [1]}, {"K": "v"}, 5, 2.0, 4.5)
    assert InstanceSpec.from_json(spec.to_json()) == spec
    for bad in ("../x", "a/b", "", "."):
        with pytest.raises(ValueError):
            InstanceSpec(bad, 0, "true")
    with pytest.raises(ValueError):
        InstanceSpec("t", -1, "true")
    with pytest.raises(ValueError):
        InstanceSpec("t", 0, "true", env={"A=B": "x"})


# -- cgroups: v1 runs for real in the containment tests; v2 cannot be enabled here, so it runs against a
# -- FAKE cgroupfs: a plain directory tree shaped like /sys/fs/cgroup, whose "kernel files" we read back.
def _fake_cgroup2(root: Path, controllers: str = "cpuset cpu io memory hugetlb pids") -> Path:
    root.mkdir()
    (root / "cgroup.controllers").write_text(controllers + "\n")
    (root / "cgroup.subtree_control").write_text("")
    return root


def test_cgroup_v2_on_a_fake_cgroupfs(tmp_path: Path) -> None:
    fake = _fake_cgroup2(tmp_path / "fake-cgroupfs")
    cg = detect(fake, "capstan")
    assert isinstance(cg, CgroupsV2) and cg.missing() is None
    cg.create("cs-3", Limits.of(cpu=0.25, memory_gib=0.5, config=SandboxConfig()))
    leaf = fake / "capstan" / "cs-3"
    read = {f.name: f.read_text() for f in leaf.iterdir()}
    assert read == {"memory.max": str(1 << 29), "memory.swap.max": "0", "memory.oom.group": "1",
                    "cpu.max.burst": "25000", "cpu.max": "25000 100000", "pids.max": "64"}
    # controllers are enabled for the children at every level down to the leaf's parent
    assert (fake / "cgroup.subtree_control").read_text() == "+memory +cpu +pids"
    assert (fake / "capstan" / "cgroup.subtree_control").read_text() == "+memory +cpu +pids"
    assert cg.procs_files("cs-3") == [leaf / "cgroup.procs"]
    assert cg.oom_kills("cs-3") == 0
    (leaf / "memory.events").write_text("low 0\nhigh 0\nmax 7\noom 2\noom_kill 1\noom_group_kill 1\n")
    assert cg.oom_kills("cs-3") == 1
    (leaf / "cgroup.procs").write_text("")
    assert cg.pids("cs-3") == set() and cg.names() == {"cs-3"}
    # the kernel's interface files are not files rmdir has to care about; the fake's are: drop them as
    # the kernel would, then the cgroup and its (now empty) parent go
    cg.kill("cs-3")
    assert (leaf / "cgroup.kill").read_text() == "1"
    for f in leaf.iterdir():
        f.unlink()
    (fake / "capstan" / "cgroup.subtree_control").unlink()
    cg.remove("cs-3")
    assert not (fake / "capstan").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="cgroups need root")
@pytest.mark.parametrize("burst_us", [100_000, 0])
def test_a_new_instance_starts_with_its_cpu_burst(burst_us: int) -> None:
    """A new cgroup starts with its burst saved up: 75 ms of CPU right after it is made, at a quota of
    50 ms a period, runs unthrottled with the burst (quota + burst = 100 ms) and is throttled without it.
    (A 1 s period, so that no period ends during the burn, however slow the machine.)"""
    cfg = sandbox_testing.fresh(cpu_burst_us=burst_us, cpu_period_us=1_000_000)
    cg = detect(cfg.cgroup_root, cfg.cgroup_parent)
    if cg.missing():
        pytest.skip(cg.missing() or "")
    burn = ("import sys, time\nsys.stdin.readline()\n"
            "for f in sys.argv[1:]:\n    open(f, 'w').write('0')\n"
            "t = time.process_time()\nwhile time.process_time() - t < 0.075: pass\n")
    # The kernel's periods are not aligned with the cgroup's making: a period that ends during the burn
    # refills the quota and leaves nothing to tell (no throttling, one period counted). Such a run is
    # done again with a new cgroup; any other run answers.
    for attempt in range(6):
        name = f"{cfg.name_prefix}-burst{attempt}"
        # started first (its interpreter's start is not charged), it joins the cgroup once that is made
        proc = subprocess.Popen([sys.executable, "-S", "-c", burn, *map(str, cg.procs_files(name))],
                                stdin=subprocess.PIPE, text=True)
        try:
            cg.create(name, Limits.of(cpu=0.05, memory_gib=0.25, config=cfg))
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
            assert proc.wait(timeout=60) == 0
            cpu_dir = next(d for d in cg.dirs(name) if (d / "cpu.stat").exists())
            stat = dict(line.split() for line in (cpu_dir / "cpu.stat").read_text().splitlines())
        finally:
            proc.kill()
            proc.wait()
            cg.remove(name)
        throttled, periods = int(stat["nr_throttled"]), int(stat["nr_periods"])
        if throttled or not periods:
            break
    assert (throttled == 0) if burst_us else (throttled > 0), stat


@pytest.mark.skipif(os.geteuid() != 0, reason="containment needs root")
def test_a_runner_killed_while_it_sets_the_sandbox_up_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed (no cleanup runs) after its cgroup was made and before its bridge: the lease was recorded
    before anything was made, so the reaper finds it (its owner is dead) and undoes what exists."""
    cfg = sandbox_testing.fresh()
    containment = Containment(cfg)
    paths = InstancePaths.under(tmp_path / "instances", "kill-mid", 0)
    for d in (paths.code, paths.input_config, paths.output, paths.summary, paths.model):
        d.mkdir(parents=True)
    spec = InstanceSpec(task_id="kill-mid", instance_index=0, command="true", cpu=0.5, memory_gib=0.25,
                        network="isolated")
    monkeypatch.setattr(network, "create_bridge", lambda *_a, **_k: os._exit(9))  # the kill, as seen from here
    pid = os.fork()
    if pid == 0:
        try:
            containment.setup(spec, paths, os.getpid())
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 9
    assert any(x.startswith("cgroup") for x in sandbox_testing.leftovers(cfg))  # made, then killed
    assert len(containment.reap_stale()) == 1
    assert sandbox_testing.settled_leftovers(cfg) == []


def test_the_cpu_burst_is_the_operators_to_set(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from capstan_agentkit.settings import NodeAgentSettings

    monkeypatch.setenv("CAPSTAN_DATA_DIR", str(tmp_path))
    assert NodeAgentSettings().sandbox_config().cpu_burst_us == 100_000
    monkeypatch.setenv("CAPSTAN_SANDBOX_CPU_BURST_US", "0")
    assert NodeAgentSettings().sandbox_config().cpu_burst_us == 0
    monkeypatch.setenv("CAPSTAN_SANDBOX_CPU_BURST_US", "-5")
    with pytest.raises(ValueError, match="cpu burst"):
        NodeAgentSettings().sandbox_config()


def test_cgroup_detection_prefers_v2_and_says_what_is_missing(tmp_path: Path) -> None:
    assert isinstance(detect(_fake_cgroup2(tmp_path / "v2"), "p"), CgroupsV2)
    v1 = tmp_path / "v1"
    for controller, knob in (("memory", "memory.limit_in_bytes"), ("cpu", "cpu.cfs_quota_us"), ("pids", "cgroup.procs")):
        (v1 / controller).mkdir(parents=True)
        (v1 / controller / knob).write_text("")
    assert isinstance(detect(v1, "p"), CgroupsV1)
    with pytest.raises(RuntimeError, match="lacks the memory, pids controller"):
        detect(_fake_cgroup2(tmp_path / "no-mem", "cpu io"), "p")
    with pytest.raises(RuntimeError, match="no cgroup v2 hierarchy.*cgroup v1 controller 'memory' is not mounted"):
        detect(tmp_path / "nothing", "p")


def test_limits_are_the_request() -> None:
    config = SandboxConfig()
    assert Limits.of(cpu=2, memory_gib=1, config=config) == Limits(1 << 30, 200_000, 100_000, 512, 100_000)
    assert Limits.of(cpu=0, memory_gib=1, config=config).cpu_burst_us == 0  # no quota, no burst
    assert Limits.of(cpu=0.1, memory_gib=0.25, config=config).pids_max == 64  # the floor
    assert Limits.of(cpu=0.001, memory_gib=1, config=config).cpu_quota_us == 1000  # the kernel's minimum
    assert Limits.of(cpu=1, memory_gib=1, config=SandboxConfig(pids_per_cpu=100, min_pids=10)).pids_max == 100
    assert thread_env(2.5, {"MKL_NUM_THREADS": "1"})["OMP_NUM_THREADS"] == "3"
    assert "MKL_NUM_THREADS" not in thread_env(2.5, {"MKL_NUM_THREADS": "1"}) and thread_env(0, {}) == {}


def test_host_allocations_are_shared_and_deterministic(tmp_path: Path) -> None:
    """Two runners of one task on one host share its subnet; each instance's address follows from its index."""
    config = SandboxConfig(pool="10.213.0.0/23", subnet_prefix=24, uid_base=3_000_000, uid_count=3)
    state = HostState(tmp_path / "state")
    me = os.getpid()
    with state.locked() as st:
        a0, a1, b0 = (st.new_lease(name, me, config) for name in ("a0", "a1", "b0"))
        with pytest.raises(RuntimeError, match="no free sandbox uid in 3000000..3000002"):
            st.new_lease("d0", me, config)
    with state.locked() as st:
        net_a, created = st.join_net(st.leases["a0"], "scope|task-a", config)
        assert created
        again, created = st.join_net(st.leases["a1"], "scope|task-a", config)
        assert not created and again.subnet == net_a.subnet and again.bridge == net_a.bridge
        net_b, _ = st.join_net(st.leases["b0"], "scope|task-b", config)
        assert net_b.subnet != net_a.subnet and net_b.bridge != net_a.bridge
        with pytest.raises(RuntimeError, match="no free /24"):
            st.join_net(st.new_lease("c0", me, SandboxConfig(pool="10.213.0.0/23", uid_base=3_000_100)),
                        "scope|task-c", config)
    assert sorted((a0.uid, a1.uid, b0.uid)) == [3_000_000, 3_000_001, 3_000_002]  # never the same uid twice
    assert [str(instance_address(net_a.subnet, i)) for i in (0, 1)] == ["10.213.0.2", "10.213.0.3"]
    assert str(gateway(net_a.subnet)) == "10.213.0.1"
    assert "10.213.0.3\tinstance-1" in hosts_file(net_a.subnet, 2, 0)
    with state.locked() as st:
        assert st.leave_net(st.leases["a0"]) is None  # a1 still there
        assert st.leave_net(st.leases["a1"]) is not None  # the last: the bridge and subnet go
        assert "scope|task-a" not in st.nets and st.stale() == []
        # publish ports: each lease its own ports of the range, the range's end refused clearly
        pub = SandboxConfig(publish_address="10.252.0.1", publish_sources=("10.252.0.2/32",), publish_ports=(30000, 30002))
        assert st.publish(st.leases["b0"], "10.213.1.2", [8080, 9000], pub) == {8080: 30000, 9000: 30001}
        assert st.publish(st.new_lease("e0", me, SandboxConfig(uid_base=3_000_200)), "10.213.2.2", [8080], pub) == {8080: 30002}
        with pytest.raises(RuntimeError, match="no free port left in the node's publish range 30000-30002"):
            st.publish(st.new_lease("f0", me, SandboxConfig(uid_base=3_000_300)), "10.213.3.2", [8080], pub)
    # the document is shared by every agent of the host, whatever its version: a newer one's fields are no error
    doc = json.loads((tmp_path / "state" / "state.json").read_text())
    doc["leases"]["b0"]["added_by_a_newer_agent"] = 1
    doc["nets"]["scope|task-b"]["also_newer"] = [1]
    (tmp_path / "state" / "state.json").write_text(json.dumps(doc))
    assert HostState(tmp_path / "state").read().leases["b0"].published[0] == ["10.252.0.1", 30000, "10.213.1.2", 8080]
