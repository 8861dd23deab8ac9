"""Online services over a real nats-server and SQLite: the inference service with the real scheduler
(for the resource group), driven through gRPC as the gateway and the agents call it."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from nats.aio.client import Client

from capstan_core.clock import FixedClock
from capstan_core.contracts.scheduling import WorkloadSubmitted, WorkloadWithdrawn
from capstan_core.service import Service
from capstan_core.settings import ServiceSettings
from capstan_core.testing import admin_channel, admin_store
from capstan_inference.app import InferenceApp
from capstan_inference.service import DEFINITION as INFERENCE
from capstan_proto import inference_pb2 as pb
from capstan_proto import inference_pb2_grpc, registry_pb2, registry_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc
from capstan_registry.service import DEFINITION as REGISTRY
from capstan_scheduler.service import DEFINITION as SCHEDULER

SPEC = {"runtime": "custom", "command": "python -m http.server 8501", "replicas": 1,
        "probes": {"readiness": {"kind": "http", "path": "/"}}, "pre_stop": ["sleep", "1"]}


@dataclasses.dataclass
class Platform:
    stub: inference_pb2_grpc.InferenceStub
    rg: str
    nats_url: str
    secrets: Path
    clock: FixedClock
    app: InferenceApp


@pytest.fixture
async def platform(tmp_path: Path, nats_server: Any, secrets_dir: Path,
                   monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Platform]:
    monkeypatch.setenv("CAPSTAN_SERVING_DRAIN_S", "0.3")
    clock = FixedClock(1_800_000_000_000)
    sched = Service(SCHEDULER, ServiceSettings(secrets_dir=secrets_dir, data_dir=tmp_path / "s", nats_url=nats_server.url))
    await sched.start()
    reg = Service(REGISTRY, ServiceSettings(secrets_dir=secrets_dir, data_dir=tmp_path / "r", nats_url=nats_server.url))
    await reg.start()
    definition = dataclasses.replace(INFERENCE, build=lambda ctx: InferenceApp(ctx, clock=clock))
    inf = Service(definition, ServiceSettings(secrets_dir=secrets_dir, data_dir=tmp_path / "i", nats_url=nats_server.url,
                                              scheduler_addr=sched.address, registry_addr=reg.address))
    await inf.start()
    chs, chi = admin_channel(sched.address, "scheduler", secrets_dir), admin_channel(inf.address, "inference", secrets_dir)
    chr_ = admin_channel(reg.address, "registry", secrets_dir)
    try:
        rg = await scheduler_pb2_grpc.SchedulerStub(chs).CreateResourceGroup(
            scheduler_pb2.CreateResourceGroupRequest(name="serving"))
        await registry_pb2_grpc.RegistryStub(chr_).CreateModel(registry_pb2.CreateModelRequest(name="tiny"))
        yield Platform(inference_pb2_grpc.InferenceStub(chi), rg.id, nats_server.url, secrets_dir, clock, inf.app)
    finally:
        for ch in (chs, chi, chr_):
            await ch.close()
        await inf.stop()
        await reg.stop()
        await sched.stop()


def doc(v: pb.ServiceView) -> dict[str, Any]:
    return json.loads(v.service_json)


async def until(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 15) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        got = await check()
        if got:
            return got
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def create(p: Platform, **spec: Any) -> dict[str, Any]:
    return doc(await p.stub.CreateService(pb.CreateServiceRequest(
        name="chat", spec_json=json.dumps({**SPEC, "resource_group_id": p.rg, **spec}))))


async def instances(p: Platform, sid: str, n: int) -> list[dict[str, Any]]:
    async def check() -> list[dict[str, Any]] | None:
        items = [i for i in doc(await p.stub.GetService(pb.ServiceRef(service_id=sid)))["instances"]
                 if i["state"] not in ("Draining", "Stopping")]
        return items if len(items) == n else None
    return await until(check, f"{n} instance(s) of {sid}")  # type: ignore[no-any-return]


async def ready(p: Platform, rid: str, address: str, generation: int = 1) -> None:
    await p.stub.ReportReplica(pb.ReportReplicaRequest(replica_id=rid, state="Starting", address=address,
                                                       generation=generation))
    await p.stub.ReportReplica(pb.ReportReplicaRequest(replica_id=rid, state="Ready", address=address,
                                                       generation=generation))


async def route_of(p: Platform, sid: str) -> pb.ServiceRoute:
    routes = await p.stub.ListRoutes(pb.ListRoutesRequest())
    return next(s for s in routes.services if s.service_id == sid)


async def test_create_report_route_isolate_and_roll(platform: Platform) -> None:
    p = platform
    svc = await create(p)
    sid = svc["id"]
    assert sid.startswith("ms-") and len(sid) == 11 and svc["status"] == "Deploying"
    [inst] = await instances(p, sid, 1)
    rid = inst["id"]
    async with admin_store(p.nats_url, p.secrets) as store:
        recorded, _ = await store.load(f"capstan.evt.service.{sid}")
    submitted = [r.event for r in recorded if isinstance(r.event, WorkloadSubmitted)]
    assert [(w.workload_id, w.kind, w.capability, w.resource_group_id) for w in submitted] == [
        (rid, "service", "serving", p.rg)]

    spec = await p.stub.GetReplicaSpec(pb.GetReplicaSpecRequest(replica_id=rid))
    assert list(spec.command) == ["/bin/sh", "-c", "python -m http.server 8501"] and spec.port == 8501
    assert spec.readiness_probe.kind == "http" and list(spec.pre_stop) == ["sleep", "1"] and spec.grace_period_s == 30
    assert spec.desired_state == "Running" and spec.generation == 1

    first = await p.stub.ListRoutes(pb.ListRoutesRequest())
    await ready(p, rid, "127.0.0.1:9001")
    r = await route_of(p, sid)
    assert [(x.replica_id, x.address, x.ready, x.isolated) for x in r.replicas] == [(rid, "127.0.0.1:9001", True, False)]
    assert r.versions[0].protocol == "http" and r.versions[0].served_model_name == sid and r.group_qps_limit == 500
    again = await p.stub.ListRoutes(pb.ListRoutesRequest(revision=(await p.stub.ListRoutes(pb.ListRoutesRequest())).revision))
    assert again.unchanged and not again.services and again.revision > first.revision
    assert doc(await p.stub.GetService(pb.ServiceRef(service_id=sid)))["status"] == "Running"

    # isolate: stays up, no traffic; un-isolate restores it
    view = doc(await p.stub.IsolateReplica(pb.ReplicaRef(service_id=sid, replica_id=rid)))
    assert view["instances"][0]["state"] == "Ready (isolated)"
    assert (await route_of(p, sid)).replicas[0].isolated
    await p.stub.UnisolateReplica(pb.ReplicaRef(service_id=sid, replica_id=rid))
    assert not (await route_of(p, sid)).replicas[0].isolated

    # rolling update: a new replica first; the old one leaves the routes only once the new one is ready
    vid = svc["versions"][0]["id"]
    await p.stub.UpdateVersion(pb.UpdateVersionRequest(service_id=sid, version_id=vid,
                                                       spec_json=json.dumps({"env": {"GREETING": "hi"}})))
    both = await instances(p, sid, 2)
    new = next(i["id"] for i in both if i["id"] != rid)
    assert [x.replica_id for x in (await route_of(p, sid)).replicas] == [rid]  # still serving the old one
    assert dict((await p.stub.GetReplicaSpec(pb.GetReplicaSpecRequest(replica_id=new))).env)["GREETING"] == "hi"
    await ready(p, new, "127.0.0.1:9002")
    r = await until(lambda: _routes_are(p, sid, [new]), "the old replica out of the routes")
    assert r
    # after the drain delay the agent is told to stop it; its Stopped report removes it
    p.clock.advance(1000)
    await until(lambda: _desired(p, rid, "Stopped"), "the old replica told to stop")
    await p.stub.ReportReplica(pb.ReportReplicaRequest(replica_id=rid, state="Stopped", generation=1))
    await until(lambda: _gone(p, sid, rid), "the old replica removed")
    async with admin_store(p.nats_url, p.secrets) as store:
        recorded, _ = await store.load(f"capstan.evt.service.{sid}")
    assert [e.event.workload_id for e in recorded if isinstance(e.event, WorkloadWithdrawn)] == [rid]
    records = (await p.stub.ListServiceEvents(pb.ListServiceEventsRequest(service_id=sid, records=True))).items
    assert {x.kind for x in records} >= {"ServiceCreated", "ServiceVersionUpdated", "ServiceReplicaIsolated"}
    assert all(x.by for x in records)


async def _routes_are(p: Platform, sid: str, ids: list[str]) -> bool:
    return [x.replica_id for x in (await route_of(p, sid)).replicas] == ids


async def _desired(p: Platform, rid: str, state: str) -> bool:
    return (await p.stub.GetReplicaSpec(pb.GetReplicaSpecRequest(replica_id=rid))).desired_state == state


async def _gone(p: Platform, sid: str, rid: str) -> bool:
    return all(i["id"] != rid for i in doc(await p.stub.GetService(pb.ServiceRef(service_id=sid)))["instances"])


async def test_bad_commands_are_refused_and_append_nothing(platform: Platform) -> None:
    p = platform
    bad = [
        ({"port": 8503}, "port"), ({"grace_period_s": 0}, "grace_period_s"), ({"resource_group_id": "rsg-nothere"}, "resource group"),
        ({"runtime": "vllm", "command": ""}, "model"),
        # a registry model is resolved by the real registry before anything is appended
        ({"runtime": "transformers", "command": "", "model": {"kind": "registry", "model_id": "tiny"}},
         "model tiny version latest: model tiny has no version yet"),
        ({"runtime": "transformers", "command": "", "model": {"kind": "registry", "model_id": "nope", "version": 2}},
         "model nope version 2"),
    ]
    for spec, words in bad:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await create(p, **spec)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and words in (e.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await p.stub.CreateService(pb.CreateServiceRequest(name="-x", spec_json="{}"))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for text in ["[" * 100_000, "not json", '"a string"', '{"runtime": NaN}', '{"replicas": 1e400}']:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await p.stub.CreateService(pb.CreateServiceRequest(name="x", spec_json=text))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, text[:20]
    assert (await p.stub.ListServices(pb.ListServicesRequest())).total == 0
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await p.stub.GetService(pb.ServiceRef(service_id="ms-nothere1"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


async def test_keys_scale_stop_start_delete(platform: Platform) -> None:
    p = platform
    created = await p.stub.CreateService(pb.CreateServiceRequest(
        name="keyed", generate_key=True, spec_json=json.dumps({**SPEC, "resource_group_id": p.rg})))
    svc, first = doc(created), json.loads(created.created_key_json)
    sid = svc["id"]
    assert svc["auth_enabled"] and first["secret"].startswith("sk-") and "secret" not in svc["keys"][0]
    k = await p.stub.CreateKey(pb.CreateKeyRequest(service_id=sid, remark="team b", tokens_per_minute=1000))
    assert k.secret and k.key.tokens_per_minute == 1000
    r = await route_of(p, sid)
    import hashlib
    assert {x.secret_sha256 for x in r.keys} == {hashlib.sha256(s.encode()).hexdigest() for s in (first["secret"], k.secret)}
    got = await p.stub.UpdateKey(pb.UpdateKeyRequest(service_id=sid, key_id=k.key.key_id, changes_json='{"enabled": false}'))
    assert not got.key.enabled and not got.secret
    assert not next(x for x in (await route_of(p, sid)).keys if x.key_id == k.key.key_id).enabled
    await p.stub.UpdateService(pb.UpdateServiceRequest(service_id=sid, changes_json='{"auth_enabled": false}'))
    assert not (await route_of(p, sid)).auth_enabled
    await p.stub.DeleteKey(pb.KeyRef(service_id=sid, key_id=k.key.key_id))
    assert len((await route_of(p, sid)).keys) == 1
    events = (await p.stub.ListServiceEvents(pb.ListServiceEventsRequest(service_id=sid))).items
    assert not any(first["secret"] in x.message or k.secret in x.message for x in events)

    await p.stub.ScaleVersion(pb.ScaleVersionRequest(service_id=sid, replicas=3))
    reps = await instances(p, sid, 3)
    for i, rep in enumerate(reps):
        await ready(p, rep["id"], f"127.0.0.1:{9100 + i}")
    view = doc(await p.stub.StopService(pb.ServiceRef(service_id=sid)))
    assert view["status"] == "Stopping"
    p.clock.advance(1000)
    for rep in reps:
        await until(lambda rid=rep["id"]: _desired(p, rid, "Stopped"), "stop")
        await p.stub.ReportReplica(pb.ReportReplicaRequest(replica_id=rep["id"], state="Stopped", generation=1))
    await until(lambda: _status(p, sid, "Stopped"), "stopped")
    await p.stub.StartService(pb.ServiceRef(service_id=sid))
    reps = await instances(p, sid, 3)
    for i, rep in enumerate(reps):
        await ready(p, rep["id"], f"127.0.0.1:{9110 + i}")
    assert doc(await p.stub.DeleteService(pb.ServiceRef(service_id=sid)))["status"] == "Deleting"
    p.clock.advance(1000)
    for rep in reps:
        await until(lambda rid=rep["id"]: _desired(p, rid, "Stopped"), "stop")
        await p.stub.ReportReplica(pb.ReportReplicaRequest(replica_id=rep["id"], state="Stopped", generation=1))

    async def deleted() -> bool:
        try:
            await p.stub.GetService(pb.ServiceRef(service_id=sid))
        except grpc.aio.AioRpcError as e:
            return e.code() == grpc.StatusCode.NOT_FOUND
        return False
    await until(deleted, "deleted")
    assert all(s.service_id != sid for s in (await p.stub.ListRoutes(pb.ListRoutesRequest())).services)


async def _status(p: Platform, sid: str, status: str) -> bool:
    return doc(await p.stub.GetService(pb.ServiceRef(service_id=sid)))["status"] == status  # type: ignore[no-any-return]


async def test_hpa_follows_the_gateways_load_figures(platform: Platform, nc: Client) -> None:
    p = platform
    svc = await create(p, rate_limit={"kind": "concurrency", "value": 4})
    sid = svc["id"]
    [inst] = await instances(p, sid, 1)
    await ready(p, inst["id"], "127.0.0.1:9201")
    await p.stub.SetAutoscaling(pb.SetAutoscalingRequest(service_id=sid, autoscaling_json=json.dumps(
        {"mode": "hpa", "metric": "qps", "target": 10, "min": 1, "max": 3, "cooldown_s": 30})))
    js = nc.jetstream()
    from nats.js.api import KeyValueConfig, StorageType
    from nats.js.errors import BucketNotFoundError
    try:
        kv = await js.key_value("capstan_serving_load")
    except BucketNotFoundError:
        # the gateways create and own the bucket (capstan_gateway.invoke); this test stands in for them
        kv = await js.create_key_value(KeyValueConfig(bucket="capstan_serving_load", history=1, ttl=600.0,
                                                      storage=StorageType.MEMORY))

    async def load(qps: float) -> None:
        for rep in doc(await p.stub.GetService(pb.ServiceRef(service_id=sid)))["instances"]:
            body = {"qps": qps, "in_flight": 1, "queued": 0, "at_ms": p.clock.now_ms()}
            await kv.put(f"{sid}.{rep['id']}", json.dumps(body).encode())

    p.clock.advance(60_000)  # past the cooldown of the creation
    await load(35.0)  # 35 qps on one replica, target 10 -> 4, bounded to 3
    reps = await instances(p, sid, 3)
    for i, rep in enumerate(reps):
        await ready(p, rep["id"], f"127.0.0.1:{9300 + i}")
    await load(1.0)  # 3 qps in all -> 1, but only after the cooldown
    await asyncio.sleep(1.5)
    assert len(await instances(p, sid, 3)) == 3
    p.clock.advance(31_000)
    await load(1.0)
    await instances(p, sid, 1)
    records = (await p.stub.ListServiceEvents(pb.ListServiceEventsRequest(service_id=sid, records=True))).items
    assert [x.message for x in records if x.by == "autoscaler"] == ["replicas set to 1 (hpa)", "replicas set to 3 (hpa)"]


async def test_hpa_on_gpu_utilisation_from_the_agents_reports(platform: Platform) -> None:
    """GPU % comes with the agents' reports (the mean over the replica's cards); a report without cards
    gives no figure, so nothing moves on it."""
    p = platform
    sid = (await create(p, resources={"cpu": 1, "memory_gib": 2, "gpu": 1, "gpu_type": "H100"}))["id"]
    [inst] = await instances(p, sid, 1)
    await ready(p, inst["id"], "127.0.0.1:9201")
    await p.stub.SetAutoscaling(pb.SetAutoscalingRequest(service_id=sid, autoscaling_json=json.dumps(
        {"mode": "hpa", "metric": "gpu", "target": 40, "min": 1, "max": 3, "cooldown_s": 30})))
    p.clock.advance(60_000)  # past the cooldown of the creation

    async def report(rid: str, **gpu: float) -> None:
        await p.stub.ReportReplica(pb.ReportReplicaRequest(replica_id=rid, state="Ready", address="127.0.0.1:9201",
                                                           generation=1, cpu_usage=0.2, memory_usage_gib=1, **gpu))

    await report(inst["id"])  # CPU and memory only: no GPU figure, no change
    await p.app.reconcile()
    assert len(await instances(p, sid, 1)) == 1
    await report(inst["id"], gpu_percent=100.0)  # 100% on one replica, target 40 -> ceil(2.5) = 3
    await instances(p, sid, 3)
    records = (await p.stub.ListServiceEvents(pb.ListServiceEventsRequest(service_id=sid, records=True))).items
    assert [x.message for x in records if x.by == "autoscaler"] == ["replicas set to 3 (hpa)"]


async def test_rebuild_auto_stop_and_time_rules(platform: Platform) -> None:
    p = platform
    svc = await create(p)
    sid = svc["id"]
    [inst] = await instances(p, sid, 1)
    await ready(p, inst["id"], "127.0.0.1:9401")
    # rebuild: a fresh replica first, the old one leaves once it is ready
    await p.stub.RebuildReplica(pb.ReplicaRef(service_id=sid, replica_id=inst["id"]))
    both = await instances(p, sid, 2)
    fresh = next(i["id"] for i in both if i["id"] != inst["id"])
    await ready(p, fresh, "127.0.0.1:9402")
    await until(lambda: _routes_are(p, sid, [fresh]), "the rebuilt replica replaced")

    # time rules: 09:00 -> 3 replicas, except on the first week of October
    vid = svc["versions"][0]["id"]
    await p.stub.SetAutoscaling(pb.SetAutoscalingRequest(service_id=sid, version_id=vid, autoscaling_json=json.dumps(
        {"mode": "time", "default": 1, "rules": [{"at": "09:00", "replicas": 3, "except": ["* * * 1-7 10 *"]},
                                                {"at": "18:00", "replicas": 1}]})))
    import datetime as dt
    p.clock.t = int(dt.datetime(2027, 3, 2, 9, 30, tzinfo=dt.UTC).timestamp() * 1000)
    await instances(p, sid, 3)
    p.clock.t = int(dt.datetime(2027, 3, 2, 18, 30, tzinfo=dt.UTC).timestamp() * 1000)
    await instances(p, sid, 1)
    p.clock.t = int(dt.datetime(2027, 10, 3, 9, 30, tzinfo=dt.UTC).timestamp() * 1000)
    await asyncio.sleep(1.2)  # a loop tick: the excepted date keeps yesterday's 18:00 count
    assert len(await instances(p, sid, 1)) == 1

    # auto-stop at a time: the loop stops the group when the clock passes it
    at = p.clock.now_ms() + 60_000
    await p.stub.UpdateService(pb.UpdateServiceRequest(service_id=sid, changes_json=json.dumps({"auto_stop_at_ms": at})))
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await p.stub.UpdateService(pb.UpdateServiceRequest(service_id=sid, changes_json='{"auto_stop_at_ms": 5}'))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    p.clock.advance(61_000)
    await until(lambda: _status_in(p, sid, ("Stopping", "Stopped")), "auto-stopped")
    events = (await p.stub.ListServiceEvents(pb.ListServiceEventsRequest(service_id=sid))).items
    assert any(x.message == "stopped: stopped at its auto-stop time" for x in events)


async def _status_in(p: Platform, sid: str, states: tuple[str, ...]) -> bool:
    return doc(await p.stub.GetService(pb.ServiceRef(service_id=sid)))["status"] in states


async def test_placement_rejection_and_node_access(platform: Platform) -> None:
    from capstan_core.contracts.common import ResourceSpec
    from capstan_core.contracts.scheduling import InstancePlacement, WorkloadPlaced, WorkloadRejected
    from capstan_core.errors import PermissionDenied
    from capstan_core.identity import NODE, Caller

    p = platform
    sid = (await create(p))["id"]
    [inst] = await instances(p, sid, 1)
    rid = inst["id"]
    # the scheduler's answers (appended here as the scheduler would: no serving node joins this test)
    async with admin_store(p.nats_url, p.secrets) as store:
        await store.append(f"capstan.evt.workload.{rid}", [WorkloadPlaced(
            workload_id=rid, kind="service", resources=ResourceSpec(), at_ms=1,
            placements=[InstancePlacement(index=0, node_id="node-a")])], expected_seq=None)
    node_a = Caller("node", NODE, "node-a", "node-a", node_id="node-a")
    node_b = Caller("node", NODE, "node-b", "node-b", node_id="node-b")

    async def placed() -> bool:
        try:
            return p.app.replica_spec(node_a, rid)["node_id"] == "node-a"
        except PermissionDenied:
            return False
    await until(placed, "the placement projected")
    with pytest.raises(PermissionDenied):
        p.app.replica_spec(node_b, rid)
    with pytest.raises(PermissionDenied):
        await p.app.report(node_b, rid=rid, state="Ready", address="1.2.3.4:1", exit_code=0, message="",
                           generation=1, cpu=0, memory_gib=0)
    await p.app.report(node_a, rid=rid, state="Starting", address="10.0.0.5:8501", exit_code=0, message="",
                       generation=1, cpu=0.5, memory_gib=1)

    # a replica the scheduler refuses is removed and replaced by a new one
    async with admin_store(p.nats_url, p.secrets) as store:
        await store.append(f"capstan.evt.workload.{rid}", [WorkloadRejected(workload_id=rid, reason="no node fits",
                                                                             at_ms=2)], expected_seq=None)
    await until(lambda: _gone(p, sid, rid), "the rejected replica removed")
    [again] = await instances(p, sid, 1)
    assert again["id"] != rid
    events = (await p.stub.ListServiceEvents(pb.ListServiceEventsRequest(service_id=sid))).items
    assert any("not scheduled: no node fits" in x.message for x in events)


async def test_multi_instance_replicas_and_versions(platform: Platform) -> None:
    p = platform
    view = doc(await p.stub.CreateService(pb.CreateServiceRequest(
        name="big", deployment_mode="multi-instance",
        spec_json=json.dumps({**SPEC, "resource_group_id": p.rg, "instances": 2}))))
    sid = view["id"]
    await instances(p, sid, 1)
    async with admin_store(p.nats_url, p.secrets) as store:
        recorded, _ = await store.load(f"capstan.evt.service.{sid}")
    assert [r.event.instance_count for r in recorded if isinstance(r.event, WorkloadSubmitted)] == [2]
    # a second version (canary) with its own weight; deleting the only other one is refused
    v2 = doc(await p.stub.AddVersion(pb.AddVersionRequest(service_id=sid, weight=10,
                                                          spec_json=json.dumps({**SPEC, "resource_group_id": p.rg,
                                                                                "instances": 2}))))
    assert [v["weight"] for v in v2["versions"]] == [100, 10]
    r = await route_of(p, sid)
    assert [(v.version_id, v.weight) for v in r.versions] == [(f"{sid}-v1", 100), (f"{sid}-v2", 10)]
    await p.stub.DeleteVersion(pb.VersionRef(service_id=sid, version_id=f"{sid}-v1"))
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await p.stub.DeleteVersion(pb.VersionRef(service_id=sid, version_id=f"{sid}-v2"))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
