"""Node deploy/health checks and history, and service replicas as workloads (services come first;
lost or released nodes get their replicas replaced). In-process services over a real nats-server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from capstan_core.contracts.common import ResourceSpec
from capstan_core.contracts.scheduling import CAPABILITIES, WorkloadSubmitted, WorkloadWithdrawn
from capstan_core.eventstore import EventStore
from capstan_core.service import Service
from capstan_core.settings import ServiceSettings
from capstan_core.streams import event_subject
from capstan_core.testing import admin_channel, admin_store
from capstan_proto import common_pb2, scheduler_pb2, scheduler_pb2_grpc, trainer_pb2, trainer_pb2_grpc
from capstan_scheduler.service import DEFINITION as SCHEDULER
from capstan_trainer.service import DEFINITION as TRAINER

HC = scheduler_pb2.HealthCheck


class Platform:
    def __init__(self, sched: Service, s: Any, t: Any, store: EventStore) -> None:
        self.sched, self.s, self.t = sched, s, t
        self.store = store  # an admin connection: the test appends as the owner of online services

    async def group(self, policy: dict[str, Any] | None = None) -> str:
        rg = await self.s.CreateResourceGroup(
            scheduler_pb2.CreateResourceGroupRequest(name="g", policy_json=json.dumps(policy or {}))
        )
        return str(rg.id)

    async def join(self, rg: str, name: str, cpu: float = 8, checks: list[Any] | None = None,
                   capabilities: tuple[str, ...] = CAPABILITIES, agent_kind: str = "trainer") -> Any:
        """A node (by default one whose agent runs both training and service replicas)."""
        return await self.s.JoinNode(scheduler_pb2.JoinNodeRequest(
            resource_group_id=rg, name=name, cpu=cpu, memory_gib=32, agent_kind=agent_kind, checks=checks or [],
            capabilities=list(capabilities)))

    async def nodes(self, rg: str, view: str = "") -> dict[str, str]:
        resp = await self.s.ListNodes(scheduler_pb2.ListNodesRequest(resource_group_id=rg, view=view))
        return {n.name: n.state for n in resp.items}

    async def as_service_owner(self, event: Any) -> None:
        """Append what the owner of online services (the inference service) would."""
        subject = event_subject("service", "svc-1")
        _, last = await self.store.load(subject)
        await self.store.append(subject, [event], expected_seq=last)

    async def replica(self, rg: str, replica_id: str, cpu: float, tags: dict[str, str] | None = None) -> None:
        await self.as_service_owner(WorkloadSubmitted(
            workload_id=replica_id, kind="service", capability="serving", resource_group_id=rg,
            resources=ResourceSpec(cpu=cpu, memory_gib=1), tags=tags or {}, at_ms=1))

    async def placed_on(self, node_id: str) -> set[str]:
        resp = await self.s.ListNodeAssignments(scheduler_pb2.ListNodeAssignmentsRequest(node_id=node_id))
        return {a.workload_id for a in resp.items}

    async def workload_events(self, wid: str) -> list[str]:
        recorded, _ = await self.store.load(event_subject("workload", wid))
        return [r.event.TYPE for r in recorded]

    async def task(self, rg: str, name: str, cpu: float, tags: dict[str, str] | None = None) -> str:
        t = await self.t.CreateTrainingTask(trainer_pb2.CreateTrainingTaskRequest(
            name=name, resource_group_id=rg, command="x", tags=tags or {},
            resources=common_pb2.Resources(cpu=cpu, memory_gib=1)))
        return str(t.id)

    async def status(self, task_id: str) -> str:
        return str((await self.t.GetTrainingTask(trainer_pb2.GetTrainingTaskRequest(id=task_id))).status)


async def until(fn: Any, timeout: float = 10.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await fn()
        if value:
            return value
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


@pytest.fixture
async def platform(tmp_path: Path, nats_server: Any, secrets_dir: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Platform]:
    monkeypatch.setenv("CAPSTAN_NODE_ABNORMAL_AFTER_S", "0.6")
    monkeypatch.setenv("CAPSTAN_NODE_LOST_AFTER_S", "1.2")
    sched = Service(SCHEDULER, ServiceSettings(secrets_dir=secrets_dir, data_dir=tmp_path / "s", nats_url=nats_server.url))
    await sched.start()
    trainer = Service(TRAINER, ServiceSettings(secrets_dir=secrets_dir, data_dir=tmp_path / "t", nats_url=nats_server.url, scheduler_addr=sched.address))
    await trainer.start()
    chs, cht = admin_channel(sched.address, "scheduler", secrets_dir), admin_channel(trainer.address, "trainer", secrets_dir)
    async with admin_store(nats_server.url, secrets_dir) as store:
        yield Platform(sched, scheduler_pb2_grpc.SchedulerStub(chs), trainer_pb2_grpc.TrainerStub(cht), store)
    await chs.close()
    await cht.close()
    await trainer.stop()
    await sched.stop()


async def _keep_alive(s: Any, node_ids: list[str]) -> None:
    while True:
        for n in node_ids:
            await s.Heartbeat(scheduler_pb2.HeartbeatRequest(node_id=n))
        await asyncio.sleep(0.1)


# -- nodes: deploy checks, history, health-check records ------------------------------
async def test_failed_deploy_checks_put_the_node_in_history_and_a_passing_rejoin_brings_it_back(platform: Platform) -> None:
    rg = await platform.group()
    bad = await platform.join(rg, "n1", checks=[HC(name="disk", ok=False, detail="0.1 GiB free (needs 1)"), HC(name="memory", ok=True)])
    assert bad.state == "DeployFailed" and "disk: 0.1 GiB free" in bad.state_reason
    good = await platform.join(rg, "n2", checks=[HC(name="disk", ok=True)])
    assert good.state == "Running"
    assert await platform.nodes(rg) == {"n2": "Running"}
    assert await platform.nodes(rg, "history") == {"n1": "DeployFailed"}
    assert await platform.nodes(rg, "all") == {"n1": "DeployFailed", "n2": "Running"}
    # no work goes to a node that failed to deploy
    task = await platform.task(rg, "t", cpu=1)
    await until(lambda: _eq(platform.status(task), "Starting"))
    assert await platform.placed_on(bad.id) == set() and await platform.placed_on(good.id) == {task}
    records = await platform.s.ListHealthChecks(scheduler_pb2.ListHealthChecksRequest(node_id=bad.id))
    assert [(r.trigger, r.ok, [(c.name, c.ok) for c in r.checks]) for r in records.items] == [
        ("deploy", False, [("disk", False), ("memory", True)])]
    again = await platform.join(rg, "n1", checks=[HC(name="disk", ok=True), HC(name="memory", ok=True)])
    assert again.id == bad.id and again.state == "Running"
    assert await platform.nodes(rg, "history") == {}
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await platform.s.ListNodes(scheduler_pb2.ListNodesRequest(view="everything"))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "view" in (e.value.details() or "")


async def test_periodic_health_checks_are_recorded_on_change_and_failing_ones_make_the_node_abnormal(platform: Platform) -> None:
    rg = await platform.group()
    node = await platform.join(rg, "n1", checks=[HC(name="disk", ok=True)])

    async def report(*checks: Any) -> Any:
        return await platform.s.ReportHealthCheck(scheduler_pb2.ReportHealthCheckRequest(node_id=node.id, checks=list(checks)))

    assert (await report(HC(name="disk", ok=True))).state == "Running"  # same outcome as the deploy record
    failing = await report(HC(name="disk", ok=False, detail="full"), HC(name="gpus", ok=True))
    assert failing.state == "Abnormal" and failing.state_reason == "health check failed: disk: full"
    await report(HC(name="disk", ok=False, detail="full"), HC(name="gpus", ok=True))  # unchanged: not recorded again
    beat = await platform.s.Heartbeat(scheduler_pb2.HeartbeatRequest(node_id=node.id))
    assert beat.state == "Abnormal"  # a heartbeat does not hide a failing check
    task = await platform.task(rg, "t", cpu=1)
    await asyncio.sleep(0.5)
    assert await platform.status(task) == "Queued"  # no new work on an Abnormal node
    healed = await report(HC(name="disk", ok=True), HC(name="gpus", ok=True))
    assert healed.state == "Running" and healed.state_reason == "health checks pass again"
    await until(lambda: _eq(platform.status(task), "Starting"))
    records = await platform.s.ListHealthChecks(scheduler_pb2.ListHealthChecksRequest(resource_group_id=rg))
    assert [(r.trigger, r.ok) for r in records.items] == [("periodic", True), ("periodic", False), ("deploy", True)]
    assert records.total == 3
    page = await platform.s.ListHealthChecks(scheduler_pb2.ListHealthChecksRequest(node_id=node.id, page={"page_size": 1}))
    assert len(page.items) == 1 and page.next_page_token and page.items[0].ok
    for bad_req, code in [
        (scheduler_pb2.ReportHealthCheckRequest(node_id=node.id), grpc.StatusCode.INVALID_ARGUMENT),
        (scheduler_pb2.ReportHealthCheckRequest(node_id=node.id, checks=[HC(name="a"), HC(name="a")]), grpc.StatusCode.INVALID_ARGUMENT),
        (scheduler_pb2.ReportHealthCheckRequest(node_id="node-nope", checks=[HC(name="a")]), grpc.StatusCode.NOT_FOUND),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await platform.s.ReportHealthCheck(bad_req)
        assert e.value.code() == code
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await platform.s.ListHealthChecks(scheduler_pb2.ListHealthChecksRequest(node_id="node-nope"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_released_node_record_moves_to_history_as_unused(platform: Platform) -> None:
    rg = await platform.group()
    node = await platform.join(rg, "n1")
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await platform.s.RemoveNodeRecord(scheduler_pb2.RemoveNodeRecordRequest(node_id=node.id))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "release it first" in (e.value.details() or "")
    await platform.s.ReleaseNodes(scheduler_pb2.ReleaseNodesRequest(node_ids=[node.id]))
    await until(lambda: _eq(_state(platform, rg, "n1"), "Released"))
    gone = await platform.s.RemoveNodeRecord(scheduler_pb2.RemoveNodeRecordRequest(node_id=node.id))
    assert gone.state == "Unused"
    assert await platform.nodes(rg) == {} and await platform.nodes(rg, "history") == {"n1": "Unused"}
    await platform.s.DeleteResourceGroup(scheduler_pb2.DeleteResourceGroupRequest(id=rg))  # Unused does not block it


# -- service replicas as workloads -----------------------------------------------------
PREEMPTIVE = {"Version": "1.0", "ResourceRule": {"DefaultPriority": 5, "DefaultQueue": 2, "Preempted": 1},
              "TaskRules": [{"AttrRules": [{"ValueType": "Tag", "Key": "tier", "Value": "gold"}],
                             "ScheduleRule": {"Priority": 1}}]}


async def test_workloads_go_only_on_nodes_declaring_their_capability(platform: Platform) -> None:
    rg = await platform.group()
    trainer = await platform.join(rg, "t", capabilities=("training",))
    server = await platform.join(rg, "s", cpu=2, capabilities=("serving",), agent_kind="inference")
    old = await platform.join(rg, "old", cpu=1, capabilities=(), agent_kind="inference")  # from its agent kind
    await platform.replica(rg, "svc-1.r0", cpu=1)
    await platform.replica(rg, "svc-1.r1", cpu=1)
    await platform.replica(rg, "svc-1.r2", cpu=1)
    train = await platform.task(rg, "tr", cpu=1)
    await until(lambda: _has(platform.placed_on(trainer.id), train))
    await until(lambda: _count(platform.placed_on(server.id), 2))
    await until(lambda: _count(platform.placed_on(old.id), 1))
    assert await platform.placed_on(trainer.id) == {train}  # the trainer node has room, but runs no replica
    assert (list(trainer.capabilities), list(server.capabilities), list(old.capabilities)) == (
        ["training"], ["serving"], ["serving"])
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await platform.join(rg, "x", capabilities=("mining",))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "mining" in (e.value.details() or "")


async def _count(found: Any, n: int) -> bool:
    return len(await found) == n


async def test_a_service_preempts_lower_training_but_nothing_preempts_a_service(platform: Platform) -> None:
    rg = await platform.group(PREEMPTIVE)
    node = await platform.join(rg, "n1", cpu=8)
    alive = asyncio.create_task(_keep_alive(platform.s, [node.id]))
    try:
        train = await platform.task(rg, "low", cpu=8)
        await until(lambda: _eq(platform.status(train), "Starting"))
        await platform.t.ReportInstance(trainer_pb2.ReportInstanceRequest(task_id=train, instance_index=0, node_id=node.id, state="Running"))
        await platform.replica(rg, "svc-1.r0", cpu=8, tags={"tier": "gold"})  # P1 service vs P5 training
        await until(lambda: _eq(platform.status(train), "Preempting"))
        await platform.t.ReportInstance(trainer_pb2.ReportInstanceRequest(
            task_id=train, instance_index=0, node_id=node.id, state="Exited", exit_code=143))
        await until(lambda: _has(platform.placed_on(node.id), "svc-1.r0"))
        assert await platform.status(train) == "Queued"
        # a higher-priority training task never preempts a service, and a service never preempts a service
        urgent = await platform.task(rg, "urgent", cpu=8, tags={"tier": "gold"})
        await platform.replica(rg, "svc-1.r1", cpu=8, tags={"tier": "gold"})
        await asyncio.sleep(1.0)
        assert await platform.placed_on(node.id) == {"svc-1.r0"}
        assert await platform.status(urgent) == "Queued"
        assert "WorkloadPreemptionRequested" not in await platform.workload_events("svc-1.r0")
        queue = await platform.s.GetQueue(scheduler_pb2.GetQueueRequest(resource_group_id=rg))
        assert {i.workload_id: i.kind for i in queue.items} == {train: "training", urgent: "training", "svc-1.r1": "service"}
        # retiring the replica frees the node: the queue moves on (P1 items in submit order: urgent first)
        await platform.as_service_owner(WorkloadWithdrawn(workload_id="svc-1.r0", reason="scaled in", at_ms=2))
        await until(lambda: _has(platform.placed_on(node.id), urgent))
        assert await platform.workload_events("svc-1.r0") == [
            "WorkloadQueued", "WorkloadPlaced", "WorkloadReleased"]
    finally:
        alive.cancel()


async def test_replicas_on_a_lost_node_are_replaced_elsewhere_and_a_release_moves_them(platform: Platform) -> None:
    rg = await platform.group()
    n1 = await platform.join(rg, "n1", cpu=4)
    alive1 = asyncio.create_task(_keep_alive(platform.s, [n1.id]))
    await platform.replica(rg, "svc-1.r0", cpu=4)
    await until(lambda: _has(platform.placed_on(n1.id), "svc-1.r0"))
    n2 = await platform.join(rg, "n2", cpu=4)
    alive2 = asyncio.create_task(_keep_alive(platform.s, [n2.id]))
    try:
        alive1.cancel()  # n1 falls silent: Abnormal, then lost for good
        await until(lambda: _has(platform.placed_on(n2.id), "svc-1.r0"))
        assert await platform.workload_events("svc-1.r0") == [
            "WorkloadQueued", "WorkloadPlaced", "WorkloadInstancesLost", "WorkloadRequeued", "WorkloadPlaced"]
        assert await platform.placed_on(n1.id) == set()
        # a release moves a replica at once (training would run to its end first)
        n3 = await platform.join(rg, "n3", cpu=4)
        alive2.cancel()
        alive2 = asyncio.create_task(_keep_alive(platform.s, [n2.id, n3.id]))
        await platform.s.ReleaseNodes(scheduler_pb2.ReleaseNodesRequest(node_ids=[n2.id]))
        await until(lambda: _has(platform.placed_on(n3.id), "svc-1.r0"))
        await until(lambda: _eq(_state(platform, rg, "n2"), "Released"))
        recorded, _ = await platform.store.load(event_subject("workload", "svc-1.r0"))
        requeued = [r.event for r in recorded if r.event.TYPE == "WorkloadRequeued"]
        assert [e.reason for e in requeued] == [  # type: ignore[attr-defined]
            f"replaced: node {n1.id} was lost", f"moved off node {n2.id} (released)"]
    finally:
        alive1.cancel()
        alive2.cancel()


async def _eq(coro: Any, value: Any) -> bool:
    return bool((await coro) == value)


async def _has(coro: Any, item: Any) -> bool:
    return item in await coro


async def _state(platform: Platform, rg: str, name: str) -> str:
    return (await platform.nodes(rg, "all")).get(name, "")
