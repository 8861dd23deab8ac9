"""Health checks of the process table, and waiting for components to become healthy."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from capstan_core import credentials
from capstan_core.grpcutil import check_health

from . import procs
from .platform import Component, read_text


class ComponentFailed(Exception):
    def __init__(self, component: Component, reason: str) -> None:
        super().__init__(f"{component.name} {reason}")
        self.component = component
        self.reason = reason


async def _tcp(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
    except (TimeoutError, OSError):
        return False
    writer.close()
    return True


async def probe(comp: Component) -> bool:
    """One health check: nats accepts TCP, services answer gRPC health, the gateway /healthz,
    agents have written their ready file (after joining their resource group)."""
    if comp.kind == "nats":
        assert comp.listen is not None
        return await _tcp(*comp.listen)
    if comp.kind == "service":
        assert comp.grpc_addr is not None
        try:
            admin = credentials.load(Path(comp.extra["secrets"]), "admin").tls
            return bool(await check_health(comp.grpc_addr, comp.name, admin, timeout=1.0))
        except Exception:
            return False
    if comp.kind == "gateway":
        assert comp.health_url is not None
        try:
            async with httpx.AsyncClient(timeout=2.0) as client:
                return (await client.get(comp.health_url)).status_code == 200
        except httpx.HTTPError:
            return False
    assert comp.ready_file is not None
    return read_text(comp.ready_file) is not None


async def wait_healthy(
    pending: list[tuple[Component, int]],
    timeout: float,
    report: Callable[[Component, float], None],
    started: float | None = None,
) -> None:
    """Wait until every (component, pid) is healthy, reporting each as it becomes so.

    Raises ComponentFailed as soon as one exits, or when ``timeout`` passes.
    """
    started = time.monotonic() if started is None else started
    deadline = time.monotonic() + timeout
    left = list(pending)
    while left:
        results = await asyncio.gather(*(probe(c) for c, _ in left))
        still: list[tuple[Component, int]] = []
        for (comp, pid), ok in zip(left, results, strict=True):
            if ok:
                report(comp, time.monotonic() - started)
            elif not procs.alive(pid, comp.match):
                raise ComponentFailed(comp, f"exited before becoming healthy (pid {pid})")
            else:
                still.append((comp, pid))
        left = still
        if left and time.monotonic() > deadline:
            raise ComponentFailed(left[0][0], f"did not become healthy within {timeout:.0f}s")
        if left:
            await asyncio.sleep(0.2)


async def all_healthy(items: list[Component]) -> bool:
    results = await asyncio.gather(*(probe(c) for c in items))
    return all(results)
