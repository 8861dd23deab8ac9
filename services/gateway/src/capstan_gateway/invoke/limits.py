"""Rate and token limits: fixed windows (second, minute, day) counted in shared ``Counters``; and each
gateway's part of a replica's concurrency limit.

Each process leases a slice of a window's limit from the shared counter (at least 2% of it, or what
one request needs) and spends it locally, so most requests touch no network, and the sum of every
process's leases never passes the limit: a window admits at most ``limit`` units across all gateways.
Tokens are reserved before a request (an estimate: the prompt's bytes / 3 plus max_tokens) and settled
against the response's ``usage`` afterwards: what is left over goes back to the local lease, what went
over is added to the shared counter.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from .counters import Counters

LEASE_FRACTION = 0.02
_MAX_SCOPES = 10_000


@dataclass
class _Lease:
    window: int = -1
    window_s: int = 1
    remaining: int = 0  # units leased from the shared counter not yet spent by this process
    seen_total: int = 0  # the shared counter's value the last time this process touched it


class Budgets:
    def __init__(self, counters: Counters, clock: Callable[[], float] = time.time) -> None:
        self.counters = counters
        self.clock = clock
        self._leases: dict[str, _Lease] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._peers: dict[str, tuple[int, int]] = {}  # replica id -> (this gateway's rank, gateways calling it)

    def window(self, window_s: int) -> int:
        return int(self.clock() // window_s)

    def _lease(self, scope: str, window: int, window_s: int) -> _Lease:
        lease = self._leases.get(scope)
        if lease is None or lease.window != window:
            if lease is None and len(self._leases) >= _MAX_SCOPES:
                self._forget_past()
            lease = self._leases[scope] = _Lease(window=window, window_s=window_s)
        return lease

    def _forget_past(self) -> None:
        """Leases of windows that are over are worth nothing (scopes of replicas and keys that are gone)."""
        now = self.clock()
        for scope in [s for s, lease in self._leases.items() if lease.window < int(now // lease.window_s)]:
            del self._leases[scope]
            self._locks.pop(scope, None)

    async def take(self, scope: str, window_s: int, limit: int, amount: int) -> bool:
        """Spend ``amount`` of this window's ``limit`` for ``scope``; False when it is not there."""
        window = self.window(window_s)
        lease = self._lease(scope, window, window_s)
        if lease.remaining >= amount:
            lease.remaining -= amount
            return True
        lock = self._locks.setdefault(scope, asyncio.Lock())
        async with lock:
            lease = self._lease(scope, window, window_s)
            if lease.remaining >= amount:
                lease.remaining -= amount
                return True
            need = amount - lease.remaining
            ask = max(need, math.ceil(limit * LEASE_FRACTION))
            granted, total = await self.counters.reserve(f"{scope}.{window}", window_s, ask, limit)
            lease.remaining += granted
            lease.seen_total = total
            if lease.remaining >= amount:
                lease.remaining -= amount
                return True
            return False

    async def settle(self, scope: str, window_s: int, window: int, reserved: int, used: int) -> None:
        """A request that reserved ``reserved`` used ``used``: return the rest or record the excess."""
        lease = self._leases.get(scope)
        if used <= reserved:
            if lease is not None and lease.window == window:
                lease.remaining += reserved - used
            return
        total = await self.counters.add(f"{scope}.{window}", window_s, used - reserved)
        if lease is not None and lease.window == window:
            lease.seen_total = max(lease.seen_total, total)

    def set_peers(self, replica_id: str, gateway_id: str, gateway_ids: list[str]) -> None:
        """The gateways now sending calls to a replica (those with a fresh share of its load), this one
        among them: a concurrency limit per replica is split between them (``slots``)."""
        peers = sorted(set(gateway_ids) | {gateway_id})
        if len(self._peers) >= _MAX_SCOPES and replica_id not in self._peers:
            self._peers.clear()  # replicas that are gone; the next load round tells again
        self._peers[replica_id] = (peers.index(gateway_id), len(peers))

    def forget_peers(self, replica_ids: set[str]) -> None:
        for rid in replica_ids:
            self._peers.pop(rid, None)

    def slots(self, replica_id: str, limit: int) -> int:
        """This gateway's part of a replica's concurrency ``limit``: the limit split evenly between the
        gateways calling it (the first ``limit % n`` by id get one more; with fewer slots than gateways,
        the last get none), so their sum never passes the limit. Until the first load round says who
        the others are (a second after a gateway starts), a gateway takes the whole limit."""
        rank, n = self._peers.get(replica_id, (0, 1))
        return limit // n + (1 if rank < limit % n else 0)

    def remaining(self, scope: str, window_s: int, limit: int) -> int:
        """An estimate of what is left of the window across gateways (for X-RateLimit-Remaining)."""
        lease = self._leases.get(scope)
        if lease is None or lease.window != self.window(window_s):
            return limit
        return max(0, limit - lease.seen_total + lease.remaining)


def estimate_tokens(body: dict[str, object], raw_len: int, default_max_tokens: int = 1024) -> int:
    """Tokens a request may use: its prompt (at most one token per 3 bytes of body) plus max_tokens."""
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    n = body.get("n")
    per = max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else default_max_tokens
    count = n if isinstance(n, int) and 0 < n <= 128 else 1
    return math.ceil(raw_len / 3) + per * count


class ConcurrencyGate:
    """Requests over a version's per-replica concurrency wait here (bounded, with a timeout), oldest first.

    A waiter is woken when a slot of the version frees (``release``) or when the routing table adds
    replicas to it (``wake``: one waiter per new slot), so calls queued before a scale-up go to the new
    replicas as soon as the gateway routes to them."""

    def __init__(self) -> None:
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}

    def queued(self, version_id: str) -> int:
        return len(self._waiters.get(version_id, ()))

    async def wait(self, version_id: str, queue_size: int, timeout_s: float, *, again: bool = False) -> bool:
        """Wait for a slot of the version to free; False when the queue is full or the wait timed out.
        ``again``: a waiter that was woken but found every slot taken keeps its place at the head of the
        line (it was the oldest) and is not refused for a queue that filled meanwhile."""
        waiters = self._waiters.setdefault(version_id, [])
        if not again and len(waiters) >= queue_size:
            return False
        if timeout_s <= 0:
            return False
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if again:
            waiters.insert(0, fut)
        else:
            waiters.append(fut)
        try:
            await asyncio.wait_for(fut, timeout_s)
            return True
        except TimeoutError:
            return False
        finally:
            if fut in waiters:
                waiters.remove(fut)

    def release(self, version_id: str) -> None:
        """A slot of the version freed: wake the oldest waiter."""
        self.wake(version_id, 1)

    def wake(self, version_id: str, slots: int) -> None:
        """``slots`` slots of the version became free (a slot freed, or replicas were added): wake as many
        of the oldest waiters."""
        waiters = self._waiters.get(version_id)
        while waiters and slots > 0:
            fut = waiters.pop(0)
            if not fut.done():
                fut.set_result(None)
                slots -= 1
