"""The inference agent runs service replicas for real: a real scheduler places them (a WorkloadSubmitted
appended as their owner would), the agent runs each in the bubblewrap sandbox, probes it, reports to the
owner and stops it with pre-stop, SIGTERM, grace and SIGKILL.

The owner of online services is a test double here, ``FakeReplicaOwner``: a gRPC server on the platform's
mutual TLS answering just GetReplicaSpec and ReportReplica (the inference service's side of them is
another component's). The replica is a small Python HTTP server, so probes and the address are real.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from capstan_agentkit.sandbox import testing as sandbox_testing
from capstan_core import credentials
from capstan_core.contracts.common import ResourceSpec
from capstan_core.contracts.scheduling import CAPABILITY_SERVING, WorkloadSubmitted
from capstan_core.grpcutil import GrpcServer
from capstan_core.identity import NODE, Access, current_caller, methods_of
from capstan_core.service import Service, connect_nats
from capstan_core.settings import ServiceSettings
from capstan_core.streams import LOGS_STREAM, event_subject
from capstan_core.testing import admin_channel, admin_store
from capstan_inference.agent.agent import InferenceAgent, parse_run_key, usage
from capstan_inference.agent.probes import ProbeState, run_probe
from capstan_inference.agent.settings import InferenceAgentSettings
from capstan_proto import common_pb2, inference_pb2, inference_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc
from capstan_scheduler.service import DEFINITION as SCHEDULER

SERVICE = inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name

SERVER = r'''
import http.server, os, signal, sys, time

def on_term(*_):
    with open("/opt/ml/output/term", "w") as f:
        f.write(repr(time.time()))
    if os.environ.get("IGNORE_TERM") != "1":
        sys.exit(0)

signal.signal(signal.SIGTERM, on_term)

class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health":
            code, body = (503, b"draining") if os.path.exists("/tmp/unready") else (200, b"ok")
        elif self.path == "/model":
            try:
                open("/data/model/new-file", "w").write("x")
                writable = "rw"
            except OSError:
                writable = "ro"
            code, body = 200, (open("/data/model/weights.txt").read() + " " + writable).encode()
        else:
            code, body = 404, b"no"
        self.send_response(code)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        print("served", self.path, flush=True)

print("listening on", os.environ["PORT"], flush=True)
http.server.HTTPServer(("0.0.0.0", int(os.environ["PORT"])), H).serve_forever()
'''


class FakeReplicaOwner(inference_pb2_grpc.InferenceServicer):
    """A test double of the owner of online services: the replicas' specs, the reports it got."""

    def __init__(self) -> None:
        self.specs: dict[str, inference_pb2.ReplicaSpec] = {}
        self.reports: list[inference_pb2.ReportReplicaRequest] = []
        self.callers: set[str] = set()

    async def GetReplicaSpec(self, req: inference_pb2.GetReplicaSpecRequest, context: grpc.aio.ServicerContext) -> inference_pb2.ReplicaSpec:  # noqa: N802
        spec = self.specs.get(req.replica_id)
        if spec is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"replica {req.replica_id} does not exist")
        caller = current_caller()
        self.callers.add(caller.role)
        if caller.node_id != spec.node_id:  # type: ignore[union-attr]
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "not placed on your node")
        return spec  # type: ignore[return-value]

    async def ReportReplica(self, req: inference_pb2.ReportReplicaRequest, context: grpc.aio.ServicerContext) -> inference_pb2.ReportReplicaResponse:  # noqa: N802
        self.reports.append(req)
        return inference_pb2.ReportReplicaResponse()

    def states(self, rid: str) -> list[str]:
        out: list[str] = []
        for r in self.reports:
            if r.replica_id == rid and (not out or out[-1] != r.state):
                out.append(r.state)
        return out

    async def until(self, rid: str, pred: Callable[[inference_pb2.ReportReplicaRequest], bool],
                    timeout: float = 30) -> inference_pb2.ReportReplicaRequest:
        """The first report of ``rid`` (from the ``start``-th on) satisfying ``pred``."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for r in self.reports[seen:]:
                if r.replica_id == rid and pred(r):
                    return r
            seen = len(self.reports)
            assert time.monotonic() < deadline, f"no such report of {rid}; got {self.states(rid)}"
            await asyncio.sleep(0.05)


@dataclass
class Platform:
    sched: Service
    s: scheduler_pb2_grpc.SchedulerStub
    owner: FakeReplicaOwner
    owner_addr: str
    tmp: Path
    nats_url: str
    secrets: Path
    rg: str = ""
    agents: list[InferenceAgent] = field(default_factory=list)

    async def agent(self, **settings_: Any) -> InferenceAgent:
        token = await self.s.CreateJoinToken(scheduler_pb2.CreateJoinTokenRequest(resource_group_id=self.rg))
        settings = InferenceAgentSettings(
            nats_url=self.nats_url, scheduler_addr=self.sched.address, inference_addr=self.owner_addr,
            scheduler_bootstrap_addr=self.sched.bootstrap_address, ca_file=self.secrets / "ca.crt",
            join_token=token.token, resource_group=self.rg, node_name="server-1", agent_dir=self.tmp / "agent",
            data_dir=self.tmp, node_cpu=4, node_memory_gib=8, reconcile_s=0.2, usage_report_s=1,
            **{**sandbox_testing.agent_settings(), **settings_})
        agent = InferenceAgent(settings)
        await agent.start()
        self.agents.append(agent)
        return agent

    async def place(self, spec: inference_pb2.ReplicaSpec) -> None:
        """The owner's part: the spec it will answer, and the workload for the scheduler to place."""
        self.owner.specs[spec.replica_id] = spec
        async with admin_store(self.nats_url, self.secrets) as store:
            await store.append(event_subject("service", spec.replica_id), [WorkloadSubmitted(
                workload_id=spec.replica_id, kind="service", capability=CAPABILITY_SERVING, resource_group_id=self.rg,
                resources=ResourceSpec(cpu=spec.resources.cpu, memory_gib=spec.resources.memory_gib), at_ms=1)],
                expected_seq=None)

    def spec(self, agent: InferenceAgent, rid: str, **fields: Any) -> inference_pb2.ReplicaSpec:
        code = self.tmp / "code"
        code.mkdir(exist_ok=True)
        (code / "server.py").write_text(SERVER)
        model = self.tmp / "model"
        model.mkdir(exist_ok=True)
        (model / "weights.txt").write_text("tiny-weights")
        os.chmod(model, 0o755)
        base: dict[str, Any] = dict(
            replica_id=rid, service_id="ms-test0001", version_id="v1", node_id=agent.node_id, desired_state="Running",
            command=["python3", "/opt/ml/code/server.py"], port=8080, model_dir=str(model), code_dir=str(code),
            resources=common_pb2.Resources(cpu=0.5, memory_gib=0.5), grace_period_s=5, network_mode="isolated",
            generation=1,
        )
        base.update(fields)
        return inference_pb2.ReplicaSpec(**base)

    def instance_dir(self, agent: InferenceAgent, rid: str, run: int = 0) -> Path:
        for key, index in agent.executor.list_instances():
            parsed = parse_run_key(key)
            if parsed is not None and parsed[0] == rid and parsed[2] == run:
                return agent.executor.log_path(key, index).parent
        raise AssertionError(f"no run {run} of {rid}")


@pytest.fixture
async def platform(tmp_path: Path, nats_server: Any, secrets_dir: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Platform]:
    monkeypatch.setenv("CAPSTAN_SANDBOX_METRICS_S", "0.5")  # the runners sample usage often
    os.chmod(tmp_path, 0o755)  # the sandbox's uid reads the code and model directories below it
    sched = Service(SCHEDULER, ServiceSettings(data_dir=tmp_path / "s", nats_url=nats_server.url, secrets_dir=secrets_dir))
    await sched.start()
    owner = FakeReplicaOwner()
    server = GrpcServer("inference", "127.0.0.1:0", credentials.load(secrets_dir, "inference").tls,
                        Access(methods_of(SERVICE, ["GetReplicaSpec", "ReportReplica"], [NODE])))
    server.add(inference_pb2_grpc.add_InferenceServicer_to_server, owner, [SERVICE])
    await server.start()
    ch = admin_channel(sched.address, "scheduler", secrets_dir)
    s = scheduler_pb2_grpc.SchedulerStub(ch)
    p = Platform(sched, s, owner, server.address, tmp_path, nats_server.url, secrets_dir)
    p.rg = (await s.CreateResourceGroup(scheduler_pb2.CreateResourceGroupRequest(name="serving"))).id
    yield p
    for agent in p.agents:
        await agent.stop()
        for key in agent.executor.list_instances():
            agent.executor.stop(*key)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(
        a.executor.status(*k).state == "running" for a in p.agents for k in a.executor.list_instances()
    ):
        await asyncio.sleep(0.1)
    await ch.close()
    await server.stop()
    await sched.stop()


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 - a test's own http:// URL
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


async def _exec(agent: InferenceAgent, p: Platform, rid: str, run: int, argv: list[str]) -> int:
    key = p.instance_dir(agent, rid, run).name.rsplit("-", 1)[0]
    return (await asyncio.to_thread(agent.executor.exec, key, 0, argv, 10)).exit_code


async def test_a_replica_runs_probed_reported_restarted_and_stopped_with_pre_stop(platform: Platform) -> None:
    p = platform
    agent = await p.agent()
    rid = "rep-flow"
    probe = inference_pb2.Probe
    await p.place(p.spec(
        agent, rid,
        startup_probe=probe(kind="tcp", period_s=1, failure_threshold=30),
        readiness_probe=probe(kind="http", path="/health", period_s=1, failure_threshold=1),
        liveness_probe=probe(kind="exec", command=["test", "!", "-e", "/tmp/dead"], period_s=1, failure_threshold=2),
        pre_stop=["sh", "-c", "python3 -c 'import time; print(repr(time.time()))' > /opt/ml/output/prestop; sleep 0.5"],
    ))
    ready = await p.owner.until(rid, lambda r: r.state == "Ready")
    assert p.owner.states(rid)[0] == "Starting" and ready.generation == 1
    host, port = ready.address.rsplit(":", 1)
    assert port == "8080" and host.startswith("10.")  # the instance's own address on its task bridge
    # the model is there, read-only: the server's write fails inside the sandbox
    assert _get(f"http://{ready.address}/model") == (200, "tiny-weights ro")
    assert not (p.tmp / "model" / "new-file").exists()
    assert "svc:" not in "".join(p.owner.callers) and p.owner.callers == {"node"}  # the node's own certificate

    # the host reaches only the published port: another server inside the sandbox answers there, not to the host
    assert await _exec(agent, p, rid, 0, ["sh", "-c", "python3 -m http.server 9099 >/dev/null 2>&1 &"]) == 0
    inside = ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9099/', timeout=2)"]
    deadline = time.monotonic() + 10
    while await _exec(agent, p, rid, 0, inside) != 0:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)
    with pytest.raises(OSError):
        socket.create_connection((host, 9099), timeout=2).close()

    # usage samples ride on the reports (the autoscaler reads them)
    await p.owner.until(rid, lambda r: r.state == "Ready" and r.memory_usage_gib > 0)

    # readiness: an exec inside the sandbox makes /health answer 503 -> NotReady; back -> Ready
    assert await _exec(agent, p, rid, 0, ["touch", "/tmp/unready"]) == 0
    not_ready = await p.owner.until(rid, lambda r: r.state == "NotReady")
    assert "503" in not_ready.message
    assert await _exec(agent, p, rid, 0, ["rm", "/tmp/unready"]) == 0
    await p.owner.until(rid, lambda r: r.state == "Ready" and p.owner.reports.index(r) > p.owner.reports.index(not_ready))

    # liveness (exec, inside the sandbox) fails twice -> reported, restarted as a new run, Ready again
    assert await _exec(agent, p, rid, 0, ["touch", "/tmp/dead"]) == 0
    dead = await p.owner.until(rid, lambda r: "liveness probe failed" in r.message)
    assert dead.state == "NotReady" and "restarting" in dead.message
    restarted = await p.owner.until(rid, lambda r: r.state == "Starting" and r.message.startswith("restarted"))
    await p.owner.until(rid, lambda r: r.state == "Ready" and p.owner.reports.index(r) > p.owner.reports.index(restarted))
    assert (p.instance_dir(agent, rid, 0) / "exit_code").exists()
    run1 = p.instance_dir(agent, rid, 1)

    # its output went to the log stream as capstan.log.<replica>.0 (read as the operator: agents only publish)
    nc = await connect_nats(p.nats_url, "test-logs", credentials.load_nats(p.secrets, "admin"))
    try:
        msg = await nc.jetstream().get_last_msg(LOGS_STREAM, f"capstan.log.{rid}.0")
        assert json.loads(msg.data)["line"]
    finally:
        await nc.close()

    # stop: pre-stop inside the sandbox first, then SIGTERM (the server records it), then Stopped
    p.owner.specs[rid] = p.spec(agent, rid, desired_state="Stopped")
    stopped = await p.owner.until(rid, lambda r: r.state == "Stopped")
    assert stopped.generation == 1
    pre, term = float((run1 / "output" / "prestop").read_text()), float((run1 / "output" / "term").read_text())
    assert pre <= term
    log = (run1 / "log.jsonl").read_text()
    assert "pre-stop" in log and "SIGTERM" in log and "grace period over" not in log


async def test_a_stopped_replica_starts_again_when_wanted_running(platform: Platform) -> None:
    p = platform
    agent = await p.agent()
    rid = "rep-again"
    await p.place(p.spec(agent, rid))
    await p.owner.until(rid, lambda r: r.state == "Ready")
    p.owner.specs[rid] = p.spec(agent, rid, desired_state="Stopped")
    stopped = await p.owner.until(rid, lambda r: r.state == "Stopped")
    p.owner.specs[rid] = p.spec(agent, rid)  # the same generation, Running again (a service started again)
    again = await p.owner.until(rid, lambda r: r.state == "Starting" and r.message == "started again")
    await p.owner.until(rid, lambda r: r.state == "Ready" and p.owner.reports.index(r) > p.owner.reports.index(again))
    assert p.owner.reports.index(stopped) < p.owner.reports.index(again)
    assert {k for k, _ in agent.executor.list_instances() if k.startswith(rid)} == {f"{rid}.1.0", f"{rid}.1.1"}


async def test_a_replica_ignoring_sigterm_is_killed_after_the_grace_period(platform: Platform) -> None:
    p = platform
    agent = await p.agent()
    rid = "rep-stubborn"
    await p.place(p.spec(agent, rid, env={"IGNORE_TERM": "1"}, grace_period_s=1,
                         readiness_probe=inference_pb2.Probe(kind="http", path="/health", period_s=1)))
    await p.owner.until(rid, lambda r: r.state == "Ready")
    p.owner.specs[rid] = p.spec(agent, rid, desired_state="Stopped", env={"IGNORE_TERM": "1"}, grace_period_s=1)
    t0 = time.monotonic()
    await p.owner.until(rid, lambda r: r.state == "Stopped")
    assert time.monotonic() - t0 < 10
    run0 = p.instance_dir(agent, rid, 0)
    assert (run0 / "output" / "term").exists()  # it got SIGTERM and ignored it
    log = (run0 / "log.jsonl").read_text()
    assert "grace period over: SIGKILL" in log and int((run0 / "exit_code").read_text()) == 137


async def test_a_replica_that_exits_is_reported_with_its_code_and_one_its_owner_forgot_is_stopped(platform: Platform) -> None:
    p = platform
    agent = await p.agent()
    await p.place(p.spec(agent, "rep-exits", command=["python3", "-c", "import sys; sys.exit(3)"]))
    exited = await p.owner.until("rep-exits", lambda r: r.state == "Exited")
    assert exited.exit_code == 3
    await p.place(p.spec(agent, "rep-gone"))
    await p.owner.until("rep-gone", lambda r: r.state == "Ready")
    # a rebuild (a new generation): the old run leaves, a new one starts and reports under the new generation
    p.owner.specs["rep-gone"] = p.spec(agent, "rep-gone", generation=2)
    await p.owner.until("rep-gone", lambda r: r.state == "Ready" and r.generation == 2)
    keys = {k for k, _ in agent.executor.list_instances() if k.startswith("rep-gone.")}
    assert keys == {"rep-gone.1.0", "rep-gone.2.0"}
    assert agent.executor.status("rep-gone.1.0", 0).state == "exited"
    del p.owner.specs["rep-gone"]  # NOT_FOUND from now on: whatever runs for it stops
    deadline = time.monotonic() + 20
    while agent.executor.status("rep-gone.2.0", 0).state != "exited":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)


async def test_probes_of_each_kind_succeed_and_fail_as_they_should(tmp_path: Path) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = (await reader.readline()).decode()
        status = "200 OK" if " /ok " in line else "503 Unavailable"
        writer.write(f"HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    closed = await asyncio.start_server(handle, "127.0.0.1", 0)
    closed_port = closed.sockets[0].getsockname()[1]
    closed.close()
    await closed.wait_closed()

    async def exec_in(argv: list[str], timeout: float) -> tuple[int, str]:
        return (0, "") if argv == ["true"] else (1, "boom")

    addr = f"127.0.0.1:{port}"
    Probe = inference_pb2.Probe
    try:
        assert (await run_probe(Probe(kind="http", path="/ok"), addr, exec_in)).ok
        bad = await run_probe(Probe(kind="http", path="/bad"), addr, exec_in)
        assert not bad.ok and bad.detail == "GET /bad -> 503"
        assert (await run_probe(Probe(kind="tcp"), addr, exec_in)).ok
        refused = await run_probe(Probe(kind="tcp", port=closed_port), addr, exec_in)
        assert not refused.ok and str(closed_port) in refused.detail
        assert not (await run_probe(Probe(kind="http", path="/ok", port=closed_port), addr, exec_in)).ok
        assert (await run_probe(Probe(kind="exec", command=["true"]), addr, exec_in)).ok
        failed = await run_probe(Probe(kind="exec", command=["false"]), addr, exec_in)
        assert not failed.ok and "exit 1" in failed.detail
    finally:
        server.close()
        await server.wait_closed()
    # thresholds: N consecutive failures fail it, M consecutive successes pass it
    st = ProbeState(Probe(kind="tcp", failure_threshold=2, success_threshold=2, period_s=1), started=0)
    from capstan_inference.agent.probes import Outcome

    st.record(Outcome(False, "x"), 1)
    assert st.passing is None
    st.record(Outcome(False, "x"), 2)
    assert st.passing is False and st.next_at == 3
    st.record(Outcome(True, "ok"), 3)
    assert st.passing is False
    st.record(Outcome(True, "ok"), 4)
    assert st.passing is True


def test_the_inference_agent_does_not_import_the_trainer() -> None:
    code = ("import sys, capstan_inference.agent.agent, capstan_inference.agent.__main__; "
            "bad = sorted(m for m in sys.modules if m.startswith('capstan_trainer')); "
            "print(bad); sys.exit(1 if bad else 0)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


def test_usage_samples_carry_the_mean_gpu_utilisation_of_the_replicas_cards() -> None:
    """What the agent reports for autoscaling, read from the runner's sample (``gpus`` from nvidia-smi)."""
    line = json.dumps({"cpu_cores": 1.5, "memory_bytes": 3 << 30, "gpus": [
        {"index": 0, "gpu_percent": 80.0, "memory_bytes": 1}, {"index": 3, "gpu_percent": 40.0, "memory_bytes": 1}]})
    assert usage(line) == (1.5, 3.0, 60.0)
    assert usage(json.dumps({"cpu_cores": 0.5, "memory_bytes": 1 << 29})) == (0.5, 0.5, None)  # no cards
    assert usage("not json") == usage(json.dumps({"cpu_cores": "x"})) == (0.0, 0.0, None)


async def test_a_node_publishing_to_other_hosts_reports_where_the_gateways_reach_the_replica(
        platform: Platform) -> None:
    """With a publish address, the agent reports the node's published port (the gateways may run on
    another host), and that host reaches the replica's server there; the probes still use the
    instance's own address on this host."""
    p = platform
    with sandbox_testing.other_hosts(1) as [gateway_host]:
        agent = await p.agent(sandbox_publish_address=gateway_host.node_side,
                              sandbox_publish_sources=f"{gateway_host.address}/32")
        await p.place(p.spec(agent, "rep-pub", readiness_probe=inference_pb2.Probe(kind="http", path="/health",
                                                                                   period_s=1)))
        ready = await p.owner.until("rep-pub", lambda r: r.state == "Ready")
        host, port = ready.address.rsplit(":", 1)
        assert host == gateway_host.node_side and 30000 <= int(port) <= 32767
        got = await asyncio.to_thread(sandbox_testing.http_get, f"http://{ready.address}/health", gateway_host)
        assert got == "200 ok"
        await agent.stop()
        for key in agent.executor.list_instances():
            agent.executor.stop(*key)
        deadline = time.monotonic() + 15
        while any(agent.executor.status(*k).state == "running" for k in agent.executor.list_instances()):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
