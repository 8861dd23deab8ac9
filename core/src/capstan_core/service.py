"""The runtime every service shares: connect NATS, migrate, catch up, serve gRPC, reconcile.

A service is declared by a ``ServiceDefinition`` (its projections, its gRPC
servicers, its background loops); ``Service`` runs it, in its own process
(``main``) or inside a test's event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import nats
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from sqlalchemy import Engine

from . import (
    admin,
    contracts,  # noqa: F401 - every service reads every cross-service event type (see contracts)
    credentials,
    db,
    grpcutil,
    tracing,
)
from .credentials import Credentials, NatsCredentials
from .eventstore import EventStore, RecordedEvent
from .identity import Access
from .loops import Step, run_steps
from .metrics import Counters
from .projection import Projection, ProjectionRunner, cancel_and_wait, rebuild
from .settings import ServiceSettings
from .streams import WAKE_AGENTS, ensure_streams

log = logging.getLogger(__name__)

# A service's CPU-heavy work (projection batches, the scheduling cycle) runs in threads beside its event
# loop. CPython hands the GIL to a waiting thread only after this interval (5 ms by default), and the loop
# waits for it again after every socket or database call it makes: with 5 ms, one RPC answered during a
# cycle waits tens of milliseconds for the GIL alone. 1 ms keeps the loop responsive; the cycle itself
# loses little (measured: tests/scheduler test_loop_latency).
GIL_SWITCH_INTERVAL_S = 0.001


@dataclass
class ServiceContext:
    name: str
    settings: ServiceSettings
    nc: NatsClient
    js: JetStreamContext
    store: EventStore
    engine: Engine
    runner: ProjectionRunner
    credentials: Credentials
    counters: Counters
    channels: dict[str, grpc.aio.Channel] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def channel(self, address: str, service: str) -> grpc.aio.Channel:
        """A mutual-TLS channel to another service, presenting this service's certificate."""
        ch = self.channels.get(address)
        if ch is None:
            ch = self.channels[address] = grpcutil.channel(address, service, self.credentials.tls)
        return ch

    async def await_projection(self, seq: int, timeout: float = 5.0) -> None:
        """Read-your-writes: answer a command only once this service's read models hold it."""
        await self.runner.wait_for(seq, timeout)


@dataclass
class ServiceDefinition:
    """``build`` makes the service's application object from its context; ``register`` adds its
    gRPC servicers; each ``background`` loop gets the application object. ``access``: which
    callers may call which of its gRPC methods (anything not listed is refused). ``bootstrap``:
    also serve the TLS-only bootstrap port (the scheduler, for join tokens). ``wakes_agents``:
    ping node agents each time its read models advance (they then ask it what changed).

    Wake-ups follow what changed: a batch made only of event types in ``quiet`` does not wake the
    service's reconcile loop, one made only of types in ``agents_quiet`` does not ping the agents. Any
    other type wakes, so a new event type is never missed; the timers stay as the safety net."""

    name: str
    migrations: Path
    projections: Callable[[], Sequence[Projection]]
    build: Callable[[ServiceContext], Any]
    register: Callable[[Any, grpcutil.GrpcServer], None]
    access: Access
    background: Sequence[Callable[[Any], Awaitable[None]]] = ()
    bootstrap: bool = False
    wakes_agents: bool = False
    quiet: frozenset[str] = frozenset()
    agents_quiet: frozenset[str] = frozenset()


async def connect_nats(url: str, name: str, creds: NatsCredentials | None) -> NatsClient:
    """Connect as the component's own NATS user (the server refuses anonymous clients)."""
    auth: dict[str, Any] = {}
    if creds is not None:
        auth = {"user": creds.user, "password": creds.password, "inbox_prefix": creds.inbox_prefix}
    return await nats.connect(
        url,
        name=f"capstan-{name}",
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.25,
        connect_timeout=5,
        allow_reconnect=True,
        **auth,
    )


class Service:
    def __init__(self, definition: ServiceDefinition, settings: ServiceSettings) -> None:
        self.definition = definition
        self.settings = settings
        self.ctx: ServiceContext | None = None
        self.app: Any = None
        self.grpc: grpcutil.GrpcServer | None = None
        self._tasks: list[asyncio.Task[Any]] = []

    @property
    def address(self) -> str:
        assert self.grpc is not None
        return self.grpc.address

    @property
    def bootstrap_address(self) -> str:
        assert self.grpc is not None
        return self.grpc.bootstrap_address

    async def start(self) -> None:
        d, s = self.definition, self.settings
        sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_INTERVAL_S))
        creds = credentials.load(s.secrets_path, d.name)
        nc = await connect_nats(s.nats_url, d.name, creds.nats)
        js = nc.jetstream(timeout=10)
        await ensure_streams(js)
        engine = db.make_engine(s.database_url_for(d.name))
        await asyncio.to_thread(db.upgrade, d.migrations, engine)
        counters = Counters()
        runner = ProjectionRunner(d.name, js, engine, d.projections(), service=d.name, counters=counters)
        ctx = ServiceContext(d.name, s, nc, js, EventStore(js, counters=counters), engine, runner, creds, counters)
        def wake_loop(_pos: int, records: Sequence[RecordedEvent]) -> None:
            if _wakes(records, d.quiet):
                ctx.wake.set()

        def wake_agents(_pos: int, records: Sequence[RecordedEvent]) -> None:
            if _wakes(records, d.agents_quiet):
                _wake_agents(nc)

        runner.on_batch(wake_loop)
        if d.wakes_agents:
            runner.on_batch(wake_agents)
        await runner.start()  # catch up from the recorded sequence before serving
        self.ctx = ctx
        self.app = d.build(ctx)
        bootstrap = s.grpc_bootstrap_listen if d.bootstrap else None
        self.grpc = grpcutil.GrpcServer(d.name, s.grpc_listen, creds.tls, d.access, bootstrap_listen=bootstrap)
        d.register(self.app, self.grpc)
        admin.register(self.grpc, d.name, engine, counters, ctx.js)
        await self.grpc.start()
        for loop_fn in d.background:
            self._tasks.append(asyncio.create_task(_supervised(loop_fn, self.app, d.name), name=f"{d.name}-bg"))
        log.info("%s serving gRPC on %s", d.name, self.grpc.address)

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        if self.grpc:
            await self.grpc.stop(0.5)
        if self.ctx:
            await self.ctx.runner.stop()
            for ch in self.ctx.channels.values():
                await ch.close()
            with contextlib.suppress(Exception):
                await self.ctx.nc.close()
            self.ctx.engine.dispose()


def _wakes(records: Sequence[RecordedEvent], quiet: frozenset[str]) -> bool:
    """Whether a batch holds an event outside ``quiet`` (one whose type is unknown here wakes too)."""
    return any(r.event.TYPE not in quiet for r in records)


def _wake_agents(nc: NatsClient) -> None:
    """A content-free ping on core NATS; losing one only delays an agent to its next timer tick."""
    task = asyncio.ensure_future(nc.publish(WAKE_AGENTS, b""))
    task.add_done_callback(lambda t: t.cancelled() or t.exception())


async def _supervised(fn: Callable[[Any], Awaitable[None]], app: Any, name: str) -> None:
    """Background loops restart after an error instead of dying silently."""
    while True:
        try:
            await fn(app)
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: background loop failed; restarting in 1s", name)
            await asyncio.sleep(1.0)


async def reconcile_forever(ctx: ServiceContext, steps: Sequence[Step], interval: float = 1.0) -> None:
    """Level-triggered control loop: run the named ``steps`` whenever the read models advance, or every
    ``interval``; a step that fails is counted and logged, and neither stops the others nor the loop."""
    while True:
        ctx.wake.clear()
        await run_steps(steps, ctx.counters)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(ctx.wake.wait(), interval)


def main(definition: ServiceDefinition, argv: Sequence[str] | None = None) -> None:
    """Entry point of a service process: ``serve`` (default) or ``rebuild``."""
    parser = argparse.ArgumentParser(prog=f"capstan-{definition.name}")
    parser.add_argument("command", nargs="?", default="serve", choices=["serve", "rebuild"])
    parser.add_argument("--ready-file", help="write the gRPC address here once serving")
    args = parser.parse_args(argv)
    settings = ServiceSettings()
    _setup_process(definition.name, settings.log_level)
    if args.command == "rebuild":
        asyncio.run(_rebuild(definition, settings))
    else:
        asyncio.run(_serve(definition, settings, args.ready_file))


def _setup_process(name: str, log_level: str) -> None:
    # Whatever a platform process creates (databases, logs, instance state) is its own: 0600 files,
    # 0700 directories. Sandboxed instances get their writable directories handed over explicitly.
    os.umask(0o077)
    logging.basicConfig(
        level=log_level.upper(), format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    tracing.setup_tracing(name)


def agent_main(
    name: str, log_level: str, run: Callable[[str | None], Coroutine[Any, Any, None]], argv: Sequence[str] | None = None
) -> None:
    """Entry point of a node agent: ``--ready-file`` receives the node id once it has joined."""
    parser = argparse.ArgumentParser(prog=f"capstan-{name}")
    parser.add_argument("--ready-file", help="write the node id here once joined")
    args = parser.parse_args(argv)
    _setup_process(name, log_level)
    from .errors import DomainError
    from .nodeauth import JoinRefused

    try:
        asyncio.run(run(args.ready_file))
    except (JoinRefused, DomainError) as e:  # no credentials, or a refused join token: say so, no traceback
        print(f"capstan-{name}: {e}", file=sys.stderr)
        sys.exit(2)


async def _rebuild(definition: ServiceDefinition, settings: ServiceSettings) -> None:
    nc = await connect_nats(settings.nats_url, definition.name, credentials.load(settings.secrets_path, definition.name).nats)
    js = nc.jetstream(timeout=10)
    await ensure_streams(js)
    engine = db.make_engine(settings.database_url_for(definition.name))
    position = await rebuild(definition.name, js, engine, definition.projections(), definition.migrations, definition.name)
    print(f"{definition.name}: read models rebuilt up to stream sequence {position}")
    await nc.close()


def write_ready_file(path: str | Path, content: str) -> None:
    """Atomically tell a supervisor (``capstan up``) that this process is serving."""
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(content)
    tmp.replace(path)


async def until_terminated() -> None:
    """Return on SIGTERM or SIGINT: the end of every long-running Capstan process."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _serve(definition: ServiceDefinition, settings: ServiceSettings, ready_file: str | None) -> None:
    service = Service(definition, settings)
    await service.start()
    if ready_file:
        write_ready_file(ready_file, service.address)
    await until_terminated()
    await service.stop()
