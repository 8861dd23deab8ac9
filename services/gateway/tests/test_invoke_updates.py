"""Zero-drop updates, the gateway's side: under steady load (the openai SDK, streaming and not), the
routing table moves a service to a new version and isolates an instance, and the replaced instances'
processes end once what they were serving is done: not one call fails. (The inference service's
side, which decides when an instance leaves the table and when it stops, is tested with it.)"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import openai

from capstan_gateway import GatewaySettings
from capstan_proto import inference_pb2

from .invoke_support import StubRouteSource, fake_upstream, fake_upstream_process, route, served_gateway, upstream_stats

MS = "ms-roll1234"
V1 = inference_pb2.RouteVersion(version_id="v1", weight=100, served_model_name="fake-model")
V2 = inference_pb2.RouteVersion(version_id="v2", weight=100, served_model_name="fake-model")


async def _drained(addr: str) -> None:
    """Until the instance has answered everything it received."""
    async with asyncio.timeout(20):
        while True:
            s = await upstream_stats(addr)
            if len(s["arrivals"]) == s["completed"] + s["cancelled"]:
                return
            await asyncio.sleep(0.05)


async def _applied(source: StubRouteSource) -> None:
    target = source.calls + 2  # two polls: the gateway holds the new table
    async with asyncio.timeout(10):
        while source.calls < target:
            await asyncio.sleep(0.02)


async def test_rolling_to_a_new_version_and_isolating_drop_nothing(settings: GatewaySettings, tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        old, old_proc = stack.enter_context(fake_upstream_process(tmp_path, "old", tokens_per_second=200))
        new1, new1_proc = stack.enter_context(fake_upstream_process(tmp_path, "new1", tokens_per_second=200))
        new2 = stack.enter_context(fake_upstream(tmp_path, "new2", tokens_per_second=200))
        source = StubRouteSource(route(MS, [("old", "v1", old)], auth=False, versions=[V1]))
        async with served_gateway(settings, source) as gw:
            client = openai.AsyncOpenAI(base_url=f"{gw}/{MS}/v1", api_key="none", max_retries=0)
            stop = asyncio.Event()
            done = {"ok": 0}

            async def caller(i: int) -> None:
                msgs = [{"role": "user", "content": f"call {i}"}]
                while not stop.is_set():
                    if i % 2:
                        stream = await client.chat.completions.create(model=MS, messages=msgs, max_tokens=8,
                                                                      stream=True)
                        assert [c async for c in stream][-1].choices[0].finish_reason == "length"
                    else:
                        c = await client.chat.completions.create(model=MS, messages=msgs, max_tokens=8)
                        assert c.choices[0].finish_reason == "length"
                    done["ok"] += 1

            callers = [asyncio.create_task(caller(i)) for i in range(8)]
            async with asyncio.timeout(30):
                while done["ok"] < 20:
                    await asyncio.sleep(0.02)
                # surge: the new version's instances join; then the old one leaves the table
                source.set(route(MS, [("old", "v1", old), ("new1", "v2", new1), ("new2", "v2", new2)], auth=False,
                                 versions=[V1, V2]))
                await _applied(source)
                source.set(route(MS, [("new1", "v2", new1), ("new2", "v2", new2)], auth=False, versions=[V2]))
                await _applied(source)
                await _drained(old)
                served_by_old = len((await upstream_stats(old))["arrivals"])
                old_proc.terminate()  # the replaced instance ends once it served what it had
                before = done["ok"]
                while done["ok"] < before + 20:
                    await asyncio.sleep(0.02)
                # isolate one instance: it keeps running, gets no new calls
                isolated = route(MS, [("new1", "v2", new1), ("new2", "v2", new2)], auth=False, versions=[V2])
                isolated.replicas[0].isolated = True
                source.set(isolated)
                await _applied(source)
                await _drained(new1)
                served_by_new1 = len((await upstream_stats(new1))["arrivals"])
                before = done["ok"]
                while done["ok"] < before + 20:
                    await asyncio.sleep(0.02)
                assert len((await upstream_stats(new1))["arrivals"]) == served_by_new1  # isolated: no new calls
                new1_proc.terminate()  # then rebuilt, say: its process ends
                before = done["ok"]
                while done["ok"] < before + 20:
                    await asyncio.sleep(0.02)
            stop.set()
            await asyncio.gather(*callers)  # any failed call raises here
            assert served_by_old > 0 and served_by_new1 > 0
            assert len((await upstream_stats(new2))["arrivals"]) > 0
