"""Every gRPC server is mutual TLS: health for any platform identity, reflection for the operator only,
nothing without a certificate of the platform CA."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from capstan_core import credentials, grpcutil, pki
from capstan_core.service import Service, ServiceDefinition
from capstan_core.settings import ServiceSettings
from capstan_core.testing import admin_channel
from capstan_inference.service import DEFINITION as INFERENCE
from capstan_proto import scheduler_pb2, scheduler_pb2_grpc
from capstan_registry.service import DEFINITION as REGISTRY
from capstan_scheduler.service import DEFINITION as SCHEDULER
from capstan_trainer.service import DEFINITION as TRAINER

CASES = [
    (SCHEDULER, "capstan.v1.Scheduler"),
    (TRAINER, "capstan.v1.Trainer"),
    (REGISTRY, "capstan.v1.Registry"),
    (INFERENCE, "capstan.v1.Inference"),
]


@pytest.mark.parametrize(("definition", "full_name"), CASES, ids=[c[0].name for c in CASES])
async def test_health_and_reflection(
    definition: ServiceDefinition, full_name: str, tmp_path: Path, nats_server: Any, secrets_dir: Path
) -> None:
    """Health answers any platform identity; reflection (the whole API surface) only the operator."""
    svc = Service(definition, ServiceSettings(
        secrets_dir=secrets_dir, data_dir=tmp_path, nats_url=nats_server.url, scheduler_addr="127.0.0.1:1"))
    await svc.start()
    try:
        async with admin_channel(svc.address, definition.name, secrets_dir) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            for name in ("", full_name):
                resp = await health.Check(health_pb2.HealthCheckRequest(service=name))
                assert resp.status == health_pb2.HealthCheckResponse.SERVING
            assert {full_name, "capstan.v1.Admin", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= await _services(ch)
        async with grpcutil.channel(svc.address, definition.name, credentials.load(secrets_dir, "gateway").tls) as ch:
            resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await _services(ch)
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await svc.stop()
    # stopped: the port no longer answers
    async with admin_channel(svc.address, definition.name, secrets_dir) as ch:
        with pytest.raises(grpc.aio.AioRpcError):
            await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)


async def _services(ch: grpc.aio.Channel) -> set[str]:
    refl = reflection_pb2_grpc.ServerReflectionStub(ch)

    async def requests():  # type: ignore[no-untyped-def]
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    names: set[str] = set()
    async for r in refl.ServerReflectionInfo(requests()):
        names |= {s.name for s in r.list_services_response.service}
    return names


async def test_no_call_without_a_certificate_of_the_platform_ca(tmp_path: Path, nats_server: Any, secrets_dir: Path) -> None:
    """Plain TCP, TLS without a client certificate, and a certificate from another CA claiming to be
    the operator are all refused at the handshake; the bootstrap port answers BootstrapNode only."""
    svc = Service(SCHEDULER, ServiceSettings(secrets_dir=secrets_dir, data_dir=tmp_path, nats_url=nats_server.url))
    await svc.start()
    try:
        request = health_pb2.HealthCheckRequest()
        rogue_ca = pki.create_ca()
        rogue = pki.issue(rogue_ca, "admin")
        ca_pem = (secrets_dir / "ca.crt").read_bytes()
        opts = [("grpc.ssl_target_name_override", pki.server_name("scheduler"))]
        attempts = {
            "plain": grpc.aio.insecure_channel(svc.address),
            "tls, no certificate": grpc.aio.secure_channel(svc.address, grpc.ssl_channel_credentials(ca_pem), opts),
            "another CA's admin": grpc.aio.secure_channel(
                svc.address, grpc.ssl_channel_credentials(ca_pem, rogue.key_pem, rogue.cert_pem), opts),
        }
        for what, ch in attempts.items():
            async with ch:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await health_pb2_grpc.HealthStub(ch).Check(request, timeout=3)
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, what
        async with grpcutil.bootstrap_channel(svc.bootstrap_address, ca_pem) as ch:
            stub = scheduler_pb2_grpc.SchedulerStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as anon:
                await stub.ListResourceGroups(scheduler_pb2.ListResourceGroupsRequest())
            assert anon.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.aio.AioRpcError) as bad_token:
                await stub.BootstrapNode(scheduler_pb2.BootstrapNodeRequest(
                    join_token="cjt.jt-aaaaaaaa.forgedforgedforgedforged", node_name="x", agent_kind="trainer",
                    csr_pem=pki.make_csr(pki.new_key(), "x")))
            assert bad_token.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.aio.AioRpcError) as reflect:
                await _services(ch)
            assert reflect.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await svc.stop()


async def test_the_container_healthcheck_probe_uses_the_services_own_certificate(
    tmp_path: Path, nats_server: Any, secrets_dir: Path
) -> None:
    """``python -m capstan_core.healthprobe <svc>`` (the compose healthcheck): 0 while serving, 1 after."""
    import subprocess
    import sys

    svc = Service(REGISTRY, ServiceSettings(secrets_dir=secrets_dir, data_dir=tmp_path, nats_url=nats_server.url))
    await svc.start()
    env = {"PATH": "/usr/bin:/bin", "CAPSTAN_GRPC_LISTEN": f"0.0.0.0:{svc.address.rsplit(':', 1)[1]}",
           "CAPSTAN_SECRETS_DIR": str(secrets_dir)}

    def probe() -> int:
        return subprocess.run([sys.executable, "-m", "capstan_core.healthprobe", "registry"], env=env,
                              capture_output=True, timeout=60).returncode

    try:
        assert await asyncio.to_thread(probe) == 0
    finally:
        await svc.stop()
    assert await asyncio.to_thread(probe) == 1
