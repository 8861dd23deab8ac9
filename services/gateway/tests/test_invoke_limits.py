"""Keys' token limits, QPS and concurrency limits, the bounded queue, X-RateLimit headers and call
monitoring on one gateway (in-process counters); across two gateway processes see test_invoke_shared.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import openai
import pytest

from capstan_gateway import GatewaySettings
from capstan_proto import inference_pb2

from .invoke_support import StubRouteSource, fake_upstream, route, schema_validator, served_gateway, sha, upstream_stats

MS = "ms-lim12345"
MSGS = [{"role": "user", "content": "one two three"}]


@pytest.fixture
def upstream(tmp_path: Path) -> AsyncIterator[str]:
    with fake_upstream(tmp_path) as addr:
        yield addr


def sdk(gw: str, key: str = "sk-good") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{gw}/{MS}/v1", api_key=key, max_retries=0)


async def test_tokens_per_minute_refuse_with_429_and_headers(settings: GatewaySettings, upstream: str) -> None:
    key = inference_pb2.RouteKey(key_id="k1", secret_sha256=sha("sk-good"), enabled=True, tokens_per_minute=200)
    source = StubRouteSource(route(MS, [("r1", "v1", upstream)], keys=[key]))
    async with served_gateway(settings, source) as gw:
        client = sdk(gw)
        first = await client.chat.completions.with_raw_response.create(model=MS, messages=MSGS, max_tokens=50)
        assert first.headers["x-ratelimit-limit"] == "200"
        assert 0 <= int(first.headers["x-ratelimit-remaining"]) < 200
        used = first.parse().usage.total_tokens  # type: ignore[union-attr]
        refused = None
        for _ in range(10):
            try:
                c = await client.chat.completions.create(model=MS, messages=MSGS, max_tokens=50)
                used += c.usage.total_tokens  # type: ignore[union-attr]
            except openai.RateLimitError as e:
                refused = e
                break
        assert refused is not None and used <= 200
        schema_validator("ErrorResponse").validate(refused.response.json())
        assert "tokens per minute" in refused.message
        assert refused.response.headers["x-ratelimit-limit"] == "200"


async def test_group_qps_cap(settings: GatewaySettings, upstream: str) -> None:
    source = StubRouteSource(route(MS, [("r1", "v1", upstream)], auth=False, group_qps=5))
    async with served_gateway(settings, source) as gw, httpx.AsyncClient() as c:
        results = await asyncio.gather(*(c.get(f"{gw}/{MS}/v1/models") for _ in range(30)))
        ok = [r for r in results if r.status_code == 200]
        limited = [r for r in results if r.status_code == 429]
        assert len(ok) + len(limited) == 30
        assert 1 <= len(ok) <= 10  # 5 a second; the burst may straddle two windows
        assert limited[0].json()["error"]["code"] == "rate_limit_exceeded"
        assert ok[0].headers["x-ratelimit-limit"] == "5"


async def test_concurrency_limit_queues_then_refuses(
    settings: GatewaySettings, tmp_path: Path, admin_token: str
) -> None:
    version = inference_pb2.RouteVersion(version_id="v1", weight=100, served_model_name="fake-model",
                                         max_concurrency_per_replica=1, queue_size=1, queue_timeout_ms=5000)
    with fake_upstream(tmp_path, "slow", tokens_per_second=50) as slow:
        source = StubRouteSource(route(MS, [("r1", "v1", slow)], auth=False, versions=[version]))
        async with served_gateway(settings, source) as gw:
            client = sdk(gw)
            # one runs, one waits in the queue, the third finds the queue full
            calls = [asyncio.create_task(client.chat.completions.create(model=MS, messages=MSGS, max_tokens=10))
                     for _ in range(3)]
            done = await asyncio.gather(*calls, return_exceptions=True)
            errors = [d for d in done if isinstance(d, Exception)]
            assert len(errors) == 1 and isinstance(errors[0], openai.RateLimitError), done
            assert "concurrency" in errors[0].message
            async with httpx.AsyncClient(base_url=gw, headers={"Authorization": f"Bearer {admin_token}"}) as c:
                [point] = (await c.get(f"/api/v1/services/{MS}/metrics")).json()["points"]
            assert (point["received"], point["succeeded"], point["throttled"]) == (3, 2, 1)  # each call once


async def test_queue_timeout(settings: GatewaySettings, tmp_path: Path) -> None:
    version = inference_pb2.RouteVersion(version_id="v1", weight=100, served_model_name="fake-model",
                                         max_concurrency_per_replica=1, queue_size=5, queue_timeout_ms=100)
    with fake_upstream(tmp_path, "slow", tokens_per_second=20) as slow:
        source = StubRouteSource(route(MS, [("r1", "v1", slow)], auth=False, versions=[version]))
        async with served_gateway(settings, source) as gw:
            client = sdk(gw)
            long = asyncio.create_task(client.chat.completions.create(model=MS, messages=MSGS, max_tokens=20))
            async with asyncio.timeout(10):  # the first call holds the only slot
                while not (await upstream_stats(slow))["arrivals"]:
                    await asyncio.sleep(0.02)
            with pytest.raises(openai.RateLimitError):
                await client.chat.completions.create(model=MS, messages=MSGS, max_tokens=1)
            assert (await long).choices


async def test_a_queued_call_goes_to_a_replica_added_while_it_waits(
    settings: GatewaySettings, tmp_path: Path, admin_token: str
) -> None:
    """Scale-up (HPA) adds replicas while calls wait in the version's queue: a waiting call takes a slot of
    the new replica as soon as the gateway's table has it, not only when a busy replica frees one (a
    wait that can outlast the queue's timeout: a 429 beside an idle replica)."""
    version = inference_pb2.RouteVersion(version_id="v1", weight=100, served_model_name="fake-model",
                                         max_concurrency_per_replica=1, queue_size=5, queue_timeout_ms=4000)
    with fake_upstream(tmp_path, "slow", tokens_per_second=2) as slow, fake_upstream(tmp_path, "fast") as fast:
        source = StubRouteSource(route(MS, [("r1", "v1", slow)], auth=False, versions=[version]))
        async with served_gateway(settings, source) as gw, httpx.AsyncClient(
                base_url=gw, headers={"Authorization": f"Bearer {admin_token}"}) as admin:
            client = sdk(gw)
            busy = asyncio.create_task(client.chat.completions.create(model=MS, messages=MSGS, max_tokens=16))
            async with asyncio.timeout(10):  # 8 s on the only replica
                while not (await upstream_stats(slow))["arrivals"]:
                    await asyncio.sleep(0.02)
            waiting = asyncio.create_task(client.chat.completions.create(model=MS, messages=MSGS, max_tokens=1))
            async with asyncio.timeout(10):  # it waits in the queue
                while f'capstan_serving_queued{{service="{MS}",version="v1"}} 1' not in (
                        await admin.get("/metrics")).text:
                    await asyncio.sleep(0.02)
            source.set(route(MS, [("r1", "v1", slow), ("r2", "v1", fast)], auth=False, versions=[version]))
            async with asyncio.timeout(3):  # the table is polled every 0.5 s; r1 stays busy for 8 s
                assert (await waiting).choices
            assert len((await upstream_stats(fast))["arrivals"]) == 1 and not busy.done()
            assert (await busy).choices


async def test_traffic_split_by_version_weight(settings: GatewaySettings, tmp_path: Path) -> None:
    versions = [inference_pb2.RouteVersion(version_id="a", weight=80, served_model_name="model-a"),
                inference_pb2.RouteVersion(version_id="b", weight=20, served_model_name="model-b"),
                inference_pb2.RouteVersion(version_id="c", weight=0, served_model_name="model-c")]
    with fake_upstream(tmp_path, "a", served="model-a") as a, fake_upstream(tmp_path, "b", served="model-b") as b:
        source = StubRouteSource(route(MS, [("ra", "a", a), ("rb", "b", b), ("rc", "c", b)], auth=False,
                                       versions=versions))
        async with served_gateway(settings, source) as gw:
            client = sdk(gw)
            models = [(await client.chat.completions.create(model=MS, messages=MSGS, max_tokens=1)).model
                      for _ in range(200)]
    assert "model-c" not in models
    assert 120 <= models.count("model-a") <= 190, models.count("model-a")


async def test_call_monitoring_series_and_prometheus(
    settings: GatewaySettings, upstream: str, admin_token: str
) -> None:
    key = inference_pb2.RouteKey(key_id="k1", secret_sha256=sha("sk-good"), enabled=True)
    source = StubRouteSource(route(MS, [("r1", "v1", upstream)], keys=[key]))
    async with served_gateway(settings, source) as gw:
        client = sdk(gw)
        await client.chat.completions.create(model=MS, messages=MSGS, max_tokens=4)
        stream = await client.chat.completions.create(model=MS, messages=MSGS, max_tokens=4, stream=True)
        _ = [c async for c in stream]
        with pytest.raises(openai.AuthenticationError):
            await sdk(gw, "sk-bad").chat.completions.create(model=MS, messages=MSGS)
        async with httpx.AsyncClient(base_url=gw) as c:
            assert (await c.get(f"/api/v1/services/{MS}/metrics")).status_code == 401
            assert (await c.get("/metrics")).status_code == 401
            auth = {"Authorization": f"Bearer {admin_token}"}
            series = (await c.get(f"/api/v1/services/{MS}/metrics", headers=auth)).json()
            [point] = series["points"]
            assert point["succeeded"] == 2 and point["received"] == 2
            assert point["tokens_out"] == 8 and point["mean_latency_ms"] > 0 and point["mean_ttft_ms"] > 0
            by_key = (await c.get(f"/api/v1/services/{MS}/metrics?by=key", headers=auth)).json()["points"]
            assert [p["key"] for p in by_key] == ["k1"]
            bad = await c.get(f"/api/v1/services/{MS}/metrics?minutes=0", headers=auth)
            assert bad.status_code == 400
            text = (await c.get("/metrics", headers=auth)).text
            assert f'capstan_serving_requests_succeeded_total{{service="{MS}",version="v1",key="k1"}} 2' in text
            assert "capstan_serving_in_flight" in text


async def test_streamed_usage_counts_against_tokens_per_day(settings: GatewaySettings, upstream: str) -> None:
    key = inference_pb2.RouteKey(key_id="k1", secret_sha256=sha("sk-good"), enabled=True, tokens_per_day=150)
    source = StubRouteSource(route(MS, [("r1", "v1", upstream)], keys=[key]))
    async with served_gateway(settings, source) as gw:
        client = sdk(gw)
        streamed = 0
        with pytest.raises(openai.RateLimitError) as refused:
            for _ in range(20):
                stream = await client.chat.completions.create(model=MS, messages=MSGS, max_tokens=30, stream=True)
                streamed += sum(1 for c in [c async for c in stream] if c.choices and c.choices[0].delta.content)
        assert "tokens per day" in refused.value.message
        assert 0 < streamed <= 150  # the usage chunk the gateway asked for (and dropped) was counted
