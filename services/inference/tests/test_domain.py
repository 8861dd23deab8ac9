"""The pure parts of online services: the form's validation, the rolling planner, cron, autoscaling."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capstan_core.contracts.common import ResourceSpec
from capstan_core.contracts.scheduling import WorkloadSubmitted, WorkloadWithdrawn
from capstan_core.contracts.serving import ServiceReplicaAdded, ServiceReplicaDraining
from capstan_core.errors import InvalidArgument
from capstan_inference.domain import autoscale, cron, rolling, spec
from capstan_inference.domain import group as domain

BASE = {"runtime": "transformers", "model": {"kind": "path", "path": "/models/tiny"}, "resource_group_id": "rsg-1"}


def norm(**changes: Any) -> dict[str, Any]:
    return spec.normalize({**BASE, **changes})


def test_defaults_are_filled_in() -> None:
    s = norm()
    assert norm(grpc=True)["port"] == 8500 and norm(grpc=True, port=9000)["port"] == 9000
    assert s["port"] == 8501 and s["grace_period_s"] == 30 and s["deploy_retries"] == 5 and s["replicas"] == 1
    assert s["rate_limit"]["kind"] == "none" and s["instances"] == 1
    assert s["probes"]["readiness"]["kind"] == "http" and s["probes"]["readiness"]["path"] == "/health"
    custom = norm(runtime="custom", command="./serve", model={"kind": "none"})
    assert custom["probes"]["readiness"]["kind"] == "tcp"


@pytest.mark.parametrize(("changes", "field"), [
    ({"port": 8505}, "port"), ({"port": 6006}, "port"), ({"port": 9092}, "port"), ({"port": 80}, "port"),
    ({"port": 70000}, "port"), ({"grace_period_s": 0}, "grace_period_s"), ({"grace_period_s": 86401}, "grace_period_s"),
    ({"pre_stop": "sleep 70"}, "pre_stop"), ({"pre_stop": ["sleep", 70]}, "pre_stop"),
    ({"resources": {"cpu": 1, "memory_gib": 1, "gpu_type": "A10", "gpu": 0.25}}, "resources.gpu"),
    ({"resources": {"cpu": 1, "memory_gib": 1, "gpu_type": "A10", "gpu": 1.5}}, "resources.gpu"),
    ({"runtime": "vllm"}, "resources.gpu"), ({"runtime": "tgi"}, "runtime"), ({"runtime": "custom"}, "command"),
    ({"command": "python serve.py"}, "command"), ({"model": {"kind": "none"}}, "model"),
    ({"model": {"kind": "path", "path": "/"}}, "model.path"),
    ({"model": {"kind": "path", "path": "/a/../etc"}}, "model.path"),
    ({"model": {"kind": "path", "path": "a//b"}}, "model.path"),
    ({"model": {"kind": "registry"}}, "model.model_id"), ({"deploy_retries": 100}, "deploy_retries"),
    ({"replicas": 0}, "replicas"), ({"max_surge_pct": 101}, "max_surge_pct"),
    ({"rate_limit": {"kind": "qps", "value": 501}}, "rate_limit.value"), ({"rate_limit": {"kind": "x"}}, "rate_limit.kind"),
    ({"env": {"1BAD": "x"}}, "env"), ({"env": {"CAPSTAN_SECRET": "x"}}, "env"),
    ({"probes": {"readiness": {"kind": "grpc"}}}, "probes.readiness.kind"),
    ({"probes": {"readiness": {"kind": "http", "path": "health"}}}, "probes.readiness.path"),
    ({"probes": {"liveness": {"kind": "exec", "command": []}}}, "probes.liveness.command"),
    ({"resource_group_id": ""}, "resource_group_id"), ({"served_model_name": "a b"}, "served_model_name"),
    ({"image": "img\n"}, "image"), ({"bogus": 1}, "spec.bogus"), ({"instances": 2}, "instances"),
    ({"region": "ap-guangzhou"}, "region"), ({"sidecar": "img"}, "sidecar"), ({"sidecar": {"command": ["x"]}}, "sidecar.image"),
    ({"sidecar": {"image": "builtin"}}, "sidecar.command"), ({"sidecar": {"image": "a", "cmd": []}}, "sidecar.cmd"),
    ({"sidecar": {"image": "a", "command": ["x"], "cpu": 0}}, "sidecar.cpu"),
    ({"sidecar": {"image": "a", "command": ["x"], "memory_gib": 1e9}}, "sidecar.memory_gib"),
    ({"sidecar": {"image": "a", "command": ["x"], "env": {"CAPSTAN_X": "1"}}}, "sidecar.env"),
])
def test_every_field_is_validated_with_its_name(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        norm(**changes)
    assert e.value.field == field, e.value.message


def test_valid_forms() -> None:
    s = norm(runtime="vllm", resources={"cpu": 4, "memory_gib": 16, "gpu_type": "A10", "gpu": 0.5},
             pre_stop=["sleep", "70"], grace_period_s=86400, port=8500, env={"MAX_MODEL_LEN": "4096"},
             probes={"readiness": {"kind": "http", "path": "/health"}, "liveness": {"kind": "tcp"},
                     "startup": {"kind": "exec", "command": ["true"]}},
             rate_limit={"kind": "concurrency", "value": 8, "queue_size": 16, "queue_timeout_ms": 1000})
    assert s["probes"]["readiness"]["period_s"] == 10 and s["pre_stop"] == ["sleep", "70"]
    assert norm(runtime="custom", command="python -m http.server 8501", model={"kind": "none"})["command"]
    assert spec.normalize({**BASE, "instances": 3}, deployment_mode="multi-instance")["instances"] == 3
    assert norm(resources={"cpu": 1, "memory_gib": 1, "gpu_type": "A10", "gpu": 2})["resources"]["gpu"] == 2.0
    assert spec.check_name("千问-chat_1") and pytest.raises(InvalidArgument, spec.check_name, "-bad")
    side = norm(sidecar={"image": "sha256:" + "a" * 64})["sidecar"]  # an imported image's own entrypoint
    assert side == {"image": "sha256:" + "a" * 64, "command": [], "env": {}, "cpu": 0.25, "memory_gib": 0.25}
    assert norm()["sidecar"] is None and norm()["region"] == "default" == norm(region="default")["region"]
    assert spec.normalize({**BASE, "region": "ap-guangzhou"}, region="ap-guangzhou")["region"] == "ap-guangzhou"
    with pytest.raises(InvalidArgument, match="standard deployment"):
        spec.normalize({**BASE, "instances": 2, "sidecar": {"image": "a", "command": ["x"]}},
                       deployment_mode="multi-instance")


# -- the planner -------------------------------------------------------------------------------------


def simulate(desired: int, old: int, surge: int, unavail: int, steps: int = 60) -> list[rolling.ReplicaView]:
    """Apply plans until nothing changes: added replicas become ready on the next step."""
    reps = [rolling.ReplicaView(f"o{i}", False, True, i) for i in range(old)]
    n = old
    for _ in range(steps):
        was_ready = all(r.ready for r in reps)
        p = rolling.plan(desired, reps, surge, unavail)
        max_total = desired + rolling.bounds(desired, surge, unavail)[0]
        assert len(reps) + p.add <= max(max_total, len(reps))
        reps = [r for r in reps if r.replica_id not in p.retire]
        reps = [rolling.ReplicaView(r.replica_id, r.current, True, r.order) for r in reps]  # the adds got ready
        reps += [rolling.ReplicaView(f"n{n + i}", True, False, n + i) for i in range(p.add)]
        n += p.add
        if not p.add and not p.retire and was_ready:
            break
    return reps


@settings(max_examples=300, deadline=None)
@given(desired=st.integers(0, 12), old=st.integers(0, 12), surge=st.integers(0, 100), unavail=st.integers(0, 100))
def test_a_rollout_converges(desired: int, old: int, surge: int, unavail: int) -> None:
    reps = simulate(desired, old, surge, unavail)
    final = rolling.plan(desired, [rolling.ReplicaView(r.replica_id, r.current, True, r.order) for r in reps], surge,
                         unavail)
    cur = [r for r in reps if r.current]
    assert len(cur) == desired and all(r.current for r in reps) and not final.retire


@settings(max_examples=300, deadline=None)
@given(desired=st.integers(1, 10), surge=st.integers(0, 100), unavail=st.integers(0, 100),
       ready=st.lists(st.booleans(), min_size=0, max_size=12), current=st.lists(st.booleans(), min_size=0, max_size=12))
def test_a_step_keeps_availability_and_the_surge(desired: int, surge: int, unavail: int, ready: list[bool],
                                               current: list[bool]) -> None:
    reps = [rolling.ReplicaView(f"r{i}", c, r, i) for i, (c, r) in enumerate(zip(current, ready, strict=False))]
    p = rolling.plan(desired, reps, surge, unavail)
    s, u = rolling.bounds(desired, surge, unavail)
    left_ready = sum(1 for r in reps if r.ready and r.replica_id not in p.retire)
    before_ready = sum(1 for r in reps if r.ready)
    n_current = sum(1 for r in reps if r.current)
    if n_current <= desired:  # not a scale-in: availability is kept
        assert left_ready >= min(before_ready, desired - u)
    assert p.add == 0 or len(reps) + p.add <= desired + s
    assert len(set(p.retire)) == len(p.retire)


def test_one_replica_update_adds_before_it_retires() -> None:
    old = [rolling.ReplicaView("a", False, True, 1)]
    assert rolling.plan(1, old, 25, 25) == rolling.Plan(1, ())
    both = old + [rolling.ReplicaView("b", True, False, 2)]
    assert rolling.plan(1, both, 25, 25) == rolling.Plan(0, ())
    ready = old + [rolling.ReplicaView("b", True, True, 2)]
    assert rolling.plan(1, ready, 25, 25) == rolling.Plan(0, ("a",))


def test_scale_in_retires_not_ready_then_newest() -> None:
    reps = [rolling.ReplicaView("a", True, True, 1), rolling.ReplicaView("b", True, False, 2),
            rolling.ReplicaView("c", True, True, 3)]
    assert rolling.plan(1, reps, 25, 25).retire == ("b", "c")


# -- cron and time rules --------------------------------------------------------------------------------


@pytest.mark.parametrize(("expr", "date", "ok"), [
    ("* * * 1-7 10 *", dt.date(2026, 10, 3), True), ("* * * 1-7 10 *", dt.date(2026, 10, 8), False),
    ("* * * 1-7 OCT *", dt.date(2026, 10, 1), True), ("0 0 0 * * SAT,SUN", dt.date(2026, 12, 5), True),
    ("0 0 0 * * 1-5", dt.date(2026, 12, 5), False), ("* * * */2 * *", dt.date(2026, 12, 3), True),
    ("* * * 25 DEC *", dt.date(2026, 12, 25), True), ("* * * 1 * 0", dt.date(2026, 11, 8), True),  # OR: a Sunday
    ("* * * * * 7", dt.date(2026, 11, 8), True), ("* * * * * 1-7", dt.date(2026, 11, 8), True),
])
def test_cron_dates(expr: str, date: dt.date, ok: bool) -> None:
    assert cron.matches(expr, date) is ok


@pytest.mark.parametrize("expr", ["* * * 1-7 10", "* * * 32 * *", "* * * * 13 *", "* * * * * MOON", "x * * * * *",
                                  "* * * 7-1 * *", "* * * */0 * *", "* 60 * * * *"])
def test_bad_cron_is_refused(expr: str) -> None:
    with pytest.raises(InvalidArgument):
        cron.parse(expr)


def at(y: int, m: int, d: int, hh: int, mm: int) -> int:
    return int(dt.datetime(y, m, d, hh, mm, tzinfo=dt.UTC).timestamp() * 1000)


def test_time_rules_with_priorities_and_exception_dates() -> None:
    cfg = autoscale.normalize({"mode": "time", "default": 2, "rules": [
        {"at": "09:00", "replicas": 5, "except": ["* * * * * SAT,SUN"]},
        {"at": "09:00", "replicas": 7},
        {"at": "20:00", "replicas": 1},
    ]}, rate_limit_kind="none")
    assert autoscale.time_replicas(cfg, at(2026, 12, 2, 9, 30)) == 5  # Wednesday: the first rule wins the tie
    assert autoscale.time_replicas(cfg, at(2026, 12, 2, 8, 59)) == 1  # yesterday's 20:00 still holds
    assert autoscale.time_replicas(cfg, at(2026, 12, 2, 21, 0)) == 1
    assert autoscale.time_replicas(cfg, at(2026, 12, 5, 10, 0)) == 7  # Saturday: the first is excepted
    lone = autoscale.normalize({"mode": "time", "default": 3, "rules": [
        {"at": "12:00", "replicas": 4, "except": ["* * * * * *"]}]}, rate_limit_kind="none")
    assert autoscale.time_replicas(lone, at(2026, 12, 2, 13, 0)) == 3  # never fires: the default


def test_hpa_decisions() -> None:
    cfg = autoscale.normalize({"mode": "hpa", "metric": "qps", "target": 10, "min": 1, "max": 4, "cooldown_s": 30},
                              rate_limit_kind="none")
    now = 1_000_000
    assert autoscale.hpa_replicas(cfg, 1, [35.0], last_change_ms=0, now_ms=now) == 4
    assert autoscale.hpa_replicas(cfg, 2, [100.0, 100.0], last_change_ms=0, now_ms=now) == 4  # the max
    assert autoscale.hpa_replicas(cfg, 2, [10.5, 9.6], last_change_ms=0, now_ms=now) == 2  # within 10%
    assert autoscale.hpa_replicas(cfg, 3, [1.0, 1.0, 1.0], last_change_ms=0, now_ms=now) == 1
    assert autoscale.hpa_replicas(cfg, 3, [1.0, 1.0, 1.0], last_change_ms=now - 10_000, now_ms=now) == 3  # cooldown
    assert autoscale.hpa_replicas(cfg, 6, [], last_change_ms=now, now_ms=now) == 4  # bounds fixed at once
    with pytest.raises(InvalidArgument):
        autoscale.normalize({"mode": "hpa", "metric": "concurrency", "target": 50}, rate_limit_kind="none")
    with pytest.raises(InvalidArgument):
        autoscale.normalize({"mode": "hpa", "metric": "cpu", "target": 50, "min": 3, "max": 2}, rate_limit_kind="none")
    gpu = {"mode": "hpa", "metric": "gpu", "target": 60, "max": 3}
    with pytest.raises(InvalidArgument, match="resources.gpu > 0"):
        autoscale.normalize(gpu, rate_limit_kind="none")  # a version without cards has no GPU to measure
    assert autoscale.normalize(gpu, rate_limit_kind="none", gpu=0.5)["metric"] == "gpu"


def test_concurrency_utilisation_counts_the_calls_waiting_for_a_slot() -> None:
    """In flight alone stops at the limit: a full replica with calls waiting must read over 100%, or a
    target near 100% never scales up and a lower one grows at most by its ratio per cooldown."""
    from capstan_core.clock import FixedClock
    from capstan_inference.loads import LoadBoard

    clock = FixedClock(1_000_000)
    board = LoadBoard(None, clock)  # type: ignore[arg-type]  # metric_values reads no bucket
    cfg = autoscale.normalize({"mode": "hpa", "metric": "concurrency", "target": 100, "min": 1, "max": 5,
                               "cooldown_s": 0}, rate_limit_kind="concurrency")
    v = {"id": "v1", "spec": {"rate_limit": {"kind": "concurrency", "value": 2}}}
    rep = {"version_id": "v1", "state": "Ready", "generation": 1, "reported_generation": 1, "draining_at_ms": 0}
    g: Any = {"replicas": {"r1": rep}}
    full = {"r1": {"qps": 8.0, "in_flight": 2.0, "queued": 5.0, "at_ms": 1_000_000.0}}
    values = board.metric_values(g, v, "concurrency", full)
    assert values == [350.0]
    assert autoscale.hpa_replicas(cfg, 1, values, last_change_ms=0, now_ms=clock.now_ms()) == 4
    idle = {"r1": {"qps": 0.0, "in_flight": 2.0, "queued": 0.0, "at_ms": 1_000_000.0}}
    assert autoscale.hpa_replicas(cfg, 1, board.metric_values(g, v, "concurrency", idle), last_change_ms=0,
                                  now_ms=clock.now_ms()) == 1  # full, nobody waiting: at the target


# -- the aggregate --------------------------------------------------------------------------------------


def created(replicas: int = 2) -> domain.Group:
    events = domain.decide_create(None, service_id="ms-abcdefgh", name="svc", description="", tags={},
                                  deployment_mode="standard", auth_enabled=False, auto_stop_at_ms=0,
                                  spec=norm(replicas=replicas), creator="alice", now_ms=1000)
    g = domain.fold(events)
    assert g is not None
    return g


def step(g: domain.Group, now: int = 2000) -> list[Any]:
    events = domain.decide_reconcile(g, now_ms=now, drain_delay_ms=2000, rejected={})
    for e in events:
        domain.apply(g, e)
    return events


def test_replicas_are_workloads_submitted_in_the_same_commit() -> None:
    g = created(2)
    events = step(g)
    assert [type(e) for e in events] == [ServiceReplicaAdded, WorkloadSubmitted] * 2
    ids = [e.replica_id for e in events if isinstance(e, ServiceReplicaAdded)]
    assert ids == ["ms-abcdefgh-v1-1", "ms-abcdefgh-v1-2"] and all("." not in i for i in ids)
    assert step(g) == []  # converged: nothing more


def test_a_replica_is_placed_with_its_sidecar_s_resources() -> None:
    events = domain.decide_create(None, service_id="ms-abcdefgh", name="svc", description="", tags={},
                                  deployment_mode="standard", auth_enabled=False, auto_stop_at_ms=0,
                                  spec=norm(sidecar={"image": "a", "command": ["x"], "cpu": 0.5, "memory_gib": 1}),
                                  creator="alice", now_ms=1000)
    g = domain.fold(events)
    assert g is not None
    added, submitted = step(g)
    assert (added.resources.cpu, added.resources.memory_gib) == (1.0, 2.0)  # the server's own
    assert (submitted.resources.cpu, submitted.resources.memory_gib) == (1.5, 3.0)  # what the node gives the replica


def test_exited_replica_restarts_until_the_retry_policy_fails_the_first_deployment() -> None:
    g = created(1)
    step(g)
    rid = next(iter(g["replicas"]))
    for attempt in range(1, 7):
        gen = g["replicas"][rid]["generation"] if rid in g["replicas"] else 0
        for e in domain.decide_report(g, g["id"], rid, state="Exited", address="", exit_code=1, message="boom",
                                      generation=gen, now_ms=3000):
            domain.apply(g, e)
        step(g, 3000 + attempt)
        if g["versions"]["ms-abcdefgh-v1"]["failed"]:
            break
    assert g["versions"]["ms-abcdefgh-v1"]["failed"].startswith("deployment failed after 5 retries")
    assert domain.status(g) == "Failed"
    # stopped and started again: the first deployment is tried afresh
    for state in ("Stopped", "Running"):
        for e in domain.decide_state(g, g["id"], state, "alice", 4000):
            domain.apply(g, e)
        step(g, 4000)
    assert not g["versions"]["ms-abcdefgh-v1"]["failed"] and domain.status(g) == "Deploying"


def test_a_retired_replica_drains_before_it_stops_and_is_withdrawn() -> None:
    g = created(1)
    step(g)
    rid = next(iter(g["replicas"]))
    for e in domain.decide_report(g, g["id"], rid, state="Ready", address="10.0.0.1:8501", exit_code=0, message="",
                                  generation=1, now_ms=2500):
        domain.apply(g, e)
    assert domain.decide_report(g, g["id"], rid, state="Ready", address="10.0.0.1:8501", exit_code=0, message="",
                                generation=1, now_ms=2600) == []  # unchanged: nothing appended
    for e in domain.decide_scale(g, g["id"], "ms-abcdefgh-v1", 0, "alice", 3000):
        domain.apply(g, e)
    assert [type(e) for e in step(g, 3000)] == [ServiceReplicaDraining]
    assert step(g, 4000) == []  # the drain delay
    assert g["replicas"][rid]["stopping_at_ms"] == 0
    step(g, 5000)
    assert g["replicas"][rid]["stopping_at_ms"] == 5000
    for e in domain.decide_report(g, g["id"], rid, state="Stopped", address="", exit_code=0, message="",
                                  generation=1, now_ms=6000):
        domain.apply(g, e)
    events = step(g, 6000)
    assert any(isinstance(e, WorkloadWithdrawn) and e.workload_id == rid for e in events) and not g["replicas"]


def test_the_service_of_a_replica_id() -> None:
    assert domain.service_of(domain.replica_id("ms-vvv1v2v3", 2, 17)) == "ms-vvv1v2v3"
    assert domain.service_of("ms-abcdefgh-v1-3") == "ms-abcdefgh"
    for bad in ("ms-abcdefgh", "ms-abcdefgh-v1", "ms-abcdefgh-vx-1", "train-abc-v1-1", "", "-v1-1"):
        assert domain.service_of(bad) == ""


def test_the_fold_is_total_over_events_about_unknown_things() -> None:
    from capstan_core.contracts.serving import (
        ServiceKeyUpdated,
        ServiceReplicaRemoved,
        ServiceReplicaReported,
        ServiceVersionScaled,
        ServiceWeightsSet,
    )
    g = created(1)
    junk = [
        ServiceReplicaReported(service_id=g["id"], replica_id="ms-abcdefgh-v1-99", state="Ready", at_ms=1),
        ServiceReplicaRemoved(service_id=g["id"], replica_id="ms-abcdefgh-v1-99", reason="x", at_ms=1),
        ServiceVersionScaled(service_id=g["id"], version_id="ms-abcdefgh-v9", replicas=3, by="x", at_ms=1),
        ServiceWeightsSet(service_id=g["id"], weights={"ms-abcdefgh-v9": 5}, by="x", at_ms=1),
        ServiceKeyUpdated(service_id=g["id"], key_id="key-none", enabled=False, remark="", tokens_per_minute=0,
                          tokens_per_day=0, by="x", at_ms=1),
        ServiceReplicaAdded(service_id=g["id"], version_id="ms-abcdefgh-v9", replica_id="r", revision=1,
                            resources=ResourceSpec(), at_ms=1),
    ]
    before = json.dumps(g, sort_keys=True)
    for e in junk:
        domain.apply(g, e)
    after = json.loads(json.dumps(g))
    after["updated_at_ms"] = json.loads(before)["updated_at_ms"]
    assert json.dumps(after, sort_keys=True) == before


@settings(max_examples=120, deadline=None)
@given(replicas=st.integers(1, 6), surge=st.integers(0, 100), unavail=st.integers(0, 100),
       startup=st.lists(st.integers(0, 3), min_size=12, max_size=12))
def test_a_rolling_update_keeps_routable_replicas_and_converges(replicas: int, surge: int, unavail: int,
                                                                startup: list[int]) -> None:
    """The whole aggregate, with agents that take a few ticks to become ready and stop when told: while
    a version is rolled, the routing table never holds fewer routable replicas than the version
    allows (desired - unavailable: with the default 25% that is never none), and it ends with only the
    new revision."""
    g = domain.fold(domain.decide_create(
        None, service_id="ms-abcdefgh", name="svc", description="", tags={}, deployment_mode="standard",
        auth_enabled=False, auto_stop_at_ms=0, creator="a", now_ms=0,
        spec=norm(replicas=replicas, max_surge_pct=surge, max_unavailable_pct=unavail)))
    assert g is not None
    vid = "ms-abcdefgh-v1"
    now, born = 0, {}

    def tick(n: int = 1) -> None:
        nonlocal now
        for _ in range(n):
            now += 1000
            for e in domain.decide_reconcile(g, now_ms=now, drain_delay_ms=2000, rejected={}):
                domain.apply(g, e)
            for rid, r in list(g["replicas"].items()):  # the agents
                born.setdefault(rid, now)
                if r["stopping_at_ms"] and r["state"] != "Stopped":
                    state = "Stopped"
                elif not r["draining_at_ms"] and r["state"] == "Pending" and now - born[rid] >= 1000 * startup[
                        len(born) % len(startup)]:
                    state = "Ready"
                else:
                    continue
                for e in domain.decide_report(g, g["id"], rid, state=state, address=f"{rid}:1", exit_code=0,
                                              message="", generation=r["generation"], now_ms=now):
                    domain.apply(g, e)

    tick(8)
    assert sum(1 for r in g["replicas"].values() if domain.routable(r)) == replicas
    floor = replicas - rolling.bounds(replicas, surge, unavail)[1]
    new_spec = {**g["versions"][vid]["spec"], "env": {"V": "2"}}
    for e in domain.decide_update_version(g, g["id"], vid, new_spec, "a", now):
        domain.apply(g, e)
    for _ in range(40):
        tick()
        assert sum(1 for r in g["replicas"].values() if domain.routable(r)) >= floor
    assert [r["revision"] for r in g["replicas"].values()] == [2] * replicas
    assert all(domain.routable(r) for r in g["replicas"].values()) and domain.status(g) == "Running"


def test_a_path_model_is_on_the_platform_storage() -> None:
    from capstan_inference.replica_spec import model_dir
    m = norm(model={"kind": "path", "path": "/etc/", "subdir": "ckpt-100"})["model"]
    assert m["path"] == "etc" and model_dir(m, "/srv/capstan/storage") == "/srv/capstan/storage/etc/ckpt-100"
    reg = {"kind": "registry", "model_id": "m", "version": 2, "path": "/srv/capstan/storage/registry/m/2", "subdir": ""}
    assert model_dir(reg, "/elsewhere") == "/srv/capstan/storage/registry/m/2"
    assert model_dir({"kind": "none"}, "/x") == ""
