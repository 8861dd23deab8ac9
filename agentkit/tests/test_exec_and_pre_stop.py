"""What the platform runs inside a running instance (exec probes, pre-stop) runs as the instance: its uid,
no capability, no-new-privs, its namespaces and cgroup; a pre-stop runs before SIGTERM and never past the
grace period; a served instance's host reaches only its published ports' rules."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from capstan_agentkit.sandbox import BwrapExecutor, InstanceSpec, last_record
from capstan_agentkit.sandbox.network import published_rules

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="containment needs root")


def _wait(ex: BwrapExecutor, key: str, state: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while ex.status(key, 0).state != state or (state == "running" and ex.address(key, 0) is None):
        assert time.monotonic() < deadline, f"{key} is {ex.status(key, 0)}"
        time.sleep(0.05)


def test_a_command_run_inside_is_the_instance_without_privileges(executor: BwrapExecutor) -> None:
    executor.start(InstanceSpec(task_id="svc-a", instance_index=0, command="", entrypoint=("sleep", "60"),
                                cpu=1, memory_gib=0.5))
    _wait(executor, "svc-a", "running")
    probe = "id -u; hostname; grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status; cat /proc/1/cmdline | tr '\\0' ' '"
    res = executor.exec("svc-a", 0, ["sh", "-c", probe], 10)
    assert res.exit_code == 0, res.output
    lines = res.output.split("\n")
    uid = int(lines[0])
    assert uid >= 2_000_000  # a leased instance uid, never root
    assert lines[1] == "instance-0"
    status = dict(line.split(":\t") for line in lines[2:5])
    assert int(status["CapEff"], 16) == 0 and int(status["CapBnd"], 16) == 0 and status["NoNewPrivs"] == "1"
    assert "sleep 60" in lines[5] or "bwrap" in lines[5]  # its PID namespace: pid 1 is the sandbox's
    # the exit code and a timeout come back as such
    assert executor.exec("svc-a", 0, ["sh", "-c", "exit 7"], 10).exit_code == 7
    assert executor.exec("svc-a", 0, ["sleep", "30"], 0.5).exit_code == 124
    assert executor.exec("svc-a", 0, ["/no/such/program"], 10).exit_code == 127


def test_nothing_runs_inside_an_instance_that_is_not_running(executor: BwrapExecutor) -> None:
    res = executor.exec("svc-none", 0, ["true"], 5)
    assert res.exit_code != 0 and "not running" in res.output


def test_pre_stop_runs_before_sigterm_and_never_past_the_grace_period(executor: BwrapExecutor) -> None:
    executor.start(InstanceSpec(
        task_id="svc-b", instance_index=0, command="", entrypoint=("sleep", "60"), stop_grace_seconds=1,
        pre_stop=("sh", "-c", "echo draining; sleep 30"), cpu=1, memory_gib=0.5))
    _wait(executor, "svc-b", "running")
    t0 = time.monotonic()
    executor.stop("svc-b", 0)
    _wait(executor, "svc-b", "exited")
    assert time.monotonic() - t0 < 8  # at most the grace for the pre-stop, then the grace after SIGTERM
    lines = [json.loads(raw)["line"] for raw in executor.log_path("svc-b", 0).read_text().splitlines()]
    order = [next(i for i, ln in enumerate(lines) if ln.startswith(p))
             for p in ("stop requested: pre-stop", "draining", "pre-stop ran past the grace period", "stop requested: SIGTERM")]
    assert order == sorted(order)


def test_published_ports_rules_and_the_last_usage_sample(tmp_path: Path) -> None:
    import ipaddress

    rules = published_rules(ipaddress.IPv4Address("10.213.0.1"), [8080, 9000])
    assert "ip saddr 10.213.0.1 tcp dport { 8080, 9000 } accept" in rules and "ip saddr 10.213.0.1 drop" in rules
    with pytest.raises(ValueError):
        published_rules(ipaddress.IPv4Address("10.213.0.1"), [0])
    with pytest.raises(ValueError):
        InstanceSpec(task_id="x", instance_index=0, command="", ports=(70000,))
    spec = InstanceSpec(task_id="x", instance_index=0, command="", pre_stop=("sleep", "1"), ports=(8080,))
    assert InstanceSpec.from_json(spec.to_json()) == spec
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps({"ts_ms": i, "stream": s, "line": str(i)}) + "\n"
                           for i, s in enumerate(["metrics", "stdout", "metrics", "stderr"])))
    assert last_record(log, "metrics") == {"ts_ms": 2, "stream": "metrics", "line": "2"}
    assert last_record(tmp_path / "none", "metrics") is None
