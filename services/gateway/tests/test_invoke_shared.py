"""Two real gateway processes share their limits through JetStream KV: 200 concurrent clients across
both, tokens per minute overshoot at most 5%, requests per second at most limit + 1 per window. The
routing table comes over the real mTLS plane from a FAKE Inference gRPC server that answers ListRoutes."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import grpc
import httpx
import pytest
from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError

from capstan_core import credentials
from capstan_core.natsserver import NatsServer
from capstan_proto import inference_pb2, inference_pb2_grpc

from .conftest import closed_addr
from .invoke_support import fake_upstream, route, sha, upstream_stats, wait_file

MS = "ms-shared01"
CLIENTS = 200


class FakeInference(inference_pb2_grpc.InferenceServicer):
    """FAKE inference service: only ListRoutes, from a table the test sets."""

    def __init__(self, *services: inference_pb2.ServiceRoute) -> None:
        self.services = list(services)
        self.revision = 1

    def set(self, *services: inference_pb2.ServiceRoute) -> None:
        self.services = list(services)
        self.revision += 1

    async def ListRoutes(self, request: inference_pb2.ListRoutesRequest, context: object) -> object:  # noqa: N802
        if request.revision == self.revision:
            return inference_pb2.ListRoutesResponse(revision=self.revision, unchanged=True)
        return inference_pb2.ListRoutesResponse(revision=self.revision, services=self.services)


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[str]:
    with fake_upstream(tmp_path) as addr:
        yield addr


@pytest.fixture
async def inference(secrets_dir: Path) -> AsyncIterator[tuple[FakeInference, str]]:
    servicer = FakeInference()
    server = grpc.aio.server()
    inference_pb2_grpc.add_InferenceServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", credentials.load(secrets_dir, "inference").tls.server_credentials())
    await server.start()
    yield servicer, f"127.0.0.1:{port}"
    await server.stop(None)


@pytest.fixture
def gateways(tmp_path: Path, secrets_dir: Path, nats_server: NatsServer,
             inference: tuple[FakeInference, str]) -> Iterator[list[str]]:
    """Two `capstan-gateway` processes on the same NATS and inference service."""
    procs, urls = [], []
    try:
        for i in range(2):
            ready = tmp_path / f"gw{i}.url"
            env = {**os.environ, "CAPSTAN_DATA_DIR": str(tmp_path / f"gw{i}"), "CAPSTAN_SECRETS_DIR": str(secrets_dir),
                   "CAPSTAN_HTTP_LISTEN": "127.0.0.1:0", "CAPSTAN_SCHEDULER_ADDR": closed_addr(),
                   "CAPSTAN_TRAINER_ADDR": closed_addr(), "CAPSTAN_INFERENCE_ADDR": inference[1],
                   "CAPSTAN_NATS_URL": nats_server.url, "CAPSTAN_GATEWAY_ID": f"gw{i}", "CAPSTAN_LOG_LEVEL": "WARNING"}
            procs.append(subprocess.Popen([sys.executable, "-m", "capstan_gateway", "--ready-file", str(ready)], env=env))
        urls = [wait_file(tmp_path / f"gw{i}.url", p) for i, p in enumerate(procs)]
        yield urls
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(15)


async def _routed(urls: list[str], path: str, headers: dict[str, str]) -> None:
    """Until both gateways have the table (they poll ListRoutes)."""
    async with httpx.AsyncClient() as c, asyncio.timeout(20):
        for url in urls:
            while (await c.get(f"{url}/{MS}{path}", headers=headers)).status_code == 404:
                await asyncio.sleep(0.05)


async def _fresh_window(seconds_left: float) -> None:
    """Start in a window with at least ``seconds_left`` to go (the test must not straddle two)."""
    left = 60 - time.time() % 60
    if left < seconds_left:
        await asyncio.sleep(left + 0.05)


async def _post(session: aiohttp.ClientSession, url: str, body: dict[str, object],
                headers: dict[str, str]) -> int:
    """POST until answered: a keep-alive connection the server closed while this loop was busy is
    retried (what counts is measured at the upstream, so a lost answer hides nothing)."""
    while True:
        try:
            async with session.post(url, json=body, headers=headers) as r:
                await r.read()
                return r.status
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
            continue


def _client_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=False),
                                 timeout=aiohttp.ClientTimeout(total=120))


async def test_tokens_per_minute_hold_across_two_gateways(
    gateways: list[str], inference: tuple[FakeInference, str], upstream: str, tmp_path: Path
) -> None:
    limit = 30_000
    key = inference_pb2.RouteKey(key_id="kt", secret_sha256=sha("sk-shared"), enabled=True, tokens_per_minute=limit)
    inference[0].set(route(MS, [("r1", "v1", upstream)], keys=[key]))
    auth = {"Authorization": "Bearer sk-shared"}
    await _routed(gateways, "/v1/models", auth)
    await _fresh_window(25)
    body = {"model": MS, "messages": [{"role": "user", "content": "a few words here"}], "max_tokens": 100}

    outcomes: Counter[int] = Counter()

    async def client(i: int, session: aiohttp.ClientSession) -> None:
        url = f"{gateways[i % 2]}/{MS}/v1/chat/completions"
        while (status := await _post(session, url, body, auth)) == 200:
            outcomes[200] += 1
        assert status == 429, status
        outcomes[429] += 1

    async with _client_session() as session:
        await asyncio.gather(*(client(i, session) for i in range(CLIENTS)))
    served = (await upstream_stats(upstream))["tokens"]  # what the engine produced for the key, all told
    assert served <= limit * 1.05, f"{served} tokens served against a limit of {limit}"
    assert served >= limit * 0.8, f"only {served} of {limit} tokens served: leases left too much unused"
    # call monitoring sums both gateways' samples (JetStream KV), asked of either one
    admin = {"Authorization": f"Bearer {(tmp_path / 'gw0' / 'admin-token').read_text()}"}
    async with httpx.AsyncClient(base_url=gateways[0], headers=admin) as c, asyncio.timeout(20):
        while True:
            points = (await c.get(f"/api/v1/services/{MS}/metrics?minutes=5&by=key")).json()["points"]
            succeeded = sum(p["succeeded"] for p in points)
            throttled = sum(p["throttled"] for p in points)
            if succeeded >= outcomes[200] and throttled >= outcomes[429]:
                break
            await asyncio.sleep(0.2)  # the other gateway writes its samples every 2 s
        assert {p["key"] for p in points} == {"kt"}
        assert sum(p["tokens_out"] for p in points) >= outcomes[200] * 100


async def test_requests_per_second_hold_across_two_gateways(
    gateways: list[str], inference: tuple[FakeInference, str], upstream: str, nc: Client
) -> None:
    qps = 20
    version = inference_pb2.RouteVersion(version_id="v1", weight=100, served_model_name="fake-model",
                                         max_qps_per_replica=qps)
    inference[0].set(route(MS, [("r1", "v1", upstream)], auth=False, versions=[version]))
    await _routed(gateways, "/v1/models", {})
    async with httpx.AsyncClient() as c:
        await c.post(f"http://{upstream}/_fake/reset")
    until = time.time() + 3.0
    statuses: Counter[int] = Counter()

    async def client(i: int, session: aiohttp.ClientSession) -> None:
        url = f"{gateways[i % 2]}/{MS}/v1/models/m:predict"
        while time.time() < until:
            status = await _post(session, url, {"i": i}, {})
            statuses[status] += 1
            if status == 429:
                await asyncio.sleep(0.5 + random.random() * 0.5)  # noqa: S311 - jitter, not security

    async with _client_session() as session:
        await asyncio.gather(*(client(i, session) for i in range(CLIENTS)))
    assert set(statuses) <= {200, 429} and statuses[200] > qps
    # Counted by the second in which a gateway let each call through (its X-Request-Start): a loaded
    # machine may deliver a call in the next second, which says nothing about the limit.
    per_second = Counter(int(t) for t in (await upstream_stats(upstream))["request_starts"])
    assert max(per_second.values()) <= qps + 1, sorted(per_second.items())
    # each gateway publishes the replica's load for the autoscaler
    kv = await nc.jetstream().key_value("capstan_serving_load")
    async with asyncio.timeout(10):
        while True:
            load = json.loads((await kv.get(f"{MS}.r1")).value or b"{}")
            if set(load.get("gateways", {})) == {"gw0", "gw1"}:
                break
            await asyncio.sleep(0.1)
    assert {"qps", "in_flight", "queued", "at_ms"} <= set(load)


async def test_the_gateway_nats_user_reaches_its_buckets_only(nats_server: NatsServer, secrets_dir: Path) -> None:
    import nats
    from nats.js.api import ConsumerConfig

    from capstan_core.service import connect_nats
    from capstan_core.streams import EVENTS_STREAM
    from capstan_gateway.invoke.counters import KvCounters

    nc = await connect_nats(nats_server.url, "gateway-test", credentials.load_nats(secrets_dir, "gateway"))
    try:
        js = nc.jetstream(timeout=1.0)
        counters = await KvCounters.open(js)
        assert await counters.reserve("t.x.1", 60, 5, 10) == (5, 5)
        with pytest.raises((nats.errors.Error, asyncio.TimeoutError)):
            await js.add_consumer(EVENTS_STREAM, ConsumerConfig(deliver_subject="_INBOX.gateway.x"))
        with pytest.raises((nats.errors.Error, asyncio.TimeoutError)):
            await js.publish("capstan.evt.service.ms-12345678", b"{}")
        with pytest.raises((nats.errors.Error, asyncio.TimeoutError)):
            await js.add_stream(name="not_mine", subjects=["not.mine"])
    finally:
        await nc.close()


async def test_a_replicas_concurrency_limit_holds_across_two_gateways(
    gateways: list[str], inference: tuple[FakeInference, str], upstream: str, nc: Client
) -> None:
    limit = 6
    version = inference_pb2.RouteVersion(version_id="v1", weight=100, served_model_name="fake-model",
                                         max_concurrency_per_replica=limit, queue_size=1000, queue_timeout_ms=60_000)
    inference[0].set(route(MS, [("r1", "v1", upstream)], auth=False, versions=[version]))
    await _routed(gateways, "/v1/models", {})
    kv = await nc.jetstream().key_value("capstan_serving_load")

    async def shares() -> dict[str, int]:
        try:
            doc = json.loads((await kv.get(f"{MS}.r1")).value or b"{}")
        except KeyNotFoundError:  # before the first load round
            return {}
        return {g: int(s["at_ms"]) for g, s in (doc.get("gateways") or {}).items()}

    async with asyncio.timeout(20):  # each gateway has written its share since both were there: it read the other's
        while set(both := await shares()) != {"gw0", "gw1"}:
            await asyncio.sleep(0.1)
        while min((await shares()).values()) <= max(both.values()):
            await asyncio.sleep(0.1)
    async with httpx.AsyncClient() as c:
        await c.post(f"http://{upstream}/_fake/reset")
    statuses: Counter[int] = Counter()

    async def client(i: int, session: aiohttp.ClientSession) -> None:
        for _ in range(3):
            statuses[await _post(session, f"{gateways[i % 2]}/{MS}/v1/models/m:predict", {"hold_ms": 150}, {})] += 1

    async with _client_session() as session:
        await asyncio.gather(*(client(i, session) for i in range(40)))
    stats = await upstream_stats(upstream)
    assert statuses == Counter({200: 120}), statuses  # every call waited in a queue for its turn, none refused
    # both gateways were busy together, yet the replica never held more than its limit
    assert stats["max_in_flight"] <= limit, stats["max_in_flight"]
    assert stats["max_in_flight"] >= limit // 2
