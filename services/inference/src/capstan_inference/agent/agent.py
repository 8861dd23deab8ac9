"""The inference agent: a node of capability "serving" that runs the service replicas the scheduler
placed on it, level-triggered like every node agent (``capstan_agentkit.agent.NodeAgent``).

Each step: the node's ``service`` assignments (scheduler), each replica's spec (``GetReplicaSpec``, from
the owner of online services), then per replica:

- desired Running: start it in the sandbox when it does not run (its argv, env, image, resources as hard
  limits, network mode; ``model_dir`` bound read-only at ``/data/model``, ``code_dir`` at ``/opt/ml/code``),
  run its probes (startup first; then readiness and liveness) and report Starting -> Ready / NotReady
  with the address the gateway reaches it at; a failed startup or liveness probe restarts it (a new run,
  reported); a replica whose process exits is reported Exited with its code (the owner decides what next);
- desired Stopped: stop it (the runner runs pre-stop inside the sandbox, then SIGTERM, waits up to the
  grace period, SIGKILL) and report Stopped once it has exited; desired Running again later starts a new
  run (an Exited replica runs again only with a new generation: retrying is its owner's call); a replica
  the scheduler no longer assigns here (withdrawn, or moved after its node was lost) or one its owner no
  longer knows (NOT_FOUND) is stopped the same way without a report (no longer this node's to report on);
- a newer ``generation`` (a rebuild) replaces the older run once that one has exited.

Its output goes to ``capstan.log.<replica_id>.0`` (CAPSTAN_LOGS), and every ``usage_report_s`` the last
CPU / memory sample of the runner rides on a ReportReplica for the autoscaler.

Each run of a replica is an instance directory ``<replica>.<generation>.<run>``, so a restarted agent
re-adopts what runs and marks in the directory (``.reported``, ``.restart``) say what was already done.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from capstan_agentkit.agent import NodeAgent
from capstan_agentkit.gpus import gpu_env
from capstan_agentkit.images import image_rootfs
from capstan_agentkit.sandbox import Executor, InstanceSpec, last_record
from capstan_agentkit.sandbox.spec import METRICS_STREAM, Mount
from capstan_agentkit.shipper import ship
from capstan_core.contracts.scheduling import CAPABILITY_SERVING
from capstan_proto import inference_pb2, inference_pb2_grpc, scheduler_pb2

from .probes import ProbeState, configured
from .settings import InferenceAgentSettings

log = logging.getLogger(__name__)
RECONCILE = "inference-agent.reconcile"
REPORTED_MARK = ".reported"  # the run's final state (Exited / Stopped) was reported
RESTART_MARK = ".restart"  # the run is being stopped to start the next one (a failed probe)
EXIT_START_FAILED = 126  # it could not be started (its image or model directory is missing): never ran
MODEL_MOUNT = "/data/model"
CODE_MOUNT = "/opt/ml/code"
DEFAULT_GRACE_S = 30


def _published(spec: inference_pb2.ReplicaSpec) -> tuple[int, ...]:
    """What the host may reach of the replica: the server's port and its HTTP / TCP probes' ports."""
    ports = {spec.port} if spec.port else set()
    for p in (spec.startup_probe, spec.readiness_probe, spec.liveness_probe):
        if p.kind in ("http", "tcp") and p.port:
            ports.add(p.port)
    return tuple(sorted(ports))


def run_key(replica_id: str, generation: int, run: int) -> str:
    return f"{replica_id}.{generation}.{run}"


def parse_run_key(key: str) -> tuple[str, int, int] | None:
    """(replica id, generation, run) of an instance directory's key; None for anything else."""
    parts = key.rsplit(".", 2)
    if len(parts) != 3 or not parts[0] or not parts[1].isdigit() or not parts[2].isdigit():
        return None
    return parts[0], int(parts[1]), int(parts[2])


@dataclass
class Run:
    """What the agent keeps in memory about a replica's current run (rebuilt from scratch after a restart)."""

    key: str
    started: float = field(default_factory=time.monotonic)
    startup: ProbeState | None = None
    readiness: ProbeState | None = None
    liveness: ProbeState | None = None



def usage(line: str) -> tuple[float, float, float | None]:
    """Cores, GiB and the mean GPU % of the cards (None without cards) in one of the runner's usage
    samples (``METRICS_STREAM``); a sample that cannot be read counts as none."""
    try:
        values = json.loads(line)
        cards = [float(c["gpu_percent"]) for c in values.get("gpus") or ()]
        return (float(values["cpu_cores"]), float(values["memory_bytes"]) / (1 << 30),
                sum(cards) / len(cards) if cards else None)
    except (ValueError, TypeError, KeyError, AttributeError):
        return 0.0, 0.0, None

class InferenceAgent(NodeAgent):
    agent_kind = "inference"
    capabilities = (CAPABILITY_SERVING,)
    loop_name = RECONCILE

    def __init__(self, settings: InferenceAgentSettings, executor: Executor | None = None) -> None:
        super().__init__(settings, executor)
        self.settings: InferenceAgentSettings = settings
        self._runs: dict[str, Run] = {}  # instance key -> its probes
        self._last: dict[str, tuple[object, ...]] = {}  # replica id -> the last report sent (without usage)
        self._usage_at: dict[str, float] = {}  # replica id -> when usage was last reported
        self._cards: dict[str, list[tuple[int, int]]] = {}

    def connect(self) -> None:
        self.inference = inference_pb2_grpc.InferenceStub(self.channel(self.settings.inference_addr, "inference"))

    # -- one reconcile step -----------------------------------------------------------
    async def step(self) -> None:
        resp = await self.scheduler.ListNodeAssignments(
            scheduler_pb2.ListNodeAssignmentsRequest(node_id=self.node_id), timeout=10)
        assigned = {a.workload_id for a in resp.items if a.workload_kind == "service"}
        self._cards = {a.workload_id: [(c.index, c.tenths) for c in a.cards] for a in resp.items}
        local: dict[str, list[tuple[int, int, str]]] = {}
        for key, _index in self.executor.list_instances():
            if (parsed := parse_run_key(key)) is not None:
                local.setdefault(parsed[0], []).append((parsed[1], parsed[2], key))
        specs: dict[str, inference_pb2.ReplicaSpec | None] = {}
        unread: set[str] = set(assigned)

        async def read(rid: str) -> None:
            async with self._guard.aitem(f"replica {rid}"):
                specs[rid] = await self._get_spec(rid)
                unread.discard(rid)

        await asyncio.gather(*(read(rid) for rid in sorted(assigned)))

        async def converge(rid: str) -> None:
            async with self._guard.aitem(f"replica {rid}"):
                runs = sorted(local.get(rid, []))
                spec = specs.get(rid)
                if rid in assigned and spec is not None and spec.desired_state != "Stopped":
                    await self._run(spec, runs)
                else:
                    await self._stop(rid, spec, runs)

        await asyncio.gather(*(converge(rid) for rid in sorted((assigned | set(local)) - unread)))

    async def _get_spec(self, replica_id: str) -> inference_pb2.ReplicaSpec | None:
        try:
            return await self.inference.GetReplicaSpec(inference_pb2.GetReplicaSpecRequest(replica_id=replica_id),
                                                       timeout=10)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return None  # gone: whatever runs for it stops
            raise

    # -- desired Stopped, or gone ---------------------------------------------------------
    async def _stop(self, rid: str, spec: inference_pb2.ReplicaSpec | None, runs: list[tuple[int, int, str]]) -> None:
        pending = False
        for _gen, _run, key in runs:
            st = self.executor.status(key, 0)
            if st.state == "running":
                self.executor.stop(key, 0)  # pre-stop, SIGTERM, grace, SIGKILL: the runner's
                self.watch(key, st.pid)
                pending = True
            await self._ship(rid, key)
        if pending:
            return
        if not runs:  # asked to stop before it ever started here
            if spec is not None:
                await self._report(rid, spec.generation, "Stopped", message="stopped before it started")
            return
        mark = self._dir(runs[-1][2]) / REPORTED_MARK
        if spec is not None and (mark.read_text() if mark.exists() else "") != "Stopped":
            await self._report(rid, spec.generation, "Stopped", message="stopped")
        mark.write_text("Stopped")
        self._forget(rid, runs)

    def _forget(self, rid: str, runs: list[tuple[int, int, str]]) -> None:
        for _g, _r, key in runs:
            self._runs.pop(key, None)
            self.unwatch(key)
        self._last.pop(rid, None)
        self._usage_at.pop(rid, None)

    # -- desired Running ------------------------------------------------------------------
    async def _run(self, spec: inference_pb2.ReplicaSpec, runs: list[tuple[int, int, str]]) -> None:
        rid, gen = spec.replica_id, spec.generation
        leaving = False
        for key in [key for g, _r, key in runs if g != gen]:  # a rebuild: the older generation leaves first
            if (st := self.executor.status(key, 0)).state == "running":
                self.executor.stop(key, 0)
                self.watch(key, st.pid)
                leaving = True
            await self._ship(rid, key)
        if leaving:
            return  # the new generation starts once the old one has exited (it may hold the host's port)
        mine = [(r, key) for g, r, key in runs if g == gen]
        if not mine:
            await self._start(spec, run_key(rid, gen, 0), "starting")
            return
        run, key = mine[-1]
        st = self.executor.status(key, 0)
        idir = self._dir(key)
        await self._ship(rid, key)
        if st.state == "absent":
            await self._start(spec, key, "starting")
        elif st.state == "exited":
            self._runs.pop(key, None)
            reported = (idir / REPORTED_MARK).read_text() if (idir / REPORTED_MARK).exists() else ""
            if (idir / RESTART_MARK).exists():
                reason = (idir / RESTART_MARK).read_text()
                await self._start(spec, run_key(rid, gen, run + 1), f"restarted: {reason}")
            elif reported == "Stopped":  # stopped, and now wanted running again (a service started again)
                await self._start(spec, run_key(rid, gen, run + 1), "started again")
            elif not reported:
                code = st.exit_code if st.exit_code is not None else 0
                await self._report(rid, gen, "Exited", exit_code=code,
                                   message=st.reason or f"the server exited with code {code}")
                (idir / REPORTED_MARK).write_text("Exited")
        elif not (idir / RESTART_MARK).exists():
            self.watch(key, st.pid)
            await self._probe(spec, key)

    async def _start(self, spec: inference_pb2.ReplicaSpec, key: str, why: str) -> None:
        rid = spec.replica_id
        try:
            instance = self._spec(spec, key)
        except (ValueError, FileNotFoundError) as e:
            idir = self._dir(key)
            idir.mkdir(parents=True, exist_ok=True)
            await self._report(rid, spec.generation, "Exited", exit_code=EXIT_START_FAILED,
                               message=f"the replica could not be started: {e}")
            (idir / REPORTED_MARK).write_text("Exited")
            return
        await asyncio.to_thread(self.executor.start, instance)
        self._runs[key] = self._new_run(spec, key)
        log.info("replica %s (generation %d): %s", rid, spec.generation, why)
        await self._report(rid, spec.generation, "Starting", message=why)

    @staticmethod
    def _new_run(spec: inference_pb2.ReplicaSpec, key: str) -> Run:
        r = Run(key)
        for name in ("startup", "readiness", "liveness"):
            p = getattr(spec, f"{name}_probe")
            if spec.HasField(f"{name}_probe") and configured(p):
                setattr(r, name, ProbeState(p, r.started))
        return r

    def _spec(self, spec: inference_pb2.ReplicaSpec, key: str) -> InstanceSpec:
        if not spec.command:
            raise ValueError("the replica has no command")
        mounts = []
        for source, target in ((spec.model_dir, MODEL_MOUNT), (spec.code_dir, CODE_MOUNT)):
            if source:
                if not Path(source).is_dir():
                    raise FileNotFoundError(f"{target}: {source} is not a directory on this node")
                mounts.append(Mount(source=source, target=target, readonly=True))
        rootfs = image_rootfs(self.settings.storage_root, spec.image)
        env = {**dict(spec.env), "CAPSTAN_REPLICA_ID": spec.replica_id, "CAPSTAN_SERVICE_ID": spec.service_id,
               "PORT": str(spec.port), **gpu_env(self._cards.get(spec.replica_id, []),
                                                  simulated=self.capacity.simulated_gpus)}
        r = spec.resources
        return InstanceSpec(
            task_id=key, instance_index=0, command="", entrypoint=tuple(spec.command), env=env,
            stop_grace_seconds=spec.grace_period_s or DEFAULT_GRACE_S, cpu=r.cpu, memory_gib=r.memory_gib,
            network=spec.network_mode or "isolated", mounts=tuple(mounts), rootfs=str(rootfs or ""),
            pre_stop=tuple(spec.pre_stop), ports=_published(spec),
        )

    # -- probes and reports -------------------------------------------------------------------
    async def _probe(self, spec: inference_pb2.ReplicaSpec, key: str) -> None:
        rid = spec.replica_id
        run = self._runs.get(key)
        if run is None:  # re-adopted after an agent restart: its probes start over
            run = self._runs[key] = self._new_run(spec, key)
        host = self.executor.address(key, 0)
        if host is None:
            return  # its sandbox is still being set up
        address = f"{host}:{spec.port}"  # where this host probes it
        # where the gateways reach it: the node's published port when the node publishes to other hosts
        served = self.executor.published(key, 0).get(spec.port) or address

        async def exec_in(argv: list[str], timeout: float) -> tuple[int, str]:
            res = await asyncio.to_thread(self.executor.exec, key, 0, argv, timeout)
            return res.exit_code, res.output

        now = time.monotonic()
        if run.startup is not None and run.startup.passing is not True:
            if run.startup.due(now):
                await run.startup.check(address, exec_in)
            if run.startup.passing is False:
                await self._restart(spec, key, served, f"startup probe failed: {run.startup.detail}")
                return
            await self._report(rid, spec.generation, "Starting", address=served, message=run.startup.detail)
            return
        if run.liveness is not None and run.liveness.due(now):
            await run.liveness.check(address, exec_in)
            if run.liveness.passing is False:
                await self._restart(spec, key, served, f"liveness probe failed: {run.liveness.detail}")
                return
        state, message = "Ready", ""
        if run.readiness is not None:
            if run.readiness.due(now):
                await run.readiness.check(address, exec_in)
            if run.readiness.passing is None:
                state, message = "Starting", run.readiness.detail
            elif run.readiness.passing is False:
                state, message = "NotReady", f"readiness probe: {run.readiness.detail}"
        await self._report(rid, spec.generation, state, address=served, message=message, usage_of=key)

    async def _restart(self, spec: inference_pb2.ReplicaSpec, key: str, address: str, reason: str) -> None:
        """A failed startup or liveness probe: the run is stopped (as any stop: pre-stop, SIGTERM, grace)
        and the next one starts once it has exited."""
        log.warning("replica %s: %s; restarting", spec.replica_id, reason)
        (self._dir(key) / RESTART_MARK).write_text(reason)
        await self._report(spec.replica_id, spec.generation, "NotReady", address=address, message=f"{reason}; restarting")
        self.executor.stop(key, 0)
        self._runs.pop(key, None)

    async def _report(self, rid: str, generation: int, state: str, *, address: str = "", exit_code: int = 0,
                      message: str = "", usage_of: str | None = None) -> None:
        """Report what the replica does; a report equal to the last one is sent again only to carry a fresh
        usage sample (every ``usage_report_s``)."""
        now = time.monotonic()
        what = (generation, state, address, exit_code, message)
        fresh = usage_of is not None and now - self._usage_at.get(rid, 0.0) >= self.settings.usage_report_s
        if self._last.get(rid) == what and not fresh:
            return
        cpu, memory, gpu = 0.0, 0.0, None
        if usage_of is not None and (sample := last_record(self.executor.log_path(usage_of, 0), METRICS_STREAM)):
            cpu, memory, gpu = usage(sample["line"])
        await self.inference.ReportReplica(inference_pb2.ReportReplicaRequest(
            replica_id=rid, state=state, address=address, exit_code=exit_code, message=message[:1000],
            generation=generation, cpu_usage=cpu, memory_usage_gib=memory, gpu_percent=gpu), timeout=15)
        self._last[rid] = what
        if usage_of is not None:
            self._usage_at[rid] = now

    # -- helpers ----------------------------------------------------------------------------
    def _dir(self, key: str) -> Path:
        return self.executor.log_path(key, 0).parent

    async def _ship(self, rid: str, key: str) -> None:
        await ship(self.js, rid, 0, self.executor.log_path(key, 0), key)

