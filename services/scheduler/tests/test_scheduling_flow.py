"""Scheduler + trainer services in-process over a real nats-server: admit, place, release."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from capstan_core.service import Service
from capstan_core.settings import ServiceSettings
from capstan_core.testing import admin_channel
from capstan_proto import common_pb2, scheduler_pb2, scheduler_pb2_grpc, trainer_pb2, trainer_pb2_grpc
from capstan_scheduler.service import DEFINITION as SCHEDULER
from capstan_trainer.service import DEFINITION as TRAINER


async def _until(fn, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await fn()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


@pytest.fixture
async def services(tmp_path: Path, nats_server, database_urls, secrets_dir):  # type: ignore[no-untyped-def]
    """Scheduler and trainer, each on its own database: every test here runs on SQLite and on PostgreSQL."""
    sched = Service(SCHEDULER, ServiceSettings(secrets_dir=secrets_dir, data_dir=tmp_path / "s", nats_url=nats_server.url, database_url=database_urls()))
    await sched.start()
    trainer = Service(TRAINER, ServiceSettings(secrets_dir=secrets_dir,
        data_dir=tmp_path / "t", nats_url=nats_server.url, scheduler_addr=sched.address, database_url=database_urls()
    ))
    await trainer.start()
    ch_s = admin_channel(sched.address, "scheduler", secrets_dir)
    ch_t = admin_channel(trainer.address, "trainer", secrets_dir)
    yield sched, trainer, scheduler_pb2_grpc.SchedulerStub(ch_s), trainer_pb2_grpc.TrainerStub(ch_t)
    await ch_s.close()
    await ch_t.close()
    await trainer.stop()
    await sched.stop()


async def test_task_is_queued_placed_on_a_node_and_released(services) -> None:  # type: ignore[no-untyped-def]
    sched, trainer, s, t = services
    rg = await s.CreateResourceGroup(scheduler_pb2.CreateResourceGroupRequest(name="team-a"))
    assert rg.id.startswith("rsg-")
    node = await s.JoinNode(scheduler_pb2.JoinNodeRequest(resource_group_id=rg.id, name="n1", cpu=4, memory_gib=8, agent_kind="trainer"))
    assert node.state == "Running"
    task = await t.CreateTrainingTask(
        trainer_pb2.CreateTrainingTaskRequest(
            name="t1", resource_group_id=rg.id, command="echo hi", resources=common_pb2.Resources(cpu=2, memory_gib=2)
        )
    )
    assert task.status in ("Submitting", "Queued", "Starting")

    async def placed():  # type: ignore[no-untyped-def]
        got = await t.GetTrainingTask(trainer_pb2.GetTrainingTaskRequest(id=task.id))
        return got if got.status == "Starting" else None

    got = await _until(placed)
    assert got.instances[0].node_id == node.id
    assigned = await s.ListNodeAssignments(scheduler_pb2.ListNodeAssignmentsRequest(node_id=node.id))
    assert [a.workload_id for a in assigned.items] == [task.id]

    await t.ReportInstance(trainer_pb2.ReportInstanceRequest(task_id=task.id, instance_index=0, node_id=node.id, state="Running"))
    r = await t.ReportInstance(trainer_pb2.ReportInstanceRequest(task_id=task.id, instance_index=0, node_id=node.id, state="Exited", exit_code=0))
    assert r.task_status == "Succeeded"

    async def released():  # type: ignore[no-untyped-def]
        a = await s.ListNodeAssignments(scheduler_pb2.ListNodeAssignmentsRequest(node_id=node.id))
        return len(a.items) == 0

    await _until(released)


async def test_second_task_waits_until_capacity_frees(services) -> None:  # type: ignore[no-untyped-def]
    sched, trainer, s, t = services
    rg = await s.CreateResourceGroup(scheduler_pb2.CreateResourceGroupRequest(name="g"))
    node = await s.JoinNode(scheduler_pb2.JoinNodeRequest(resource_group_id=rg.id, name="n1", cpu=2, memory_gib=4, agent_kind="trainer"))
    req = dict(resource_group_id=rg.id, command="x", resources=common_pb2.Resources(cpu=2, memory_gib=1))
    a = await t.CreateTrainingTask(trainer_pb2.CreateTrainingTaskRequest(name="a", **req))
    b = await t.CreateTrainingTask(trainer_pb2.CreateTrainingTaskRequest(name="b", **req))

    async def status(tid):  # type: ignore[no-untyped-def]
        return (await t.GetTrainingTask(trainer_pb2.GetTrainingTaskRequest(id=tid))).status

    await _until(lambda: _eq(status(a.id), "Starting"))
    await asyncio.sleep(0.5)
    assert await status(b.id) == "Queued"
    await t.ReportInstance(trainer_pb2.ReportInstanceRequest(task_id=a.id, instance_index=0, node_id=node.id, state="Exited", exit_code=3))
    assert await status(a.id) == "Failed"
    await _until(lambda: _eq(status(b.id), "Starting"))


async def test_stop_while_queued_and_unknown_group_rejected(services) -> None:  # type: ignore[no-untyped-def]
    sched, trainer, s, t = services
    rg = await s.CreateResourceGroup(scheduler_pb2.CreateResourceGroupRequest(name="empty"))
    task = await t.CreateTrainingTask(
        trainer_pb2.CreateTrainingTaskRequest(name="q", resource_group_id=rg.id, command="x", resources=common_pb2.Resources(cpu=1, memory_gib=1))
    )
    await t.StopTrainingTask(trainer_pb2.StopTrainingTaskRequest(id=task.id))

    async def stopped():  # type: ignore[no-untyped-def]
        return (await t.GetTrainingTask(trainer_pb2.GetTrainingTaskRequest(id=task.id))).status == "Stopped"

    await _until(stopped)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await t.CreateTrainingTask(
            trainer_pb2.CreateTrainingTaskRequest(name="q", resource_group_id="rsg-nope", command="x")
        )
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "rsg-nope" in (e.value.details() or "")


async def _eq(coro, value) -> bool:  # type: ignore[no-untyped-def]
    return (await coro) == value


async def test_silent_node_turns_abnormal_and_back(services) -> None:  # type: ignore[no-untyped-def]
    from capstan_core.clock import FixedClock

    sched, trainer, s, t = services
    clock = FixedClock()
    sched.app.clock = clock
    sched.app.liveness.started_ms = clock.now_ms()
    rg = await s.CreateResourceGroup(scheduler_pb2.CreateResourceGroupRequest(name="g"))
    node = await s.JoinNode(scheduler_pb2.JoinNodeRequest(resource_group_id=rg.id, name="n1", cpu=2, memory_gib=4, agent_kind="trainer"))
    clock.advance(10_000)
    await sched.app.mark_silent_nodes_abnormal()
    assert sched.app.get_node(node.id)["state"] == "Running"
    clock.advance(6_000)
    await sched.app.mark_silent_nodes_abnormal()
    await _until(lambda: _eq(_state(s, node.id), "Abnormal"))
    assert (await s.Heartbeat(scheduler_pb2.HeartbeatRequest(node_id=node.id))).state == "Running"
    assert await _state(s, node.id) == "Running"


async def test_invalid_policy_names_the_field_and_appends_nothing(services) -> None:  # type: ignore[no-untyped-def]
    sched, trainer, s, t = services
    before = (await sched.ctx.js.stream_info("CAPSTAN_EVENTS")).state.messages
    for policy, needle in [
        ('{"ResourceRule": {"DefaultQueue": 5}}', "ResourceRule.DefaultQueue must be 0, 1 or 2"),
        ('{"ResourceRule": {"DefaultPriority": "high"}}', "ResourceRule.DefaultPriority"),
        ('{"TaskRules": [{"AttrRules": [], "ScheduleRule": {"Priority": 1}}]}', "TaskRules[0].AttrRules"),
        ("[1, 2]", "policy must be a JSON object"),
        ("{not json", "policy is not valid JSON"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await s.CreateResourceGroup(scheduler_pb2.CreateResourceGroupRequest(name="g", policy_json=policy))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and needle in (e.value.details() or ""), e.value.details()
    for name in ("", "-x", "a" * 61, "has space"):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await s.CreateResourceGroup(scheduler_pb2.CreateResourceGroupRequest(name=name))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (await sched.ctx.js.stream_info("CAPSTAN_EVENTS")).state.messages == before
    ok = await s.CreateResourceGroup(scheduler_pb2.CreateResourceGroupRequest(name="训练-组_1", policy_json='{"ResourceRule": {"DefaultQueue": 2}}'))
    assert '"DefaultQueue": 2' in ok.policy_json


async def _state(s, node_id):  # type: ignore[no-untyped-def]
    nodes = await s.ListNodes(scheduler_pb2.ListNodesRequest())
    return next(n.state for n in nodes.items if n.id == node_id)


async def test_update_resource_group_fields_and_policy(services) -> None:  # type: ignore[no-untyped-def]
    sched, trainer, s, t = services
    rg = await s.CreateResourceGroup(scheduler_pb2.CreateResourceGroupRequest(name="g", tags={"a": "1"}, description="d"))
    up = await s.UpdateResourceGroup(scheduler_pb2.UpdateResourceGroupRequest(
        id=rg.id, name="g2", policy_json='{"ResourceRule": {"DefaultQueue": 1, "Preempted": 1}}'
    ))
    assert (up.name, up.description, dict(up.tags)) == ("g2", "d", {"a": "1"})
    assert '"DefaultQueue": 1' in up.policy_json and '"Preempted": 1' in up.policy_json
    up = await s.UpdateResourceGroup(scheduler_pb2.UpdateResourceGroupRequest(id=rg.id, set_tags=True, tags={}))
    assert dict(up.tags) == {} and up.name == "g2"
    before = (await sched.ctx.js.stream_info("CAPSTAN_EVENTS")).state.messages
    await s.UpdateResourceGroup(scheduler_pb2.UpdateResourceGroupRequest(id=rg.id, name="g2"))  # no change
    for bad in (
        scheduler_pb2.UpdateResourceGroupRequest(id=rg.id, policy_json='{"ResourceRule": {"DefaultQueue": 7}}'),
        scheduler_pb2.UpdateResourceGroupRequest(id=rg.id, name="bad name"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await s.UpdateResourceGroup(bad)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await s.UpdateResourceGroup(scheduler_pb2.UpdateResourceGroupRequest(id="rsg-nope", name="x"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert (await sched.ctx.js.stream_info("CAPSTAN_EVENTS")).state.messages == before


async def test_release_drains_then_delete_is_allowed(services) -> None:  # type: ignore[no-untyped-def]
    sched, trainer, s, t = services
    rg = await s.CreateResourceGroup(scheduler_pb2.CreateResourceGroupRequest(name="g"))
    n1 = await s.JoinNode(scheduler_pb2.JoinNodeRequest(resource_group_id=rg.id, name="n1", cpu=2, memory_gib=4, agent_kind="trainer"))
    n2 = await s.JoinNode(scheduler_pb2.JoinNodeRequest(resource_group_id=rg.id, name="n2", cpu=2, memory_gib=4, agent_kind="trainer"))
    task = await t.CreateTrainingTask(trainer_pb2.CreateTrainingTaskRequest(
        name="busy", resource_group_id=rg.id, command="x", resources=common_pb2.Resources(cpu=2, memory_gib=1)))

    async def placed():  # type: ignore[no-untyped-def]
        got = await t.GetTrainingTask(trainer_pb2.GetTrainingTaskRequest(id=task.id))
        return got.instances[0].node_id or None

    busy = await _until(placed)
    idle = n2.id if busy == n1.id else n1.id
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await s.DeleteResourceGroup(scheduler_pb2.DeleteResourceGroupRequest(id=rg.id))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert n1.id in (e.value.details() or "") and n2.id in (e.value.details() or "")
    # a batch with one unknown node is refused whole
    with pytest.raises(grpc.aio.AioRpcError):
        await s.ReleaseNodes(scheduler_pb2.ReleaseNodesRequest(node_ids=[n1.id, "node-nope"]))
    assert await _state(s, n1.id) == "Running"
    out = await s.ReleaseNodes(scheduler_pb2.ReleaseNodesRequest(node_ids=[n1.id, n2.id]))
    states = {n.id: n.state for n in out.items}
    assert states[busy] == "Releasing" and states[idle] in ("Releasing", "Released")  # the idle one may drain at once
    await _until(lambda: _eq(_state(s, idle), "Released"))  # nothing ran there
    await asyncio.sleep(0.3)
    assert await _state(s, busy) == "Releasing"  # drains: its task still runs
    # a releasing node takes no new work
    other = await t.CreateTrainingTask(trainer_pb2.CreateTrainingTaskRequest(
        name="later", resource_group_id=rg.id, command="x", resources=common_pb2.Resources(cpu=1, memory_gib=1)))
    await t.ReportInstance(trainer_pb2.ReportInstanceRequest(task_id=task.id, instance_index=0, node_id=busy, state="Exited", exit_code=0))
    await _until(lambda: _eq(_state(s, busy), "Released"))
    assert (await t.GetTrainingTask(trainer_pb2.GetTrainingTaskRequest(id=other.id))).status in ("Queued", "Submitting")
    await s.DeleteResourceGroup(scheduler_pb2.DeleteResourceGroupRequest(id=rg.id))
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await s.GetResourceGroup(scheduler_pb2.GetResourceGroupRequest(id=rg.id))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    # the task still queued in the deleted group fails with the reason
    async def failed():  # type: ignore[no-untyped-def]
        got = await t.GetTrainingTask(trainer_pb2.GetTrainingTaskRequest(id=other.id))
        return got if got.status == "Failed" else None

    assert "was deleted" in (await _until(failed)).failure_reason


async def test_work_on_a_node_lost_for_good_restarts_elsewhere(services) -> None:  # type: ignore[no-untyped-def]
    from capstan_core.clock import FixedClock

    sched, trainer, s, t = services
    clock = FixedClock()
    sched.app.clock = clock
    sched.app.liveness.started_ms = clock.now_ms()
    rg = await s.CreateResourceGroup(scheduler_pb2.CreateResourceGroupRequest(name="g"))
    n1 = await s.JoinNode(scheduler_pb2.JoinNodeRequest(resource_group_id=rg.id, name="n1", cpu=2, memory_gib=4, agent_kind="trainer"))
    task = await t.CreateTrainingTask(trainer_pb2.CreateTrainingTaskRequest(
        name="survivor", resource_group_id=rg.id, command="x", resources=common_pb2.Resources(cpu=2, memory_gib=1)))

    async def on(node_id):  # type: ignore[no-untyped-def]
        got = await t.GetTrainingTask(trainer_pb2.GetTrainingTaskRequest(id=task.id))
        return got if got.instances[0].node_id == node_id and got.status in ("Starting", "Running") else None

    await _until(lambda: on(n1.id))
    await t.ReportInstance(trainer_pb2.ReportInstanceRequest(task_id=task.id, instance_index=0, node_id=n1.id, state="Running"))
    clock.advance(20_000)  # silent: Abnormal, but not lost yet
    await _until(lambda: _eq(_state(s, n1.id), "Abnormal"))
    await asyncio.sleep(0.3)
    assert (await t.GetTrainingTask(trainer_pb2.GetTrainingTaskRequest(id=task.id))).attempt == 0
    n2 = await s.JoinNode(scheduler_pb2.JoinNodeRequest(resource_group_id=rg.id, name="n2", cpu=2, memory_gib=4, agent_kind="trainer"))
    sched.app.liveness.last_seen_ms[n2.id] = clock.now_ms() + 10**9  # n2 keeps beating
    clock.advance(300_000)  # lost for good
    got = await _until(lambda: on(n2.id))
    assert got.attempt == 1 and got.restarts == 1 and got.preemptions == 0
    # a late report from the lost node about attempt 0 changes nothing
    await t.ReportInstance(trainer_pb2.ReportInstanceRequest(
        task_id=task.id, instance_index=0, node_id=n1.id, state="Exited", exit_code=1, attempt=0))
    assert (await t.GetTrainingTask(trainer_pb2.GetTrainingTaskRequest(id=task.id))).status in ("Starting", "Running")
