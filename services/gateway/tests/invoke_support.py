"""Helpers of the invocation tests: the FAKE upstream engine (scripts/fake_openai_upstream.py) as a
process, a test double of the routing table source, and a gateway served by uvicorn on a free port."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from capstan_gateway import GatewaySettings, create_app
from capstan_proto import inference_pb2

REPO = Path(__file__).resolve().parents[3]
FAKE_UPSTREAM = REPO / "scripts" / "fake_openai_upstream.py"
# OpenAI's published schemas: ../shared/openai beside the checkout, else the copy of that file kept in
# tests/data (a clean clone elsewhere validates against the same schemas).
SCHEMAS_FILE = next((p for p in (REPO.parent / "shared" / "openai" / "openai_schemas.json",
                                 REPO / "tests" / "data" / "openai_schemas.json") if p.is_file()),
                    REPO / "tests" / "data" / "openai_schemas.json")


def schema_validator(name: str) -> Any:
    """A validator of OpenAI's published schema ``name``."""
    import jsonschema

    return jsonschema.Draft202012Validator(json.loads(SCHEMAS_FILE.read_text())[name])


def sha(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def wait_file(path: Path, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} not written")
        time.sleep(0.02)
    return path.read_text().strip()


@contextmanager
def fake_upstream_process(tmp: Path, name: str = "up", tokens_per_second: float = 0.0,
                          served: str = "fake-model") -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A FAKE engine process; yields its host:port and the process."""
    ready = tmp / f"{name}.addr"
    proc = subprocess.Popen(
        [sys.executable, str(FAKE_UPSTREAM), "--port", "0", "--ready-file", str(ready),
         "--tokens-per-second", str(tokens_per_second), "--served-model-name", served],
    )
    try:
        yield wait_file(ready, proc), proc
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def fake_upstream(tmp: Path, name: str = "up", tokens_per_second: float = 0.0,
                  served: str = "fake-model") -> Iterator[str]:
    """A FAKE engine process; yields its host:port."""
    with fake_upstream_process(tmp, name, tokens_per_second, served) as (addr, _):
        yield addr


async def upstream_stats(addr: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as c:
        return (await c.get(f"http://{addr}/_fake/stats")).json()


def route(
    service_id: str, replicas: list[tuple[str, str, str]], *, auth: bool = True,
    keys: list[inference_pb2.RouteKey] | None = None, versions: list[inference_pb2.RouteVersion] | None = None,
    group_qps: int = 0,
) -> inference_pb2.ServiceRoute:
    """A service with ``replicas`` as (replica id, version id, address), all ready."""
    versions = versions or [inference_pb2.RouteVersion(version_id="v1", weight=100, protocol="openai",
                                                      served_model_name="fake-model")]
    return inference_pb2.ServiceRoute(
        service_id=service_id, name=service_id, state="Running", auth_enabled=auth, group_qps_limit=group_qps,
        versions=versions,
        replicas=[inference_pb2.RouteReplica(replica_id=r, version_id=v, address=a, ready=True) for r, v, a in replicas],
        keys=keys if keys is not None else [inference_pb2.RouteKey(key_id="k1", secret_sha256=sha("sk-good"),
                                                                   enabled=True)],
    )


class StubRouteSource:
    """TEST DOUBLE of the inference service's ListRoutes: a table the test edits."""

    def __init__(self, *services: inference_pb2.ServiceRoute) -> None:
        self.revision = 1
        self.services = list(services)
        self.calls = 0

    def set(self, *services: inference_pb2.ServiceRoute) -> None:
        self.services = list(services)
        self.revision += 1

    async def list_routes(self, revision: int) -> inference_pb2.ListRoutesResponse:
        self.calls += 1
        if revision == self.revision:
            return inference_pb2.ListRoutesResponse(revision=revision, unchanged=True)
        return inference_pb2.ListRoutesResponse(revision=self.revision, services=self.services)


@asynccontextmanager
async def served_gateway(settings: GatewaySettings, source: Any) -> AsyncIterator[str]:
    """The gateway app under uvicorn on a free loopback port, in this event loop; yields its URL."""
    app = create_app(settings)
    app.state.invoke_route_source = source
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, lifespan="on"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            await task
            raise RuntimeError("the gateway stopped before serving")
        await asyncio.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
