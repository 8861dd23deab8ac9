"""An agent's real deploy and periodic health checks (disk, memory, GPUs) through NodeMembership."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from capstan_agentkit.healthcheck import Check, basic_checks, gpus, run_checks
from capstan_agentkit.membership import NodeMembership
from capstan_core.capacity import Capacity
from capstan_core.service import Service
from capstan_core.settings import ServiceSettings
from capstan_core.testing import admin_channel
from capstan_proto import scheduler_pb2, scheduler_pb2_grpc
from capstan_scheduler.service import DEFINITION as SCHEDULER


async def test_agent_deploy_fails_on_a_full_disk_then_joins_and_turns_abnormal_when_checks_fail(
    tmp_path: Path, nats_server: Any, secrets_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sched = Service(SCHEDULER, ServiceSettings(secrets_dir=secrets_dir, data_dir=tmp_path / "s", nats_url=nats_server.url))
    await sched.start()
    ch = admin_channel(sched.address, "scheduler", secrets_dir)
    try:
        stub = scheduler_pb2_grpc.SchedulerStub(ch)
        rg = await stub.CreateResourceGroup(scheduler_pb2.CreateResourceGroupRequest(name="pool"))
        monkeypatch.setenv("CAPSTAN_HEALTH_MIN_FREE_DISK_GIB", "1e9")  # no disk is that large
        member = NodeMembership(stub, resource_group=rg.id, node_name="box", agent_kind="trainer",
                                capacity=Capacity(cpu=2, memory_gib=2), work_dir=tmp_path)
        node_id = await member.join()
        assert member.state == "DeployFailed"
        node = (await stub.ListNodes(scheduler_pb2.ListNodesRequest(resource_group_id=rg.id, view="history"))).items[0]
        assert node.id == node_id and "disk:" in node.state_reason and "needs 1e+09" in node.state_reason
        monkeypatch.setenv("CAPSTAN_HEALTH_MIN_FREE_DISK_GIB", "0")
        await member.check_health()  # a node that failed to deploy joins again
        assert member.state == "Running"
        monkeypatch.setenv("CAPSTAN_HEALTH_MIN_AVAILABLE_MEMORY_GIB", "1e9")
        await member.check_health()
        assert member.state == "Abnormal"
        records = await stub.ListHealthChecks(scheduler_pb2.ListHealthChecksRequest(node_id=node_id))
        assert [(r.trigger, r.ok) for r in records.items] == [("periodic", False), ("deploy", True), ("deploy", False)]
        failing = {c.name for c in records.items[0].checks if not c.ok}
        assert failing == {"memory"}
    finally:
        await ch.close()
        await sched.stop()


def test_gpu_check_compares_declared_cards_with_the_machine_and_a_broken_probe_is_a_failure() -> None:
    assert gpus(Capacity(cpu=1, memory_gib=1)).ok
    simulated = gpus(Capacity(cpu=1, memory_gib=1, gpus={"A100": 8}, simulated_gpus=True))
    assert simulated.ok and "simulated" in simulated.detail
    real = gpus(Capacity(cpu=1, memory_gib=1, gpus={"A100": 8}))
    assert not real.ok  # this machine has no NVIDIA driver: the cards it claims are not there

    def broken() -> Check:
        raise OSError("probe exploded")

    results = run_checks([broken, *basic_checks(Capacity(cpu=1, memory_gib=1), Path("/"))])
    assert (results[0].ok, results[0].detail) == (False, "OSError: probe exploded")
    assert [c.name for c in results[1:]] == ["disk", "memory", "gpus"]
