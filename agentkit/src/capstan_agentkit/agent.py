"""The loop every node agent runs: join the node's resource group (deploy checks, heartbeats, periodic
health checks), hear wake-ups on ``capstan.wake.agents``, and converge what runs locally with what its
owners say, one level-triggered step at a time. A kind of agent (trainer, inference) gives its
capabilities, the channels to its owners and its :meth:`NodeAgent.step`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from abc import ABC, abstractmethod
from typing import Any

import grpc
from nats.aio.client import Client as NatsClient

from capstan_core import grpcutil
from capstan_core.capacity import detect
from capstan_core.loops import LoopGuard, run_steps
from capstan_core.metrics import Counters
from capstan_core.nodeauth import NodeCredentials
from capstan_core.projection import cancel_and_wait
from capstan_core.service import connect_nats
from capstan_core.streams import WAKE_AGENTS
from capstan_proto import scheduler_pb2_grpc

from .healthcheck import Check, basic_checks
from .membership import NodeMembership
from .sandbox import BwrapExecutor, Executor
from .settings import NodeAgentSettings

log = logging.getLogger(__name__)
# A wake-up needs no message kept: excess ones are dropped (the loop is level-triggered), never queued up.
WAKE_PENDING_LIMIT = 64


class NodeAgent(ABC):
    agent_kind: str = ""  # as the node joins: "trainer" | "inference"
    capabilities: tuple[str, ...] = ()  # what it can run (contracts.scheduling.CAPABILITIES)
    loop_name: str = "agent.reconcile"

    def __init__(self, settings: NodeAgentSettings, executor: Executor | None = None) -> None:
        self.settings = settings
        self.executor = executor or BwrapExecutor(settings.agent_dir / "instances", settings.sandbox_config())
        self._nc: NatsClient | None = None
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._channels: list[grpc.aio.Channel] = []
        # Runners being watched for their exit (a pidfd each, on the event loop): an instance that ends
        # wakes the loop at once instead of at the next timer tick.
        self._watched: dict[Any, int] = {}
        # The agent's own counters (it serves no RPC): reconcile steps, failed steps, instances set aside.
        self.counters = Counters()
        self._guard = LoopGuard(self.loop_name, self.counters)
        self.capacity = detect(settings.node_cpu, settings.node_memory_gib, settings.node_gpus)
        # deploy and periodic health checks: disk where instances run, memory, GPUs, and the executor's own
        self.checks = basic_checks(self.capacity, settings.agent_dir)
        if type(self.executor).health_check is not Executor.health_check:
            self.checks.append(self._executor_check)
        self.credentials: NodeCredentials | None = None
        self.membership: NodeMembership | None = None

    def _executor_check(self) -> Check:
        return self.executor.health_check() or Check("executor", True)

    @property
    def node_id(self) -> str:
        return self.credentials.node_id if self.credentials else ""

    @property
    def js(self) -> Any:
        assert self._nc is not None
        return self._nc.jetstream()

    def channel(self, addr: str, service: str) -> grpc.aio.Channel:
        """A mutual-TLS channel to a platform service with this node's certificate (closed on stop)."""
        assert self.credentials is not None
        ch = grpcutil.channel(addr, service, self.credentials.tls)
        self._channels.append(ch)
        return ch

    @abstractmethod
    def connect(self) -> None:
        """Open the channels to the owners of this agent's work (with :meth:`channel`)."""

    @abstractmethod
    async def step(self) -> None:
        """One reconcile step: compare what should run here with what runs, and converge."""

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        s.agent_dir.mkdir(parents=True, exist_ok=True)
        if s.sandbox_uncontained:
            log.warning("CAPSTAN_SANDBOX_UNCONTAINED=true: instances on this node run with NO network isolation, "
                        "NO resource limits and as root inside the sandbox; never do this where users are not trusted")
        # Runners killed while this agent was down may have left cgroups, namespaces and links behind.
        for lease in await asyncio.to_thread(self.executor.reap_stale):
            log.info("cleaned up the sandbox left by %s", lease)
        # The node's certificate (a join token the first time); it names this node to every service.
        creds = self.credentials = await s.node_credentials(
            s.agent_dir / "credentials", node_name=s.node_name, resource_group=s.resource_group,
            agent_kind=self.agent_kind,
        )
        self.scheduler = scheduler_pb2_grpc.SchedulerStub(self.channel(s.scheduler_addr, "scheduler"))
        self.connect()
        self.membership = NodeMembership(
            self.scheduler, resource_group=creds.resource_group_id, node_name=s.node_name, agent_kind=self.agent_kind,
            capabilities=self.capabilities, capacity=self.capacity, heartbeat_s=s.heartbeat_s, checks=self.checks,
            health_interval_s=s.health_check_s,
        )
        self._nc = await connect_nats(s.nats_url, f"{self.agent_kind}-agent-{s.node_name}", creds.nats)
        # Services ping when their read models advance: what this node should run may have changed.
        # The message itself is never read, so nothing published there can stop the agent.
        await self._nc.subscribe(WAKE_AGENTS, cb=self._on_wake, pending_msgs_limit=WAKE_PENDING_LIMIT)
        await self.membership.join()
        self._tasks = [
            asyncio.create_task(self.membership.heartbeat_forever(), name="heartbeat"),
            asyncio.create_task(self._reconcile_loop(), name="reconcile"),
        ]

    async def _on_wake(self, _msg: Any) -> None:
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        """Stop the agent only: instances keep running under their runners and are re-adopted on restart."""
        await cancel_and_wait(self._tasks)
        for key in list(self._watched):
            self.unwatch(key)
        for ch in self._channels:
            await ch.close()
        if self._nc:
            with contextlib.suppress(Exception):
                await self._nc.close()

    async def _reconcile_loop(self) -> None:
        while True:
            self._wake.clear()
            await run_steps([(self.loop_name, self.step)], self.counters)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.reconcile_s)

    # -- runner exits wake the loop ---------------------------------------------------------
    def watch(self, key: Any, pid: int | None) -> None:
        """Wake the loop when the instance's runner exits (it has written ``exit_code`` by then)."""
        if pid is None or key in self._watched:
            return
        try:
            fd = os.pidfd_open(pid)
        except OSError:  # gone already (the step sees it exited), or no pidfds: the timer covers it
            return
        self._watched[key] = fd
        asyncio.get_running_loop().add_reader(fd, self._runner_exited, key)

    def _runner_exited(self, key: Any) -> None:
        self.unwatch(key)
        self._wake.set()

    def unwatch(self, key: Any) -> None:
        fd = self._watched.pop(key, None)
        if fd is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)
