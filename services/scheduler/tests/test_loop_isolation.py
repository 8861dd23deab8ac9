"""One bad item never stops the scheduler's loop for the others (issue #7, part 4).

A scheduler service with an injected clock and no background loop; the test runs its steps. Each test
injects one named fault (a pure function made to raise for one workload or one group) and shows the
other items are decided as usual, the bad one is rejected with the error as its reason (or its group
skipped), and the loop's failure counter moved.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from capstan_core.clock import FixedClock
from capstan_core.contracts.common import ResourceSpec
from capstan_core.contracts.scheduling import CAPABILITY_TRAINING, WorkloadSubmitted
from capstan_core.eventstore import EventStore
from capstan_core.metrics import LOOP_ITEM_FAILURES, LOOP_STEP_FAILURES, LOOP_STEPS
from capstan_core.service import Service
from capstan_core.settings import ServiceSettings
from capstan_core.streams import event_subject
from capstan_core.testing import admin_store
from capstan_scheduler import isolation, snapshot
from capstan_scheduler.app import SchedulerApp
from capstan_scheduler.domain.core import cycle as core_cycle
from capstan_scheduler.reconcile import CYCLE, Scheduler
from capstan_scheduler.service import DEFINITION as SCHEDULER
from capstan_scheduler.tables import nodes, workloads


@dataclasses.dataclass
class Env:
    app: SchedulerApp
    sched: Scheduler
    clock: FixedClock
    owner: EventStore  # an admin connection: the test appends what the trainer would

    async def group(self, name: str) -> tuple[str, str]:
        """A group with one Running node (8 cpu); returns (group id, node id)."""
        rg = (await self.app.create_resource_group(name=name, description="", tags={}, policy_json="", creator="ops",
                                                   idempotency_key=name))["id"]
        node = await self.app.join_node(rg_id=rg, name=f"{name}-n", agent_kind="trainer", cpu=8, memory_gib=32, gpus={})
        return str(rg), str(node["id"])

    async def submit(self, task_id: str, rg: str) -> None:
        r = await self.owner.append(event_subject("train", task_id), [WorkloadSubmitted(
            workload_id=task_id, kind="training", capability=CAPABILITY_TRAINING, resource_group_id=rg,
            resources=ResourceSpec(cpu=1, memory_gib=1), at_ms=self.clock.now_ms())], expected_seq=0)
        await self.app.ctx.runner.wait_for(r.seq)

    def workload(self, wid: str) -> tuple[str, str]:
        with self.app.ctx.engine.connect() as conn:
            row = conn.execute(select(workloads.c.status, workloads.c.reason).where(workloads.c.id == wid)).one()
        return str(row.status), str(row.reason)

    async def node_state(self, node_id: str) -> str:
        """The node's state once the read model holds everything appended so far."""
        assert await self.app.ctx.runner.wait_for(await self.app.ctx.store.last_seq(), timeout=30)
        with self.app.ctx.engine.connect() as conn:
            return str(conn.execute(select(nodes.c.state).where(nodes.c.id == node_id)).scalar())

    def counter(self, name: str, loop: str) -> int:
        return self.app.ctx.counters.get(name, loop=loop)


@pytest.fixture
async def env(tmp_path: Path, nats_server: Any, secrets_dir: Path) -> AsyncIterator[Env]:
    clock = FixedClock()
    definition = dataclasses.replace(SCHEDULER, build=lambda ctx: SchedulerApp(ctx, clock=clock), background=[])
    svc = Service(definition, ServiceSettings(secrets_dir=secrets_dir, data_dir=tmp_path, nats_url=nats_server.url))
    await svc.start()
    try:
        async with admin_store(nats_server.url, secrets_dir) as owner:
            yield Env(svc.app, Scheduler(svc.app), clock, owner)
    finally:
        await svc.stop()


def _raise_for(real: Any, bad: str, arg: int = 0) -> Any:
    """``real``, raising for the workload (or item) whose id is ``bad`` -- a named fault injection."""

    def fake(*args: Any, **kwargs: Any) -> Any:
        target = args[arg]
        wid = target["id"] if isinstance(target, dict) or hasattr(target, "keys") else getattr(target, "id", None)
        if wid == bad:
            raise RuntimeError(f"injected fault on {bad}")
        return real(*args, **kwargs)

    return fake


async def test_a_workload_whose_row_cannot_be_converted_is_rejected_and_the_others_placed(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    rg, _ = await env.group("g")
    for tid in ("train-a", "train-bad", "train-c"):
        await env.submit(tid, rg)
    monkeypatch.setattr(snapshot, "request_of", _raise_for(snapshot.request_of, "train-bad"))
    await env.sched.step()
    assert env.workload("train-a")[0] == env.workload("train-c")[0] == "placed"
    assert env.workload("train-bad") == (
        "rejected", "the scheduler cannot handle this workload: RuntimeError: injected fault on train-bad")
    assert env.counter(LOOP_ITEM_FAILURES, CYCLE) >= 1
    assert env.counter(LOOP_STEP_FAILURES, CYCLE) == 0


async def test_a_workload_the_core_raises_on_is_found_rejected_and_the_rest_decided(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The core decides items in order; bisection finds the one it raises on, and the group is decided without it."""
    rg, _ = await env.group("g")
    ids = [f"train-{i}" for i in range(9)]
    for tid in ids:
        await env.submit(tid, rg)
    real = core_cycle._Cycle.admit
    monkeypatch.setattr(core_cycle._Cycle, "admit", _raise_for(real, "train-5", arg=1))
    await env.sched.step()
    placed = [tid for tid in ids if env.workload(tid)[0] == "placed"]
    assert placed == [tid for tid in ids if tid != "train-5"]  # 8 x 1 cpu on the 8-cpu node
    assert env.workload("train-5") == (
        "rejected", "the scheduler cannot handle this workload: RuntimeError: injected fault on train-5")
    assert env.counter(LOOP_ITEM_FAILURES, CYCLE) >= 1


async def test_a_group_the_core_fails_on_is_skipped_and_the_other_groups_and_steps_go_on(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken, broken_node = await env.group("broken")
    fine, _ = await env.group("fine")
    await env.submit("train-broken", broken)
    await env.submit("train-fine", fine)
    real = isolation.schedule

    def schedule(snap: Any, *args: Any) -> Any:
        if any(n.resource_group == broken for n in snap.nodes):
            raise RuntimeError("injected fault on the group")
        return real(snap, *args)

    monkeypatch.setattr(isolation, "schedule", schedule)
    env.clock.advance(16_000)  # every node falls silent: the silent-node step must still run after the cycle
    await env.sched.step()
    assert env.workload("train-fine")[0] == "placed"
    assert env.workload("train-broken")[0] == "queued"  # nothing decided for its group, nothing rejected
    assert env.counter(LOOP_ITEM_FAILURES, CYCLE) >= 1
    assert await env.node_state(broken_node) == "Abnormal"


async def test_a_cycle_that_fails_whole_is_counted_and_the_node_steps_still_run(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, node = await env.group("g")

    def plans(only: Any = None) -> Any:
        raise RuntimeError("injected fault in the snapshot")

    monkeypatch.setattr(env.app, "plans_and_rows", plans)
    env.clock.advance(16_000)
    await env.sched.step()
    assert env.counter(LOOP_STEP_FAILURES, CYCLE) == 1
    assert env.counter(LOOP_STEPS, "scheduler.silent_nodes") == 1
    assert await env.node_state(node) == "Abnormal"
