"""A task's network mode: isolated (the default), none, or host only where the group's policy allows it."""

from __future__ import annotations

import json
import shutil
from typing import Any

import grpc
import pytest

from capstan_proto import common_pb2, scheduler_pb2, trainer_pb2

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")

# The interfaces the instance sees, one per line of its log.
SHOW = "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '"


def _submit(rg: str, name: str, network: str = "", command: str = "true") -> trainer_pb2.CreateTrainingTaskRequest:
    return trainer_pb2.CreateTrainingTaskRequest(
        name=name, resource_group_id=rg, command=command, network=network,
        resources=common_pb2.Resources(cpu=0.5, memory_gib=0.5))


async def test_host_network_only_where_the_policy_allows_it(platform: Any) -> None:
    closed = await platform.group("closed")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await platform.t.CreateTrainingTask(_submit(closed, "h", "host"))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert '{"SandboxRule": {"HostNetwork": 1}}' in (refused.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await platform.t.CreateTrainingTask(_submit(closed, "w", "wide-open"))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    listed = await platform.t.ListTrainingTasks(trainer_pb2.ListTrainingTasksRequest())
    assert listed.total == 0  # refused before anything was appended
    opened = await platform.group("open", {"SandboxRule": {"HostNetwork": 1}})
    task = await platform.t.CreateTrainingTask(_submit(opened, "h", "host"))
    assert task.network == "host"
    assert (await platform.t.CreateTrainingTask(_submit(closed, "d"))).network == "isolated"
    with pytest.raises(grpc.aio.AioRpcError) as policy:
        await platform.s.UpdateResourceGroup(scheduler_pb2.UpdateResourceGroupRequest(
            id=closed, policy_json=json.dumps({"SandboxRule": {"HostNetwork": 2}})))
    assert "SandboxRule.HostNetwork" in (policy.value.details() or "")


async def test_an_instance_without_a_network_sees_only_loopback(platform: Any) -> None:
    rg = await platform.group("pool")
    await platform.agent(rg, "node-a", node_cpu=2, node_memory_gib=4)
    none = await platform.t.CreateTrainingTask(_submit(rg, "alone", "none", SHOW))
    isolated = await platform.t.CreateTrainingTask(_submit(rg, "peers", "", SHOW))
    for task in (none, isolated):
        assert (await platform.wait(task.id, "Succeeded", "Failed")).status == "Succeeded"
    alone = set(await platform.lines(none.id))
    peers = set(await platform.lines(isolated.id))
    assert "lo" in alone and "eth0" not in alone, alone
    assert {"lo", "eth0"} <= peers, peers
