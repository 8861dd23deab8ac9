"""The internal plane authenticates everything: join tokens and node certificates, what each identity
may call over gRPC, who the acting principal is, and what each NATS user may publish and read."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest
from nats.errors import Error as NatsError

from capstan_core import credentials, grpcutil, identity, nodeauth
from capstan_core.contracts.training import TrainingTaskEnded
from capstan_core.eventstore import EventStore
from capstan_core.service import Service, connect_nats
from capstan_core.settings import ServiceSettings
from capstan_core.streams import EVENTS_STREAM, event_subject
from capstan_core.testing import admin_channel
from capstan_proto import common_pb2, scheduler_pb2, scheduler_pb2_grpc, trainer_pb2, trainer_pb2_grpc
from capstan_scheduler.service import DEFINITION as SCHEDULER
from capstan_trainer.service import DEFINITION as TRAINER


@dataclass
class Plane:
    sched: Service
    trainer: Service
    s: Any  # admin stubs
    t: Any
    secrets: Path
    tmp: Path
    nats_url: str

    async def node(self, rg: str, name: str, token: str | None = None) -> nodeauth.NodeCredentials:
        if token is None:
            token = (await self.s.CreateJoinToken(scheduler_pb2.CreateJoinTokenRequest(resource_group_id=rg))).token
        return await nodeauth.ensure(
            directory=self.tmp / name, node_name=name, resource_group="default", agent_kind="trainer",
            bootstrap_addr=self.sched.bootstrap_address, ca_file=self.secrets / "ca.crt", join_token=token,
        )

    def stubs(self, creds: nodeauth.NodeCredentials) -> tuple[Any, Any]:
        return (
            scheduler_pb2_grpc.SchedulerStub(grpcutil.channel(self.sched.address, "scheduler", creds.tls)),
            trainer_pb2_grpc.TrainerStub(grpcutil.channel(self.trainer.address, "trainer", creds.tls)),
        )


@pytest.fixture
async def plane(tmp_path: Path, nats_server: Any, secrets_dir: Path) -> AsyncIterator[Plane]:
    sched = Service(SCHEDULER, ServiceSettings(secrets_dir=secrets_dir, data_dir=tmp_path / "s", nats_url=nats_server.url))
    await sched.start()
    trainer = Service(TRAINER, ServiceSettings(
        secrets_dir=secrets_dir, data_dir=tmp_path / "t", nats_url=nats_server.url, scheduler_addr=sched.address))
    await trainer.start()
    chs = admin_channel(sched.address, "scheduler", secrets_dir)
    cht = admin_channel(trainer.address, "trainer", secrets_dir)
    yield Plane(sched, trainer, scheduler_pb2_grpc.SchedulerStub(chs), trainer_pb2_grpc.TrainerStub(cht), secrets_dir,
                tmp_path, nats_server.url)
    await chs.close()
    await cht.close()
    await trainer.stop()
    await sched.stop()


async def _code(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call
    return e.value.code()


async def test_join_token_gives_a_node_certificate_once_it_is_proven(plane: Plane) -> None:
    rg = await plane.s.CreateResourceGroup(scheduler_pb2.CreateResourceGroupRequest(name="pool"))
    tok = await plane.s.CreateJoinToken(scheduler_pb2.CreateJoinTokenRequest(resource_group_id=rg.id, description="rack 4"))
    assert tok.token.startswith(f"cjt.{tok.id}.") and tok.created_by == "admin"
    listed = (await plane.s.ListJoinTokens(scheduler_pb2.ListJoinTokensRequest(resource_group_id=rg.id))).items
    assert [t.id for t in listed] == [tok.id] and listed[0].token == ""  # the secret is shown once, at creation
    creds = await plane.node(rg.id, "box-1", tok.token)
    assert creds.resource_group_id == rg.id and creds.tls.identity == f"node:{creds.node_id}"
    assert creds.nats.user == "agent"
    listed = (await plane.s.ListJoinTokens(scheduler_pb2.ListJoinTokensRequest(resource_group_id=rg.id))).items
    assert listed[0].uses == 1
    for f in (plane.tmp / "box-1").iterdir():
        assert f.stat().st_mode & 0o077 == 0, f  # the node's key and credentials are its own
    # a wrong secret, an unknown id and a malformed token are refused alike; so is a revoked token
    for bad in (tok.token[:-4] + "AAAA", "cjt.jt-00000000.aaaaaaaaaaaaaaaaaaaaaaaa", "not-a-token"):
        with pytest.raises(nodeauth.JoinRefused, match="not valid"):
            await plane.node(rg.id, "box-2", bad)
    await plane.s.RevokeJoinToken(scheduler_pb2.RevokeJoinTokenRequest(id=tok.id))
    with pytest.raises(nodeauth.JoinRefused, match="revoked"):
        await plane.node(rg.id, "box-2", tok.token)
    # the node's certificate keeps working after its token is revoked: it joins and heartbeats
    s, _ = plane.stubs(creds)
    node = await s.JoinNode(scheduler_pb2.JoinNodeRequest(
        resource_group_id=rg.id, name="box-1", cpu=4, memory_gib=8, agent_kind="trainer"))
    assert node.id == creds.node_id
    assert (await s.Heartbeat(scheduler_pb2.HeartbeatRequest(node_id=creds.node_id))).state == "Running"


async def test_a_node_acts_only_for_itself_and_calls_only_agent_methods(plane: Plane) -> None:
    rg = await plane.s.CreateResourceGroup(scheduler_pb2.CreateResourceGroupRequest(name="pool"))
    a, b = await plane.node(rg.id, "a"), await plane.node(rg.id, "b")
    sa, ta = plane.stubs(a)
    sb, _ = plane.stubs(b)
    for stub, name in ((sa, "a"), (sb, "b")):
        await stub.JoinNode(scheduler_pb2.JoinNodeRequest(
            resource_group_id=rg.id, name=name, cpu=4, memory_gib=8, agent_kind="trainer"))
    PD = grpc.StatusCode.PERMISSION_DENIED
    # another node's heartbeat, assignments, health, or joining under another name
    assert await _code(sa.Heartbeat(scheduler_pb2.HeartbeatRequest(node_id=b.node_id))) == PD
    assert await _code(sa.ListNodeAssignments(scheduler_pb2.ListNodeAssignmentsRequest(node_id=b.node_id))) == PD
    assert await _code(sa.ReportHealthCheck(scheduler_pb2.ReportHealthCheckRequest(node_id=b.node_id))) == PD
    assert await _code(sa.JoinNode(scheduler_pb2.JoinNodeRequest(
        resource_group_id=rg.id, name="b", cpu=4, memory_gib=8, agent_kind="trainer"))) == PD
    # management calls are not an agent's business
    assert await _code(sa.CreateResourceGroup(scheduler_pb2.CreateResourceGroupRequest(name="mine"))) == PD
    assert await _code(sa.ListResourceGroups(scheduler_pb2.ListResourceGroupsRequest())) == PD
    assert await _code(sa.CreateJoinToken(scheduler_pb2.CreateJoinTokenRequest(resource_group_id=rg.id))) == PD
    assert await _code(ta.ListTrainingTasks(trainer_pb2.ListTrainingTasksRequest())) == PD
    assert await _code(ta.StopTrainingTask(trainer_pb2.StopTrainingTaskRequest(id="train-x"))) == PD
    assert await _code(ta.CreateTrainingTask(trainer_pb2.CreateTrainingTaskRequest(
        name="x", resource_group_id=rg.id, command="true"))) == PD
    # a task placed on node b: node a can neither read it nor report for it; node b can
    task = await plane.t.CreateTrainingTask(trainer_pb2.CreateTrainingTaskRequest(
        name="t", resource_group_id=rg.id, command="true", resources=common_pb2.Resources(cpu=1, memory_gib=1)))
    where = await _placed(plane, task.id)
    owner, other = (sb, sa) if where == b.node_id else (sa, sb)
    owner_t = plane.stubs(b if where == b.node_id else a)[1]
    other_t = plane.stubs(a if where == b.node_id else b)[1]
    assert await _code(other_t.GetTrainingTask(trainer_pb2.GetTrainingTaskRequest(id=task.id))) == grpc.StatusCode.NOT_FOUND
    assert await _code(other_t.ReportInstance(trainer_pb2.ReportInstanceRequest(
        task_id=task.id, instance_index=0, state="Exited", exit_code=0))) == grpc.StatusCode.NOT_FOUND
    assert await _code(owner_t.ReportInstance(trainer_pb2.ReportInstanceRequest(
        task_id=task.id, instance_index=0, node_id="node-elsewhere", state="Exited", exit_code=0))) == PD
    assert (await owner_t.GetTrainingTask(trainer_pb2.GetTrainingTaskRequest(id=task.id))).id == task.id
    # the batched read (an agent's step) answers the same: the other node sees nothing of it
    many = trainer_pb2.GetTrainingTasksRequest(ids=[task.id, "train-00000000"])
    assert [t.id for t in (await owner_t.GetTrainingTasks(many)).items] == [task.id]
    assert list((await other_t.GetTrainingTasks(many)).items) == []
    assert await _code(owner_t.GetTrainingTasks(trainer_pb2.GetTrainingTasksRequest(ids=["../x"]))) == \
        grpc.StatusCode.INVALID_ARGUMENT
    assert await _code(owner_t.GetTrainingTasks(trainer_pb2.GetTrainingTasksRequest(ids=[task.id] * 1001))) == \
        grpc.StatusCode.INVALID_ARGUMENT
    got = await owner_t.ReportInstance(trainer_pb2.ReportInstanceRequest(
        task_id=task.id, instance_index=0, state="Running"))
    assert got.task_status == "Running"
    del owner, other


async def _placed(plane: Plane, task_id: str) -> str:
    for _ in range(200):
        t = await plane.t.GetTrainingTask(trainer_pb2.GetTrainingTaskRequest(id=task_id))
        if t.instances and t.instances[0].node_id:
            return str(t.instances[0].node_id)
        await asyncio.sleep(0.05)
    raise AssertionError(f"{task_id} was never placed")


ALICE = identity.Principal(account="alice", tenant="acct-alice", key_id="key-1").to_json()


async def test_the_creator_is_the_gateways_user_or_the_callers_identity(plane: Plane) -> None:
    rg = await plane.s.CreateResourceGroup(scheduler_pb2.CreateResourceGroupRequest(name="pool"))
    assert rg.creator == "admin"
    gw = credentials.load(plane.secrets, "gateway").tls
    sched_gw = scheduler_pb2_grpc.SchedulerStub(grpcutil.channel(plane.sched.address, "scheduler", gw))
    created = await sched_gw.CreateResourceGroup(
        scheduler_pb2.CreateResourceGroupRequest(name="team"), metadata=[("x-capstan-principal", ALICE)])
    assert created.creator == "alice"
    # only the gateway is believed about whom it acts for
    tr = credentials.load(plane.secrets, "trainer").tls
    sched_tr = scheduler_pb2_grpc.SchedulerStub(grpcutil.channel(plane.sched.address, "scheduler", tr))
    assert await _code(sched_tr.CreateResourceGroup(
        scheduler_pb2.CreateResourceGroupRequest(name="x"), metadata=[("x-capstan-principal", ALICE)])
    ) == grpc.StatusCode.PERMISSION_DENIED
    assert (await sched_tr.GetResourceGroup(scheduler_pb2.GetResourceGroupRequest(id=rg.id))).id == rg.id
    assert "creator" not in scheduler_pb2.CreateResourceGroupRequest.DESCRIPTOR.fields_by_name
    assert "creator" not in trainer_pb2.CreateTrainingTaskRequest.DESCRIPTOR.fields_by_name


async def test_nats_users_publish_only_what_they_own(plane: Plane, nats_server: Any, secrets_dir: Path) -> None:
    """No anonymous client; a service appends only to its own aggregates; an agent only ships logs
    and hears wake-ups; no one but admin may delete or purge."""
    with pytest.raises(NatsError):
        await nats.connect(nats_server.url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2)
    forged = [TrainingTaskEnded(task_id="train-victim", status="Succeeded", exit_code=0, at_ms=1)]
    sched_nc = await connect_nats(nats_server.url, "t-sched", credentials.load_nats(secrets_dir, "scheduler"))
    agent_nc = await connect_nats(nats_server.url, "t-agent", credentials.load_nats(secrets_dir, "agent"))
    try:
        before = (await sched_nc.jetstream().stream_info(EVENTS_STREAM)).state.last_seq
        for nc in (sched_nc, agent_nc):
            with pytest.raises(Exception):  # noqa: B017 - the server drops it: no ack ever comes
                await EventStore(nc.jetstream(timeout=1)).append(
                    event_subject("train", "train-victim"), forged, expected_seq=None)
        with pytest.raises(Exception):  # noqa: B017
            await agent_nc.jetstream(timeout=1).stream_info(EVENTS_STREAM)
        with pytest.raises(Exception):  # noqa: B017
            await sched_nc.jetstream(timeout=1).purge_stream(EVENTS_STREAM)
        ack = await agent_nc.jetstream(timeout=5).publish("capstan.log.train-x.0", b"{}")
        assert ack.seq >= 1
        after = (await sched_nc.jetstream().stream_info(EVENTS_STREAM)).state.last_seq
        assert after == before
    finally:
        await sched_nc.close()
        await agent_nc.close()
