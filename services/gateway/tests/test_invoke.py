"""The OpenAI-compatible invocation routes, called with the official ``openai`` SDK against the FAKE
upstream engine (scripts/fake_openai_upstream.py) and a test double of the routing table."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import openai
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from capstan_core import tracing
from capstan_gateway import GatewaySettings
from capstan_proto import inference_pb2

from .conftest import closed_addr
from .invoke_support import (
    StubRouteSource,
    fake_upstream,
    route,
    schema_validator,
    served_gateway,
    sha,
    upstream_stats,
)

MS = "ms-abc12345"


@pytest.fixture
def upstream(tmp_path: Path) -> AsyncIterator[str]:
    with fake_upstream(tmp_path) as addr:
        yield addr


@pytest.fixture
def source(upstream: str) -> StubRouteSource:
    return StubRouteSource(route(MS, [("r1", "v1", upstream)]))


@pytest.fixture
async def gw(settings: GatewaySettings, source: StubRouteSource) -> AsyncIterator[str]:
    async with served_gateway(settings, source) as url:
        yield url


def sdk(gw: str, key: str = "sk-good", base: str = MS) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{gw}/{base}/v1" if base else f"{gw}/v1", api_key=key, max_retries=0)


ERROR = "ErrorResponse"


async def test_chat_completion_through_the_sdk_validates_and_rewrites_model(gw: str, upstream: str) -> None:
    resp = await sdk(gw).chat.completions.with_raw_response.create(
        model=MS, messages=[{"role": "user", "content": "hello there"}], max_tokens=5)
    body = json.loads(resp.content)
    schema_validator("CreateChatCompletionResponse").validate(body)
    completion = resp.parse()
    assert completion.usage is not None and completion.usage.completion_tokens == 5
    assert resp.headers.get("x-trace-id")
    stats = await upstream_stats(upstream)
    assert stats["models"][-1] == "fake-model"  # ms-id rewritten to the version's served model name
    assert "authorization" not in stats["headers"][-1]  # the service key stays at the gateway


async def test_the_trace_continues_to_the_instance(gw: str, upstream: str) -> None:
    exporter = InMemorySpanExporter()
    tracing.setup_tracing("gateway-tests", exporter=exporter)
    try:
        resp = await sdk(gw).chat.completions.with_raw_response.create(
            model=MS, messages=[{"role": "user", "content": "x"}], max_tokens=2, stream=True)
        async for _ in resp.parse():
            pass
    finally:
        exporter.shutdown()
    sent = (await upstream_stats(upstream))["headers"][-1]["traceparent"]
    assert sent.split("-")[1] == resp.headers["x-trace-id"]


async def test_one_base_url_reaches_a_service_by_model(gw: str) -> None:
    client = sdk(gw, base="")
    completion = await client.chat.completions.create(model=MS, messages=[{"role": "user", "content": "hi"}],
                                                      max_tokens=3)
    assert completion.choices[0].message.content
    text = await client.completions.create(model=MS, prompt="say", max_tokens=4)
    assert text.usage is not None and text.usage.completion_tokens == 4


async def test_completions_and_models(gw: str) -> None:
    client = sdk(gw)
    resp = await client.completions.with_raw_response.create(model=MS, prompt="once upon", max_tokens=4)
    schema_validator("CreateCompletionResponse").validate(json.loads(resp.content))
    models = await client.models.with_raw_response.list()
    schema_validator("ListModelsResponse").validate(json.loads(models.content))


async def test_streaming_relays_chunks_and_strips_the_usage_chunk_not_asked_for(gw: str, upstream: str) -> None:
    stream = await sdk(gw).chat.completions.create(
        model=MS, messages=[{"role": "user", "content": "count"}], max_tokens=6, stream=True)
    validator = schema_validator("CreateChatCompletionStreamResponse")
    chunks = []
    async for chunk in stream:
        validator.validate(chunk.model_dump(exclude_unset=True))
        chunks.append(chunk)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "tok " * 6
    assert all(c.usage is None for c in chunks)  # the client did not ask for usage
    assert chunks[-1].choices[0].finish_reason == "length"
    stats = await upstream_stats(upstream)
    assert stats["stream_options"][-1] == {"include_usage": True}  # asked upstream for limits and metrics


async def test_streaming_keeps_the_usage_chunk_when_asked(gw: str) -> None:
    stream = await sdk(gw).chat.completions.create(
        model=MS, messages=[{"role": "user", "content": "count"}], max_tokens=3, stream=True,
        stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3


async def test_predict_passes_the_body_through(gw: str) -> None:
    async with httpx.AsyncClient() as c:
        r = await c.post(f"{gw}/{MS}/v1/models/m:predict", json={"inputs": [1, 2]},
                         headers={"Authorization": "sk-good"})  # a bare key is accepted too (SPEC §6.3)
    assert r.status_code == 200 and r.json() == {"predictions": {"inputs": [1, 2]}}


async def test_a_large_answer_is_relayed_whole(gw: str) -> None:
    size = 20 * 1024 * 1024  # relayed as it arrives, never held whole by the gateway
    async with httpx.AsyncClient(timeout=60) as c:
        r = await c.post(f"{gw}/{MS}/v1/models/m:predict", json={"answer_bytes": size},
                         headers={"Authorization": "Bearer sk-good"})
    assert r.status_code == 200 and len(r.json()["predictions"]) == size


async def _error(coro: object, status: int) -> dict[str, object]:
    with pytest.raises(openai.APIStatusError) as info:
        await coro  # type: ignore[misc]
    assert info.value.status_code == status
    body = info.value.response.json()
    schema_validator(ERROR).validate(body)
    return body["error"]  # type: ignore[no-any-return]


async def test_errors_in_openai_shape(gw: str, source: StubRouteSource, upstream: str) -> None:
    msgs = [{"role": "user", "content": "x"}]
    assert (await _error(sdk(gw, key="sk-bad").chat.completions.create(model=MS, messages=msgs), 401))[
        "code"] == "invalid_api_key"
    async with httpx.AsyncClient() as c:  # no key at all (the SDK refuses to send none)
        r = await c.post(f"{gw}/{MS}/v1/chat/completions", json={"model": MS, "messages": msgs})
        assert r.status_code == 401 and "didn't provide" in r.json()["error"]["message"]
    err = await _error(sdk(gw, base="ms-unknown1").chat.completions.create(model="ms-unknown1", messages=msgs), 404)
    assert err["code"] == "model_not_found"
    await _error(sdk(gw, base="").chat.completions.create(model="ms-nothere", messages=msgs), 404)
    big = "x" * (601 * 1024)
    err = await _error(sdk(gw).chat.completions.create(model=MS, messages=[{"role": "user", "content": big}]), 413)
    assert err["code"] == "request_too_large"
    async with httpx.AsyncClient() as c:
        r = await c.post(f"{gw}/{MS}/v1/chat/completions", content=b"{not json", headers={"Authorization": "sk-good"})
        assert r.status_code == 400
        schema_validator(ERROR).validate(r.json())
        r = await c.get(f"{gw}/{MS}/v1/chat/completions", headers={"Authorization": "sk-good"})
        assert r.status_code == 405
        schema_validator(ERROR).validate(r.json())
        r = await c.post(f"{gw}/{MS}/v2/whatever", headers={"Authorization": "sk-good"})
        assert r.status_code == 404
        schema_validator(ERROR).validate(r.json())
    # a disabled key, then auth switched off live
    disabled = inference_pb2.RouteKey(key_id="k1", secret_sha256=sha("sk-good"), enabled=False)
    source.set(route(MS, [("r1", "v1", upstream)], keys=[disabled]))
    await _wait_revision(gw, source)
    assert "disabled" in str((await _error(sdk(gw).models.list(), 401))["message"])
    source.set(route(MS, [("r1", "v1", upstream)], auth=False))
    await _wait_revision(gw, source)
    assert (await sdk(gw, key="anything").models.list()).data


async def _wait_revision(gw: str, source: StubRouteSource) -> None:
    """Two polls after the change: the gateway has applied the new table."""
    target = source.calls + 2
    async with asyncio.timeout(10):
        while source.calls < target:
            await asyncio.sleep(0.02)


async def test_no_ready_instance_is_503_and_dead_instances_502(gw: str, source: StubRouteSource) -> None:
    isolated = route(MS, [("r1", "v1", "127.0.0.1:1")])
    isolated.replicas[0].isolated = True
    source.set(isolated)
    await _wait_revision(gw, source)
    err = await _error(sdk(gw).chat.completions.create(model=MS, messages=[{"role": "user", "content": "x"}]), 503)
    assert err["type"] == "server_error"
    source.set(route(MS, [("r1", "v1", closed_addr()), ("r2", "v1", closed_addr())]))
    await _wait_revision(gw, source)
    await _error(sdk(gw).chat.completions.create(model=MS, messages=[{"role": "user", "content": "x"}]), 502)


async def test_a_failed_connection_is_retried_on_another_instance(
    gw: str, source: StubRouteSource, upstream: str
) -> None:
    source.set(route(MS, [("dead1", "v1", closed_addr()), ("dead2", "v1", closed_addr()), ("ok", "v1", upstream)]))
    await _wait_revision(gw, source)
    client = sdk(gw)
    for _ in range(10):  # least in-flight ties break on order: every call meets a dead instance first or not
        c = await client.chat.completions.create(model=MS, messages=[{"role": "user", "content": "x"}], max_tokens=1)
        assert c.choices


async def test_a_client_that_leaves_cancels_the_upstream_stream(tmp_path: Path, settings: GatewaySettings) -> None:
    with fake_upstream(tmp_path, "slow", tokens_per_second=20) as slow:
        async with served_gateway(settings, StubRouteSource(route(MS, [("r1", "v1", slow)]))) as url:
            async with httpx.AsyncClient(timeout=10) as c:
                body = {"model": MS, "messages": [{"role": "user", "content": "x"}], "max_tokens": 200, "stream": True}
                async with c.stream("POST", f"{url}/{MS}/v1/chat/completions", json=body,
                                    headers={"Authorization": "Bearer sk-good"}) as r:
                    async for line in r.aiter_lines():
                        if "tok" in line:
                            break  # one token, then hang up
            async with asyncio.timeout(10):
                while (await upstream_stats(slow))["cancelled"] < 1:
                    await asyncio.sleep(0.05)
            assert (await upstream_stats(slow))["completed"] == 0
