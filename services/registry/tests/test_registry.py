"""Registry service over a real nats-server, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from capstan_core.service import Service
from capstan_core.settings import ServiceSettings
from capstan_core.streams import EVENTS_STREAM
from capstan_core.testing import admin_channel
from capstan_proto import common_pb2, registry_pb2, registry_pb2_grpc
from capstan_registry.service import DEFINITION


@pytest.fixture
async def registry(tmp_path: Path, nats_server: Any, secrets_dir: Path, database_url: str) -> AsyncIterator[tuple[Service, Any]]:
    svc = Service(DEFINITION, ServiceSettings(secrets_dir=secrets_dir, data_dir=tmp_path, nats_url=nats_server.url, database_url=database_url))
    await svc.start()
    ch = admin_channel(svc.address, "registry", secrets_dir)
    yield svc, registry_pb2_grpc.RegistryStub(ch)
    await ch.close()
    await svc.stop()


async def _events(svc: Service) -> int:
    assert svc.ctx is not None
    return int((await svc.ctx.js.stream_info(EVENTS_STREAM)).state.messages)


async def test_create_get_list_paginated(registry: tuple[Service, Any]) -> None:
    _, stub = registry
    a = await stub.CreateModel(registry_pb2.CreateModelRequest(name="llama-tiny", description="d", tags={"k": "v"}))
    b = await stub.CreateModel(registry_pb2.CreateModelRequest(name="bert.small"))
    assert a.creator == "admin"  # the caller's certificate, never a request field
    assert (await stub.GetModel(registry_pb2.GetModelRequest(id=a.id))).tags == {"k": "v"}
    p1 = await stub.ListModels(registry_pb2.ListModelsRequest(page=common_pb2.PageRequest(page_size=1)))
    p2 = await stub.ListModels(registry_pb2.ListModelsRequest(page=common_pb2.PageRequest(page_size=1, page_token=p1.next_page_token)))
    assert p1.total == 2 and sorted(m.id for m in [*p1.items, *p2.items]) == sorted([a.id, b.id])
    assert p2.next_page_token == ""


async def test_idempotent_create_and_refusals_append_nothing(registry: tuple[Service, Any]) -> None:
    svc, stub = registry
    req = registry_pb2.CreateModelRequest(name="m1", idempotency_key="k1")
    first = await stub.CreateModel(req)
    count = await _events(svc)
    assert (await stub.CreateModel(req)).id == first.id
    for bad, code in [
        (registry_pb2.CreateModelRequest(name="m1"), grpc.StatusCode.ALREADY_EXISTS),
        (registry_pb2.CreateModelRequest(name="-bad"), grpc.StatusCode.INVALID_ARGUMENT),
        (registry_pb2.CreateModelRequest(name="x" * 200), grpc.StatusCode.INVALID_ARGUMENT),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.CreateModel(bad)
        assert e.value.code() == code and e.value.details()
    assert await _events(svc) == count
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.GetModel(registry_pb2.GetModelRequest(id="model-nope"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


async def test_search_only_mine_get_by_name_and_delete(registry: tuple[Service, Any]) -> None:
    svc, stub = registry
    a = await stub.CreateModel(registry_pb2.CreateModelRequest(name="tiny-gpt", description="A chat model", tags={"lang": "en"}))
    await stub.CreateModel(registry_pb2.CreateModelRequest(name="resnet", description="images"))

    async def names(**kw: Any) -> list[str]:
        got = await stub.ListModels(registry_pb2.ListModelsRequest(page=common_pb2.PageRequest(), **kw))
        return sorted(m.name for m in got.items)

    assert await names(query="GPT") == ["tiny-gpt"]
    assert await names(query="chat") == ["tiny-gpt"]  # the description
    assert await names(query="lang") == ["tiny-gpt"]  # the tags
    assert await names(query="zzz") == [] and await names(query="tiny_gpt") == []  # '_' is no wildcard
    assert await names(creator="admin") == ["resnet", "tiny-gpt"] and await names(creator="someone") == []
    assert (await stub.GetModel(registry_pb2.GetModelRequest(id="tiny-gpt"))).id == a.id
    assert (a.version_count, a.latest_version) == (0, 0)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.GetVersion(registry_pb2.GetVersionRequest(model_id=a.id))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and "has no version yet" in e.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.PublishVersion(registry_pb2.PublishVersionRequest(model_id=a.id, task_id="train-x"))
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE  # no trainer configured: said, not guessed

    await stub.DeleteModel(registry_pb2.DeleteModelRequest(id="tiny-gpt"))
    assert await names() == ["resnet"]
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.DeleteModel(registry_pb2.DeleteModelRequest(id=a.id))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    again = await stub.CreateModel(registry_pb2.CreateModelRequest(name="tiny-gpt"))  # the name is free again
    assert again.id != a.id


async def test_who_may_call_what(registry: tuple[Service, Any], secrets_dir: Path) -> None:
    """Users' calls come through the gateway; an online service (svc:inference) may resolve a model
    source and nothing else; other services may do neither."""
    from capstan_core import credentials, grpcutil

    svc, _ = registry

    def stub_as(identity: str) -> Any:
        return registry_pb2_grpc.RegistryStub(
            grpcutil.channel(svc.address, "registry", credentials.load(secrets_dir, identity).tls))

    inference, scheduler = stub_as("inference"), stub_as("scheduler")
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await inference.ResolveModelSource(registry_pb2.ResolveModelSourceRequest(model_id="nope"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND  # allowed through, and the model does not exist
    for call in (inference.ListModels(registry_pb2.ListModelsRequest()),
                 scheduler.ResolveModelSource(registry_pb2.ResolveModelSourceRequest(model_id="nope")),
                 scheduler.CreateModel(registry_pb2.CreateModelRequest(name="x"))):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await call
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_concurrent_creates_of_one_name_make_one_model(registry: tuple[Service, Any]) -> None:
    """Names are unique per tenant (the read model's unique index on tenant and name): creates of one name
    at once make one model, the others are refused, and nothing is set aside."""
    import asyncio

    svc, stub = registry
    results = await asyncio.gather(*(stub.CreateModel(registry_pb2.CreateModelRequest(name="race")) for _ in range(5)),
                                   return_exceptions=True)
    made = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(made) == 1 and len(refused) == 4
    assert all(e.code() == grpc.StatusCode.ALREADY_EXISTS and "already exists" in (e.details() or "") for e in refused)
    listed = await stub.ListModels(registry_pb2.ListModelsRequest(query="race"))
    assert [m.id for m in listed.items] == [made[0].id]
