"""A replica's health probes (SPEC §6.2): startup, readiness and liveness, each an HTTP GET, a TCP
connection or a command run inside the replica's sandbox.

- ``http``: ``GET <path>`` on the probe's port (0: the replica's) at the address the host reaches the
  replica at; a 2xx or 3xx answer within the timeout is a success (as Kubernetes counts it).
- ``tcp``: the port accepts a connection within the timeout.
- ``exec``: the argv runs inside the replica's sandbox (its namespaces, cgroup and uid) through the
  executor; exit 0 within the timeout is a success.

:class:`ProbeState` counts consecutive outcomes against the thresholds; probes run when due (initial
delay, then every period), never two of one kind at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from capstan_proto import inference_pb2

DEFAULT_PERIOD_S = 10
DEFAULT_TIMEOUT_S = 1
DEFAULT_FAILURE_THRESHOLD = 3
MAX_RESPONSE_HEAD = 8192  # bytes of the answer read for its status line


@dataclass(frozen=True)
class Outcome:
    ok: bool
    detail: str  # in words, for the report: "GET /health -> 503", "connection refused"


Exec = Callable[[list[str], float], Awaitable[tuple[int, str]]]


def configured(p: inference_pb2.Probe) -> bool:
    return p.kind in ("http", "tcp", "exec")


def _host_port(address: str, port: int) -> tuple[str, int]:
    host, _, own = address.rpartition(":")
    return host, port or int(own)


async def run_probe(p: inference_pb2.Probe, address: str, exec_in: Exec) -> Outcome:
    """One probe. ``address``: host:port where the host reaches the replica's server."""
    timeout = float(p.timeout_s or DEFAULT_TIMEOUT_S)
    if p.kind == "exec":
        code, output = await exec_in(list(p.command), timeout)
        tail = output.strip().splitlines()[-1][:200] if output.strip() else ""
        return Outcome(code == 0, f"exec {list(p.command)} -> exit {code}" + (f": {tail}" if tail and code else ""))
    host, port = _host_port(address, p.port)
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (TimeoutError, OSError) as e:
        what = "timed out" if isinstance(e, asyncio.TimeoutError) else (e.strerror or str(e))
        return Outcome(False, f"{p.kind} {host}:{port}: {what}")
    try:
        if p.kind == "tcp":
            return Outcome(True, f"tcp {host}:{port} accepts")
        path = p.path if p.path.startswith("/") else "/" + p.path
        request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: capstan-probe\r\nConnection: close\r\n\r\n"
        writer.write(request.encode("latin-1", "replace"))
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
        parts = line.decode("latin-1").split()
        status = int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else 0
        return Outcome(200 <= status < 400, f"GET {path} -> {status or 'no HTTP answer'}")
    except (TimeoutError, OSError, ValueError) as e:
        return Outcome(False, f"GET {p.path} on {host}:{port}: {'timed out' if isinstance(e, asyncio.TimeoutError) else e}")
    finally:
        writer.close()


class ProbeState:
    """Consecutive outcomes of one probe against its thresholds. ``passing``: None until decided."""

    def __init__(self, probe: inference_pb2.Probe, started: float) -> None:
        self.probe = probe
        self.next_at = started + max(0, probe.initial_delay_s)
        self.successes = 0
        self.failures = 0
        self.passing: bool | None = None
        self.detail = ""
        self.busy = False

    def due(self, now: float) -> bool:
        return not self.busy and now >= self.next_at

    def record(self, outcome: Outcome, now: float) -> None:
        self.next_at = now + (self.probe.period_s or DEFAULT_PERIOD_S)
        self.detail = outcome.detail
        if outcome.ok:
            self.successes, self.failures = self.successes + 1, 0
            if self.successes >= max(1, self.probe.success_threshold):
                self.passing = True
        else:
            self.successes, self.failures = 0, self.failures + 1
            if self.failures >= max(1, self.probe.failure_threshold or DEFAULT_FAILURE_THRESHOLD):
                self.passing = False

    async def check(self, address: str, exec_in: Exec) -> None:
        """Run the probe now and record its outcome."""
        self.busy = True
        try:
            outcome = await run_probe(self.probe, address, exec_in)
        finally:
            self.busy = False
        self.record(outcome, time.monotonic())
