"""Node agents' heartbeats and an operator's reads through real gRPC, from a process of their own
(``test_loop_latency.py`` runs it): ``python load_agents.py ADDRESS RG NODES_FILE OUT_FILE SECRETS_DIR``.
They call as the operator (``admin``, from SECRETS_DIR), who may heartbeat for any node.

Each node heartbeats every ``--period`` seconds (staggered); a probe calls ``GetResourceGroup`` every
``--probe-every`` seconds. Every call is recorded as (sent, answered, outcome) on the system-wide
monotonic clock, so the test can tell which calls overlapped a scheduling cycle. ``ready`` is written
next to OUT_FILE once every node has been answered once; SIGTERM ends the run and writes OUT_FILE.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from pathlib import Path

import grpc

from capstan_core.testing import admin_channel
from capstan_proto import scheduler_pb2, scheduler_pb2_grpc

Call = tuple[float, float, str]


async def run(args: argparse.Namespace) -> None:
    node_ids: list[str] = json.loads(Path(args.nodes_file).read_text())
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    beats: list[Call] = []
    probes: list[Call] = []
    answered: set[str] = set()
    out = Path(args.out_file)
    async with admin_channel(args.address, "scheduler", Path(args.secrets_dir)) as channel:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)

        async def call(record: list[Call], rpc: object, request: object) -> str:
            t0 = time.monotonic()
            try:
                resp = await rpc(request, timeout=10)  # type: ignore[operator]
                outcome = str(getattr(resp, "state", "") or "ok")
            except grpc.aio.AioRpcError as e:
                outcome = e.code().name
            record.append((t0, time.monotonic(), outcome))
            return outcome

        async def agent(node_id: str, offset: float) -> None:
            await asyncio.sleep(offset)
            while not stop.is_set():
                t0 = time.monotonic()
                if await call(beats, stub.Heartbeat, scheduler_pb2.HeartbeatRequest(node_id=node_id)) == "Running":
                    answered.add(node_id)
                    if len(answered) == len(node_ids) and not (out.parent / "ready").exists():
                        (out.parent / "ready").write_text("")
                await asyncio.sleep(max(0.0, args.period - (time.monotonic() - t0)))

        async def probe() -> None:
            while not stop.is_set():
                await call(probes, stub.GetResourceGroup, scheduler_pb2.GetResourceGroupRequest(id=args.rg))
                await asyncio.sleep(args.probe_every)

        tasks = [asyncio.create_task(agent(n, args.period * i / len(node_ids))) for i, n in enumerate(node_ids)]
        tasks.append(asyncio.create_task(probe()))
        await stop.wait()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    out.write_text(json.dumps({"beats": beats, "probes": probes}))


def main() -> None:
    p = argparse.ArgumentParser()
    for name in ("address", "rg", "nodes_file", "out_file", "secrets_dir"):
        p.add_argument(name)
    p.add_argument("--period", type=float, default=0.5)
    p.add_argument("--probe-every", type=float, default=0.05)
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
