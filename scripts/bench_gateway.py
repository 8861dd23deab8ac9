"""Gateway invocation overhead, side by side in one run: the same calls straight to a FAKE fast
OpenAI-compatible engine (scripts/fake_openai_upstream.py) and through one `capstan-gateway` process
(its routing table from a FAKE Inference ListRoutes over mTLS, counters on a real nats-server).

    .venv/bin/python scripts/bench_gateway.py [--quick]

Prints, for each figure, direct vs gateway and the ratio, then checks the targets of issue #9:
added p50 <= 2 ms and p99 <= 10 ms (non-streaming, one caller at a time); at 50 tokens/s per stream,
chunk throughput >= 95% of direct at 32 streams and >= 90% at 128, time to first token <= 5 ms above
direct; >= 1,000 requests/s through the gateway at 32 concurrent callers.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import grpc

from capstan_core import credentials
from capstan_core.natsserver import free_port
from capstan_core.testing import make_secrets, start_secure_nats
from capstan_proto import inference_pb2, inference_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
MS = "ms-bench001"
BODY = {"model": MS, "messages": [{"role": "user", "content": "hello there, how are you"}], "max_tokens": 16}


class FakeInference(inference_pb2_grpc.InferenceServicer):
    """FAKE inference service: ListRoutes answers one service on the fake engines."""

    def __init__(self, fast: str, paced: str) -> None:
        version = inference_pb2.RouteVersion(version_id="v1", weight=100, protocol="openai",
                                             served_model_name="fake-model")

        def service(sid: str, addr: str, v: inference_pb2.RouteVersion) -> inference_pb2.ServiceRoute:
            return inference_pb2.ServiceRoute(
                service_id=sid, state="Running", auth_enabled=True, group_qps_limit=0, versions=[v],
                replicas=[inference_pb2.RouteReplica(replica_id="r1", version_id="v1", address=addr, ready=True)],
                keys=[inference_pb2.RouteKey(key_id="k1", enabled=True,
                                             secret_sha256=hashlib.sha256(KEY.encode()).hexdigest())])

        self.routes = inference_pb2.ListRoutesResponse(
            revision=1, services=[service(MS, fast, version), service("ms-paced001", paced, version)])

    async def ListRoutes(self, request: Any, context: Any) -> Any:  # noqa: N802
        if request.revision == 1:
            return inference_pb2.ListRoutesResponse(revision=1, unchanged=True)
        return self.routes


KEY = "sk-bench"
PROFILE: list[str] = []  # --profile PATH: the gateway runs under cProfile, its stats written there


def _wait(path: Path, proc: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + 30
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{proc.args[:3]} did not start")
        time.sleep(0.02)
    return path.read_text().strip()


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def latency(session: aiohttp.ClientSession, url: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        async with session.post(url, json=BODY) as r:
            await r.read()
            assert r.status == 200, r.status
        out.append((time.perf_counter() - t) * 1000)
    return out


async def throughput(session: aiohttp.ClientSession, url: str, callers: int, seconds: float) -> float:
    done = 0
    until = time.perf_counter() + seconds

    async def caller() -> None:
        nonlocal done
        while time.perf_counter() < until:
            async with session.post(url, json=BODY) as r:
                await r.read()
                assert r.status == 200, r.status
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    return done / (time.perf_counter() - start)


async def streams(session: aiohttp.ClientSession, url: str, n: int, tokens: int) -> tuple[float, float]:
    """n concurrent streams of ``tokens`` tokens: (content chunks per second overall, mean TTFT ms)."""
    chunks = 0
    ttfts: list[float] = []
    body = {**BODY, "model": "ms-paced001", "stream": True, "max_tokens": tokens}

    async def one() -> None:
        nonlocal chunks
        t = time.perf_counter()
        first = True
        async with session.post(url, json=body) as r:
            assert r.status == 200, r.status
            async for line in r.content:
                if line.startswith(b"data: {") and b'"content": "tok' in line or b'"content":"tok' in line:
                    if first:
                        ttfts.append((time.perf_counter() - t) * 1000)
                        first = False
                    chunks += 1

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    return chunks / (time.perf_counter() - start), statistics.mean(ttfts)


async def run(quick: bool) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-gw-"))
    secrets = make_secrets(tmp / "secrets")
    nats = start_secure_nats(tmp / "nats", secrets)
    procs: list[subprocess.Popen[bytes]] = []
    server = grpc.aio.server()
    try:
        fake = ROOT / "scripts" / "fake_openai_upstream.py"
        for name, tps in (("fast", "0"), ("paced", "50")):
            procs.append(subprocess.Popen([sys.executable, str(fake), "--ready-file", str(tmp / name),
                                           "--tokens-per-second", tps]))
        fast, paced = _wait(tmp / "fast", procs[0]), _wait(tmp / "paced", procs[1])
        servicer = FakeInference(fast, paced)
        inference_pb2_grpc.add_InferenceServicer_to_server(servicer, server)
        port = server.add_secure_port("127.0.0.1:0", credentials.load(secrets, "inference").tls.server_credentials())
        await server.start()
        env = {**os.environ, "CAPSTAN_DATA_DIR": str(tmp / "gw"), "CAPSTAN_SECRETS_DIR": str(secrets),
               "CAPSTAN_HTTP_LISTEN": "127.0.0.1:0", "CAPSTAN_SCHEDULER_ADDR": f"127.0.0.1:{free_port()}",
               "CAPSTAN_TRAINER_ADDR": f"127.0.0.1:{free_port()}", "CAPSTAN_INFERENCE_ADDR": f"127.0.0.1:{port}",
               "CAPSTAN_NATS_URL": nats.url, "CAPSTAN_LOG_LEVEL": "WARNING"}
        profile = ["-m", "cProfile", "-o", PROFILE[0]] if PROFILE else []
        procs.append(subprocess.Popen([sys.executable, *profile, "-m", "capstan_gateway", "--ready-file",
                                       str(tmp / "gw.url")], env=env))
        gw = _wait(tmp / "gw.url", procs[2])
        direct = f"http://{fast}/v1/chat/completions"
        via = f"{gw}/{MS}/v1/chat/completions"
        direct_paced = f"http://{paced}/v1/chat/completions"
        via_paced = f"{gw}/ms-paced001/v1/chat/completions"
        headers = {"Authorization": f"Bearer {KEY}"}
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
            deadline = time.monotonic() + 20
            while True:  # until the gateway has the table
                async with session.post(via, json=BODY) as r:
                    if r.status == 200:
                        break
                if time.monotonic() > deadline:
                    raise SystemExit(f"the gateway never routed {MS}: {r.status}")
                await asyncio.sleep(0.1)
            n = 500 if quick else 2000
            await latency(session, direct, 200)  # warm both paths
            await latency(session, via, 200)
            lat_d, lat_g = [], []
            for _ in range(4):  # interleaved rounds: drift on the machine hits both alike
                lat_d += await latency(session, direct, n // 4)
                lat_g += await latency(session, via, n // 4)
            secs = 3.0 if quick else 6.0
            rps_d = await throughput(session, direct, 32, secs)
            rps_g = await throughput(session, via, 32, secs)
            tokens = 50 if quick else 100  # 1 s / 2 s of tokens per stream at 50 tokens/s
            st = {}
            for n_streams in (32, 128):
                await streams(session, direct_paced, n_streams, 2)  # warm: connections open on both paths
                await streams(session, via_paced, n_streams, 2)
                st[n_streams] = {"direct": await streams(session, direct_paced, n_streams, tokens),
                                 "gateway": await streams(session, via_paced, n_streams, tokens)}
    finally:
        await server.stop(None)
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)
        nats.stop()
    p50_add = pct(lat_g, 0.5) - pct(lat_d, 0.5)
    p99_add = pct(lat_g, 0.99) - pct(lat_d, 0.99)
    result = {
        "non_streaming_ms": {"direct_p50": pct(lat_d, 0.5), "gateway_p50": pct(lat_g, 0.5),
                             "direct_p99": pct(lat_d, 0.99), "gateway_p99": pct(lat_g, 0.99),
                             "added_p50": p50_add, "added_p99": p99_add},
        "requests_per_s_32_callers": {"direct": rps_d, "gateway": rps_g},
        "streams": {str(k): {"direct_chunks_per_s": v["direct"][0], "gateway_chunks_per_s": v["gateway"][0],
                             "ratio": v["gateway"][0] / v["direct"][0], "direct_ttft_ms": v["direct"][1],
                             "gateway_ttft_ms": v["gateway"][1]} for k, v in st.items()},
    }
    checks = {
        "added p50 <= 2 ms": p50_add <= 2.0,
        "added p99 <= 10 ms": p99_add <= 10.0,
        ">= 95% of direct chunks/s at 32 streams": result["streams"]["32"]["ratio"] >= 0.95,
        ">= 90% of direct chunks/s at 128 streams": result["streams"]["128"]["ratio"] >= 0.90,
        **{f"TTFT <= direct + 5 ms at {n} streams": v["gateway_ttft_ms"] - v["direct_ttft_ms"] <= 5.0
           for n, v in result["streams"].items()},
        ">= 1000 req/s through the gateway at 32 callers": rps_g >= 1000,
    }
    result["checks"] = checks
    result["load_average_1m"] = os.getloadavg()[0]
    result["cpus"] = os.cpu_count()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer calls, shorter runs")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--profile", help="run the gateway under cProfile and write its stats here")
    args = parser.parse_args()
    if args.profile:
        PROFILE.append(args.profile)
    try:
        import uvloop

        r = uvloop.run(run(args.quick))
    except ImportError:
        r = asyncio.run(run(args.quick))
    ns = r["non_streaming_ms"]
    print(f"machine: {r['cpus']} CPUs, load average {r['load_average_1m']:.1f} at the end (bench client, fake "
          "engines and gateway share them)")
    print(f"non-streaming, 1 caller: p50 direct {ns['direct_p50']:.2f} ms, gateway {ns['gateway_p50']:.2f} ms "
          f"(+{ns['added_p50']:.2f}); p99 direct {ns['direct_p99']:.2f}, gateway {ns['gateway_p99']:.2f} "
          f"(+{ns['added_p99']:.2f})")
    rps = r["requests_per_s_32_callers"]
    print(f"32 concurrent callers: direct {rps['direct']:.0f} req/s, gateway {rps['gateway']:.0f} req/s "
          f"({rps['gateway'] / rps['direct']:.0%} of direct)")
    for n, s in r["streams"].items():
        print(f"{n} streams at 50 tokens/s: direct {s['direct_chunks_per_s']:.0f} chunks/s, gateway "
              f"{s['gateway_chunks_per_s']:.0f} ({s['ratio']:.1%}); TTFT direct {s['direct_ttft_ms']:.1f} ms, "
              f"gateway {s['gateway_ttft_ms']:.1f} ms (+{s['gateway_ttft_ms'] - s['direct_ttft_ms']:.1f})")
    for name, ok in r["checks"].items():
        print(f"  [{'ok' if ok else 'MISSED'}] {name}")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
