"""The invocation path's pure parts: leases never pass a limit, the SSE relay, routing choice, metrics."""

from __future__ import annotations

import asyncio
import json
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from capstan_gateway.invoke.counters import LocalCounters
from capstan_gateway.invoke.limits import Budgets, ConcurrencyGate, estimate_tokens
from capstan_gateway.invoke.metrics import Outcome, ServingMetrics, time_series
from capstan_gateway.invoke.routes import RouteCache, build_service
from capstan_gateway.invoke.sse import SseRelay
from capstan_gateway.invoke.store import merge_load
from capstan_proto import inference_pb2

from .invoke_support import StubRouteSource, route


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_leases_of_many_processes_never_pass_the_limit() -> None:
    shared = LocalCounters()
    clock = Clock()
    processes = [Budgets(shared, clock) for _ in range(5)]
    rng = random.Random(7)
    granted = 0
    for _ in range(2000):
        amount = rng.randint(1, 40)
        if await rng.choice(processes).take("t.k", 60, 10_000, amount):
            granted += amount
    assert 9_000 <= granted <= 10_000
    clock.now += 60  # the next window starts empty
    assert await processes[0].take("t.k", 60, 10_000, 5_000)


async def test_settling_returns_the_rest_and_records_the_excess() -> None:
    shared = LocalCounters()
    clock = Clock()
    a, b = Budgets(shared, clock), Budgets(shared, clock)
    window = a.window(60)
    assert await a.take("t.k", 60, 100, 100)
    assert not await b.take("t.k", 60, 100, 1)
    await a.settle("t.k", 60, window, reserved=100, used=40)  # 60 back to a's lease
    assert await a.take("t.k", 60, 100, 60)
    await a.settle("t.k", 60, window, reserved=10, used=30)  # 20 over: on the shared counter
    assert (await shared.reserve(f"t.k.{window}", 60, 1, 1000))[1] == 121


def test_token_estimate_covers_prompt_and_completion() -> None:
    body = {"messages": [{"role": "user", "content": "x" * 300}], "max_tokens": 50, "n": 2}
    assert estimate_tokens(body, 330) == 110 + 100
    assert estimate_tokens({}, 3) == 1 + 1024


def test_sse_relay_passes_whole_events_and_strips_usage_not_asked_for() -> None:
    relay = SseRelay(strip_usage=True)
    content = b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n'
    usage = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":7,"total_tokens":10}}\n\n'
    assert relay.feed(content[:10]) == b""  # half an event waits for its end
    assert relay.feed(content[10:]) == content
    assert relay.feed(usage + b"data: [DONE]\n\n") == b"data: [DONE]\n\n"
    assert (relay.prompt_tokens, relay.completion_tokens) == (3, 7)
    kept = SseRelay(strip_usage=False)
    assert kept.feed(usage) == usage and kept.usage_total == 10


def test_usage_of_a_whole_answer() -> None:
    relay = SseRelay(strip_usage=False)
    relay.read_usage(json.dumps({"choices": [{"text": '"usage"'}],
                                 "usage": {"prompt_tokens": 2, "completion_tokens": 5}}).encode())
    assert relay.usage_total == 7
    relay.read_usage(b'{"usage": broken')  # not JSON: nothing counted, nothing raised
    assert relay.usage_total == 7


def test_routing_skips_unready_and_isolated_and_keeps_in_flight() -> None:
    r = route("ms-x", [("a", "v1", "h:1"), ("b", "v1", "h:2"), ("c", "v1", "h:3")])
    r.replicas[1].ready = False
    r.replicas[2].isolated = True
    svc = build_service(r, None)
    chosen = svc.choose()
    assert chosen is not None and chosen.replica_id == "a"
    chosen.in_flight = 3
    again = build_service(r, svc)  # a refresh keeps what is in flight
    assert again.versions["v1"].replicas[0].in_flight == 3
    assert svc.choose(frozenset({"a"})) is None
    assert svc.key_for("sk-good") is not None and svc.key_for("sk-bad") is None


async def _turns(n: int = 10) -> None:
    """Let the event loop run what is ready (a woken waiter's task ends within a few turns)."""
    for _ in range(n):
        await asyncio.sleep(0)


async def test_the_queue_wakes_its_oldest_waiters_for_freed_slots_and_added_replicas() -> None:
    gate = ConcurrencyGate()
    waits = [asyncio.create_task(gate.wait("v1", 3, 5)) for _ in range(3)]
    await _turns()
    assert gate.queued("v1") == 3 and not await gate.wait("v1", 3, 5)  # full: refused at once
    gate.release("v1")
    await _turns()
    assert [w.done() for w in waits] == [True, False, False]
    # woken but every slot taken again: back at the head of the line, even though the queue is full
    head = asyncio.create_task(gate.wait("v1", 2, 5, again=True))
    await _turns()
    gate.wake("v1", 2)  # e.g. a replica with 2 slots added
    await _turns()
    assert head.done() and [w.done() for w in waits] == [True, True, False]
    assert not await gate.wait("v1", 3, 0)  # no time left: refused
    gate.wake("v1", 5)
    assert all(await asyncio.gather(*waits, head))


async def test_replicas_added_to_the_table_wake_one_waiter_per_new_slot() -> None:
    version = inference_pb2.RouteVersion(version_id="v1", weight=100, max_concurrency_per_replica=2)
    source = StubRouteSource(route("ms-x", [("a", "v1", "h:1")], versions=[version]))
    cache = RouteCache(source)
    await cache.refresh()
    waits = [asyncio.create_task(cache.gate.wait("v1", 10, 5)) for _ in range(5)]
    await _turns()
    source.set(route("ms-x", [("a", "v1", "h:1"), ("b", "v1", "h:2")], versions=[version]))
    await cache.refresh()
    await _turns()
    assert [w.done() for w in waits] == [True, True, False, False, False]
    await cache.refresh()  # unchanged: nobody else
    await _turns()
    assert cache.gate.queued("v1") == 3
    for w in waits:
        w.cancel()


class SlowSource(StubRouteSource):
    """ListRoutes that takes a while (a busy inference service), so callers arrive while it runs."""

    async def list_routes(self, revision: int) -> inference_pb2.ListRoutesResponse:
        await asyncio.sleep(0.3)
        return await super().list_routes(revision)


async def test_callers_that_miss_while_a_refresh_runs_wait_for_it() -> None:
    """Right after a deploy, many callers at once name a service whose replica the cache does not have
    yet: every one waits for the refresh under way (one ListRoutes), none answers 503 from the old table."""
    source = SlowSource(route("ms-x", []))
    cache = RouteCache(source, poll_s=3600)
    await cache.refresh()
    source.set(route("ms-x", [("a", "v1", "h:1")]))
    calls_before = source.calls
    first = asyncio.create_task(cache.get("ms-x"))
    await _turns()  # its refresh is under way
    rest = [asyncio.create_task(cache.get("ms-x")) for _ in range(5)]
    got = await asyncio.gather(first, *rest)
    assert all(svc is not None and svc.choose() is not None for svc in got)
    assert source.calls == calls_before + 1
    # the poll's own refresh is shared the same way
    source.set(route("ms-y", [("b", "v1", "h:2")]))
    poll = asyncio.create_task(cache.refresh())
    await _turns()
    svc = await cache.get("ms-y")
    assert svc is not None and svc.choose() is not None
    await poll
    assert source.calls == calls_before + 2


async def test_published_load_splits_the_versions_queue_over_its_replicas_exactly() -> None:
    from capstan_gateway.invoke.runtime import InvokeRuntime
    from capstan_gateway.invoke.store import MemoryStore

    cache = RouteCache(StubRouteSource(route("ms-x", [("a", "v1", "h:1"), ("b", "v1", "h:2"), ("c", "v1", "h:3")])))
    await cache.refresh()
    store = MemoryStore()
    runtime = InvokeRuntime(cache, LocalCounters(), store, "gw1")
    runtime.metrics.queued[("ms-x", "v1")] = 4
    await runtime.publish_load()
    assert sorted(store.load[f"ms-x.{r}"]["queued"] for r in "abc") == [1, 1, 2]  # 4 waiting calls in all


def test_metrics_series_sum_gateways() -> None:
    entries = []
    for gw in ("g1", "g2"):
        m = ServingMetrics(gw)
        m.ended(("ms-x", "v1", "k1"), Outcome("succeeded", latency_ms=10, ttft_ms=2, tokens_out=4))
        m.ended(("ms-x", "v1", "k1"), Outcome("throttled"))
        entries += list(m.snapshot_entries().values())
    minute = json.loads(entries[0])["minute"]
    [point] = time_series(entries, minute - 5, minute, "")
    assert (point["received"], point["succeeded"], point["throttled"], point["tokens_out"]) == (4, 2, 2, 8)
    assert point["mean_latency_ms"] == 10 and point["mean_ttft_ms"] == 2


def test_replica_load_sums_fresh_gateway_shares() -> None:
    a = merge_load(None, "g1", {"qps": 2.0, "in_flight": 1, "queued": 0, "at_ms": 10_000})
    b = merge_load(a, "g2", {"qps": 3.0, "in_flight": 2, "queued": 1, "at_ms": 11_000})
    assert (b["qps"], b["in_flight"], b["queued"]) == (5.0, 3, 1)
    c = merge_load(b, "g2", {"qps": 1.0, "in_flight": 0, "queued": 0, "at_ms": 20_000})  # g1's share is stale
    assert (c["qps"], set(c["gateways"])) == (1.0, {"g2"})


async def test_leases_of_past_windows_are_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    from capstan_gateway.invoke import limits

    monkeypatch.setattr(limits, "_MAX_SCOPES", 10)
    clock = Clock()
    budgets = Budgets(LocalCounters(), clock)
    for i in range(10):
        assert await budgets.take(f"q.r.gone{i}", 1, 5, 1)
    assert await budgets.take("t.k", 86400, 100, 1)  # a day window outlives the seconds
    clock.now += 2
    assert await budgets.take("q.r.new", 1, 5, 1)
    assert set(budgets._leases) == {"t.k", "q.r.new"}


async def test_concurrent_takes_in_one_process_share_one_lease() -> None:
    shared = LocalCounters()
    budgets = Budgets(shared, Clock())
    results = await asyncio.gather(*(budgets.take("q", 1, 50, 1) for _ in range(80)))
    assert sum(results) == 50


@given(limit=st.integers(1, 200), n=st.integers(1, 12))
def test_a_replicas_concurrency_is_split_between_the_gateways_calling_it(limit: int, n: int) -> None:
    ids = [f"gw{i:02d}" for i in range(n)]
    parts = []
    for me in ids:
        budgets = Budgets(LocalCounters())
        assert budgets.slots("r1", limit) == limit  # alone, until a load round says who else calls it
        budgets.set_peers("r1", me, list(reversed(ids)))
        parts.append(budgets.slots("r1", limit))
    assert sum(parts) == limit and max(parts) - min(parts) <= 1
    budgets.forget_peers({"r1"})
    assert budgets.slots("r1", limit) == limit
