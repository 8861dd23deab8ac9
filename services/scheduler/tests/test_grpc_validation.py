"""The scheduler's gRPC edge: bad input is refused with a status naming the problem, and appends nothing."""

from __future__ import annotations

import asyncio
import base64
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from nats.aio.client import Client

from capstan_core.contracts.capacity import MAX_NODE_CARDS, MAX_NODE_CPU, MAX_NODE_MEMORY_GIB
from capstan_core.grpcutil import ANSWERED_BY
from capstan_core.service import Service
from capstan_core.settings import ServiceSettings
from capstan_core.streams import EVENTS_STREAM
from capstan_core.testing import admin_channel
from capstan_proto import common_pb2, scheduler_pb2, scheduler_pb2_grpc
from capstan_scheduler.service import DEFINITION as SCHEDULER


@pytest.fixture
async def s(tmp_path: Path, nats_server: Any, secrets_dir: Path) -> AsyncIterator[scheduler_pb2_grpc.SchedulerStub]:
    sched = Service(SCHEDULER, ServiceSettings(secrets_dir=secrets_dir, data_dir=tmp_path / "s", nats_url=nats_server.url))
    await sched.start()
    async with admin_channel(sched.address, "scheduler", secrets_dir) as ch:
        yield scheduler_pb2_grpc.SchedulerStub(ch)
    await sched.stop()


@pytest.fixture
def last_seq(nc: Client) -> Callable[[], Awaitable[int]]:
    """The event stream's last sequence: a refused command must leave it where it was."""

    async def seq() -> int:
        return int((await nc.jetstream().stream_info(EVENTS_STREAM)).state.last_seq)

    return seq


async def refused(call: Awaitable[Any], code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call
    assert e.value.code() == code, e.value.details()
    assert (ANSWERED_BY, "scheduler") in tuple(e.value.trailing_metadata() or ())  # the scheduler itself refused
    return e.value.details() or ""


async def group(s: scheduler_pb2_grpc.SchedulerStub, name: str) -> str:
    return str((await s.CreateResourceGroup(scheduler_pb2.CreateResourceGroupRequest(name=name))).id)


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        ({"cpu": 1e308}, f"cpu must be at most {MAX_NODE_CPU} cores"),
        ({"cpu": math.inf}, "cpu must be a finite number"),
        ({"cpu": -math.inf}, "cpu must be a finite number"),
        ({"cpu": math.nan}, "cpu must be a finite number"),
        ({"memory_gib": 1e308}, f"memory_gib must be at most {MAX_NODE_MEMORY_GIB} GiB"),
        ({"gpus": {"A100": MAX_NODE_CARDS + 1}}, f"gpus['A100'] must be 0..{MAX_NODE_CARDS} cards"),
    ],
)
async def test_a_node_declaring_more_than_any_node_may_is_refused(
    s: scheduler_pb2_grpc.SchedulerStub, last_seq: Callable[[], Awaitable[int]], declared: dict[str, Any], message: str
) -> None:
    rg = await group(s, "pool")
    before = await last_seq()
    req = scheduler_pb2.JoinNodeRequest(resource_group_id=rg, name="big", agent_kind="trainer", cpu=8, memory_gib=8)
    for key, value in declared.items():
        if key == "gpus":
            req.gpus.update(value)
        else:
            setattr(req, key, value)
    assert (await refused(s.JoinNode(req), grpc.StatusCode.INVALID_ARGUMENT)).startswith(message)
    assert await last_seq() == before


async def test_two_groups_cannot_share_a_name(
    s: scheduler_pb2_grpc.SchedulerStub, last_seq: Callable[[], Awaitable[int]]
) -> None:
    first = await group(s, "pool")
    other = await group(s, "other")
    before = await last_seq()
    message = await refused(
        s.CreateResourceGroup(scheduler_pb2.CreateResourceGroupRequest(name="pool")), grpc.StatusCode.ALREADY_EXISTS
    )
    assert message == f"a resource group named 'pool' already exists ({first}); choose another name"
    rename = scheduler_pb2.UpdateResourceGroupRequest(id=other, name="pool")
    assert first in await refused(s.UpdateResourceGroup(rename), grpc.StatusCode.ALREADY_EXISTS)
    assert await last_seq() == before
    # A retried create (same idempotency key) is the same group, not a second one of its name.
    keyed = scheduler_pb2.CreateResourceGroupRequest(name="keyed", idempotency_key="k1")
    assert (await s.CreateResourceGroup(keyed)).id == (await s.CreateResourceGroup(keyed)).id
    # Once the group is deleted, its name is free again.
    await s.DeleteResourceGroup(scheduler_pb2.DeleteResourceGroupRequest(id=first))
    assert (await s.UpdateResourceGroup(rename)).name == "pool"


async def test_concurrent_creates_of_one_name_make_one_group(s: scheduler_pb2_grpc.SchedulerStub) -> None:
    calls = [s.CreateResourceGroup(scheduler_pb2.CreateResourceGroupRequest(name="race")) for _ in range(8)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    created = [r for r in results if isinstance(r, scheduler_pb2.ResourceGroup)]
    refusals = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(created) == 1 and len(refusals) == 7
    assert {r.code() for r in refusals} == {grpc.StatusCode.ALREADY_EXISTS}
    listed = await s.ListResourceGroups(scheduler_pb2.ListResourceGroupsRequest())
    assert [g.name for g in listed.items] == ["race"]


@pytest.mark.parametrize("offset", [10**30, 2**63])
async def test_a_forged_page_token_is_refused(s: scheduler_pb2_grpc.SchedulerStub, offset: int) -> None:
    page = common_pb2.PageRequest(page_token=base64.urlsafe_b64encode(str(offset).encode()).decode())
    for call in (
        s.ListResourceGroups(scheduler_pb2.ListResourceGroupsRequest(page=page)),
        s.ListNodes(scheduler_pb2.ListNodesRequest(page=page)),
        s.ListHealthChecks(scheduler_pb2.ListHealthChecksRequest(page=page)),
    ):
        assert await refused(call, grpc.StatusCode.INVALID_ARGUMENT) == "page_token is not one this service issued"


async def test_an_id_that_is_no_subject_is_refused(
    s: scheduler_pb2_grpc.SchedulerStub, last_seq: Callable[[], Awaitable[int]]
) -> None:
    before = await last_seq()
    for bad in (">", "node-*", "a b"):
        message = await refused(
            s.ReleaseNodes(scheduler_pb2.ReleaseNodesRequest(node_ids=[bad])), grpc.StatusCode.INVALID_ARGUMENT
        )
        assert message == f"{bad!r} is not a valid id"
    assert await last_seq() == before
