"""The scheduling core wired into the service: priorities from the policy, queue modes, fractional
GPUs sharing a card, refusals with a reason. In-process services over a real nats-server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from capstan_agentkit.gpus import gpu_env
from capstan_core.service import Service
from capstan_core.settings import ServiceSettings
from capstan_core.testing import admin_channel
from capstan_proto import common_pb2, scheduler_pb2, scheduler_pb2_grpc, trainer_pb2, trainer_pb2_grpc
from capstan_scheduler.service import DEFINITION as SCHEDULER
from capstan_trainer.service import DEFINITION as TRAINER


class Pool:
    def __init__(self, s: Any, t: Any) -> None:
        self.s, self.t = s, t

    async def group(self, policy: dict[str, Any], nodes: list[dict[str, Any]]) -> tuple[str, list[str]]:
        rg = await self.s.CreateResourceGroup(scheduler_pb2.CreateResourceGroupRequest(name="g", policy_json=json.dumps(policy)))
        ids = []
        for i, n in enumerate(nodes):
            node = await self.s.JoinNode(scheduler_pb2.JoinNodeRequest(
                resource_group_id=rg.id, name=f"n{i}", cpu=n.get("cpu", 8), memory_gib=n.get("memory_gib", 32),
                gpus=n.get("gpus", {}), agent_kind="trainer"))
            ids.append(node.id)
        return rg.id, ids

    async def submit(self, rg: str, name: str, cpu: float = 1, gpu_type: str = "", gpu: float = 0, tags: dict[str, str] | None = None,
                     count: int = 1) -> str:
        t = await self.t.CreateTrainingTask(trainer_pb2.CreateTrainingTaskRequest(
            name=name, resource_group_id=rg, command="x", instance_count=count, tags=tags or {},
            resources=common_pb2.Resources(cpu=cpu, memory_gib=1, gpu_type=gpu_type, gpu=gpu)))
        return str(t.id)

    async def status(self, task_id: str) -> str:
        return str((await self.t.GetTrainingTask(trainer_pb2.GetTrainingTaskRequest(id=task_id))).status)

    async def get(self, task_id: str) -> Any:
        return await self.t.GetTrainingTask(trainer_pb2.GetTrainingTaskRequest(id=task_id))

    async def wait(self, task_id: str, *statuses: str, timeout: float = 10) -> Any:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            got = await self.get(task_id)
            if got.status in statuses:
                return got
            assert asyncio.get_running_loop().time() < deadline, f"{task_id} is {got.status}, wanted {statuses}"
            await asyncio.sleep(0.05)

    async def settle(self) -> None:
        await asyncio.sleep(0.6)  # a few scheduling cycles

    async def finish(self, task_id: str, node_id: str, index: int = 0) -> None:
        await self.t.ReportInstance(trainer_pb2.ReportInstanceRequest(
            task_id=task_id, instance_index=index, node_id=node_id, state="Exited", exit_code=0))

    async def cards(self, node_id: str) -> dict[str, list[tuple[int, int]]]:
        resp = await self.s.ListNodeAssignments(scheduler_pb2.ListNodeAssignmentsRequest(node_id=node_id))
        return {a.workload_id: [(c.index, c.tenths) for c in a.cards] for a in resp.items}


@pytest.fixture
async def pool(tmp_path: Path, nats_server: Any, secrets_dir: Path) -> AsyncIterator[Pool]:
    sched = Service(SCHEDULER, ServiceSettings(secrets_dir=secrets_dir, data_dir=tmp_path / "s", nats_url=nats_server.url))
    await sched.start()
    trainer = Service(TRAINER, ServiceSettings(secrets_dir=secrets_dir, data_dir=tmp_path / "t", nats_url=nats_server.url, scheduler_addr=sched.address))
    await trainer.start()
    chs, cht = admin_channel(sched.address, "scheduler", secrets_dir), admin_channel(trainer.address, "trainer", secrets_dir)
    yield Pool(scheduler_pb2_grpc.SchedulerStub(chs), trainer_pb2_grpc.TrainerStub(cht))
    await chs.close()
    await cht.close()
    await trainer.stop()
    await sched.stop()


def _policy(queue: int = 0, default_priority: int = 5, rules: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"ResourceRule": {"DefaultPriority": default_priority, "DefaultQueue": queue, "Preempted": 0},
            "TaskRules": rules or []}


async def test_tagged_task_gets_its_priority_and_goes_first(pool: Pool) -> None:
    rules = [{"AttrRules": [{"ValueType": "Tag", "Key": "task-type", "Value": "speech"}], "ScheduleRule": {"Priority": 1}}]
    rg, (node,) = await pool.group(_policy(rules=rules), [{"cpu": 2}])
    first = await pool.submit(rg, "first", cpu=2)
    await pool.wait(first, "Starting")
    low = await pool.submit(rg, "low", cpu=2)
    high = await pool.submit(rg, "high", cpu=2, tags={"task-type": "speech"})
    await pool.settle()
    assert (await pool.status(low), await pool.status(high)) == ("Queued", "Queued")
    await pool.finish(first, node)
    await pool.wait(high, "Starting")
    assert await pool.status(low) == "Queued"


@pytest.mark.parametrize(("mode", "small_starts"), [(0, False), (2, True)])
async def test_strict_fifo_blocks_and_backfill_does_not(pool: Pool, mode: int, small_starts: bool) -> None:
    rg, _ = await pool.group(_policy(queue=mode), [{"cpu": 4}])
    running = await pool.submit(rg, "running", cpu=3)
    await pool.wait(running, "Starting")
    big = await pool.submit(rg, "big", cpu=4)  # must wait for `running`
    small = await pool.submit(rg, "small", cpu=1)  # fits in what is left
    await pool.settle()
    assert await pool.status(big) == "Queued"
    assert (await pool.status(small) == "Starting") is small_starts


async def test_fractions_share_one_card_and_whole_cards_do_not(pool: Pool) -> None:
    rg, (node,) = await pool.group(_policy(queue=2), [{"gpus": {"A100": 2}}])
    halves = [await pool.submit(rg, f"half-{i}", gpu_type="A100", gpu=0.5) for i in range(2)]
    for t in halves:
        await pool.wait(t, "Starting")
    cards = await pool.cards(node)
    assert sorted(cards[t][0][1] for t in halves) == [5, 5]
    assert len({cards[t][0][0] for t in halves}) == 1  # both on the same card
    whole = await pool.submit(rg, "whole", gpu_type="A100", gpu=1)
    await pool.wait(whole, "Starting")
    assert (await pool.cards(node))[whole] == [(1 - cards[halves[0]][0][0], 10)]
    third = await pool.submit(rg, "third", gpu_type="A100", gpu=0.5)
    await pool.settle()
    assert await pool.status(third) == "Queued"  # both cards are full


async def test_fraction_of_a_card_that_cannot_be_shared_is_refused_with_a_reason(pool: Pool) -> None:
    rg, _ = await pool.group(_policy(), [{"gpus": {"K80": 4}}])
    task = await pool.submit(rg, "frac", gpu_type="K80", gpu=0.3)
    failed = await pool.wait(task, "Failed")
    assert "K80 cards are not shareable" in failed.failure_reason
    too_big = await pool.submit(rg, "huge", gpu_type="K80", gpu=8)
    assert "can ever hold" in (await pool.wait(too_big, "Failed")).failure_reason


async def test_gang_is_placed_all_or_nothing(pool: Pool) -> None:
    rg, nodes = await pool.group(_policy(queue=2), [{"gpus": {"A100": 4}}, {"gpus": {"A100": 4}}])
    gang = await pool.submit(rg, "gang", gpu_type="A100", gpu=4, count=2)
    got = await pool.wait(gang, "Starting")
    assert sorted(i.node_id for i in got.instances) == sorted(nodes)
    other = await pool.submit(rg, "other", gpu_type="A100", gpu=4, count=2)
    await pool.settle()
    assert await pool.status(other) == "Queued"
    for n in nodes:  # nothing partial for `other`
        assert list(await pool.cards(n)) == [gang]


def test_gpu_env_for_cards_fractions_and_simulated_nodes() -> None:
    assert gpu_env([], simulated=False) == {"CUDA_VISIBLE_DEVICES": ""}
    env = gpu_env([(2, 10), (3, 10)], simulated=False)
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3" and "CAPSTAN_GPU_MEMORY_FRACTION" not in env
    env = gpu_env([(1, 3)], simulated=False)
    assert env["CUDA_VISIBLE_DEVICES"] == "1" and env["CAPSTAN_GPU_MEMORY_FRACTION"] == "0.3"
    env = gpu_env([(0, 5)], simulated=True)
    assert env["CUDA_VISIBLE_DEVICES"] == "" and env["CAPSTAN_SIMULATED_GPUS"] == "1" and env["CAPSTAN_GPU_CARDS"] == "0:5"


def test_cards_are_numbered_per_node_over_types_in_name_order() -> None:
    from capstan_scheduler.snapshot import cards_of

    assert [(c.index, c.type) for c in cards_of({"T4": 2, "A100": 3})] == [
        (0, "A100"), (1, "A100"), (2, "A100"), (3, "T4"), (4, "T4")
    ]


async def test_queue_explains_positions_reasons_lanes_and_board(pool: Pool) -> None:
    rg, (n0, n1) = await pool.group(_policy(queue=0), [{"cpu": 8, "gpus": {"A100": 2}}, {"cpu": 8, "gpus": {"A100": 2}}])
    one = await pool.submit(rg, "one", gpu_type="A100", gpu=1)
    await pool.wait(one, "Starting")
    one_b = await pool.submit(rg, "one-b", gpu_type="A100", gpu=1)  # packed next to `one`: that node is full
    await pool.wait(one_b, "Starting")
    frac = await pool.submit(rg, "frac", gpu_type="A100", gpu=0.5)  # the other node: 1 whole + 0.5 free
    await pool.wait(frac, "Starting")
    big = await pool.submit(rg, "big", gpu_type="A100", gpu=4)  # no node has 4 cards: waits forever? rejected
    assert "can ever hold" in (await pool.wait(big, "Failed")).failure_reason
    two = await pool.submit(rg, "two", gpu_type="A100", gpu=2)  # needs a whole free node: none has 2 free
    after = await pool.submit(rg, "after", gpu_type="A100", gpu=0.2)  # would fit, but strict FIFO
    cpu = await pool.submit(rg, "cpu-only", cpu=1)  # another lane: never blocked by A100 work
    await pool.wait(cpu, "Starting")
    await pool.settle()
    view = await pool.s.GetQueue(scheduler_pb2.GetQueueRequest(resource_group_id=rg))
    by_id = {i.workload_id: i for i in view.items}
    assert view.queue_mode == 0 and set(by_id) == {two, after}
    assert by_id[two].position == 1 and by_id[after].position == 2
    assert "2 x A100" in by_id[two].reason and "largest free block is 1" in by_id[two].reason, by_id[two].reason
    assert f"blocked by strict FIFO behind {two}" in by_id[after].reason
    assert by_id[two].resources.gpu == 2 and by_id[two].submitted_at_ms > 0
    (a100,) = [lane for lane in view.lanes if lane.card_type == "A100"]
    assert a100.total_cards == 4 and a100.whole_machine_free_cards == 0 and a100.fragment_free_cards == 1.5
    board = {n.node_id: n for n in view.nodes}
    assert {one, one_b, frac} <= {w for n in board.values() for w in n.workloads}
    assert sum(n.gpus_free["A100"] for n in board.values()) == 1.5 and board[n0].gpus == {"A100": 2}
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await pool.s.GetQueue(scheduler_pb2.GetQueueRequest(resource_group_id="rsg-nope"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_scheduler_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from capstan_scheduler.settings import SchedulerSettings

    monkeypatch.setenv("CAPSTAN_NODE_ABNORMAL_AFTER_S", "42")
    monkeypatch.setenv("CAPSTAN_SHAREABLE_GPU_TYPES", "T4, K80")
    s = SchedulerSettings()
    assert s.node_abnormal_after_s == 42 and s.shareable == frozenset({"T4", "K80"})
    monkeypatch.setenv("CAPSTAN_NODE_ABNORMAL_AFTER_S", "0")
    with pytest.raises(ValidationError):
        SchedulerSettings()


async def test_scheduler_restart_mid_run_keeps_assignments_and_never_double_allocates(tmp_path: Path, nats_server: Any, secrets_dir: Path) -> None:
    from capstan_core.eventstore import EventStore
    from capstan_core.natsserver import free_port
    from capstan_core.streams import event_subject

    settings = ServiceSettings(secrets_dir=secrets_dir, data_dir=tmp_path / "s", nats_url=nats_server.url, grpc_listen=f"127.0.0.1:{free_port()}")
    sched = Service(SCHEDULER, settings)
    await sched.start()
    trainer = Service(TRAINER, ServiceSettings(secrets_dir=secrets_dir, data_dir=tmp_path / "t", nats_url=nats_server.url, scheduler_addr=sched.address))
    await trainer.start()
    chs, cht = admin_channel(sched.address, "scheduler", secrets_dir), admin_channel(trainer.address, "trainer", secrets_dir)
    pool = Pool(scheduler_pb2_grpc.SchedulerStub(chs), trainer_pb2_grpc.TrainerStub(cht))
    try:
        rg, nodes = await pool.group(_policy(queue=2), [{"cpu": 4, "gpus": {"A100": 4}} for _ in range(3)])
        shapes = [0.5, 1, 2, 0.3, 4, 1, 0.5, 2, 1, 3, 0.2, 1]
        ids = [await pool.submit(rg, f"t{i}", gpu_type="A100", gpu=g) for i, g in enumerate(shapes[:6])]
        await pool.settle()
        before = {n: await pool.cards(n) for n in nodes}
        ids += [await pool.submit(rg, f"t{i}", gpu_type="A100", gpu=g) for i, g in enumerate(shapes[6:], start=6)]
        await sched.stop()  # mid-run: right after six more arrived, some perhaps being placed
        sched = Service(SCHEDULER, settings)
        await sched.start()
        await pool.settle()
        await pool.settle()
        after = {n: await pool.cards(n) for n in nodes}
        for n in nodes:  # what was placed before the restart is exactly where it was
            assert {w: c for w, c in after[n].items() if any(w in b for b in before.values())} == before[n]
        for n in nodes:  # no card holds more than a whole card
            used: dict[int, int] = {}
            for cards in after[n].values():
                for idx, tenths in cards:
                    used[idx] = used.get(idx, 0) + tenths
            assert all(v <= 10 for v in used.values()), (n, used)
        store = EventStore(sched.ctx.js)  # type: ignore[union-attr]
        for tid in ids:
            recorded, _ = await store.load(event_subject("workload", tid))
            assert [r.event.TYPE for r in recorded].count("WorkloadPlaced") <= 1
        placed = {w for n in nodes for w in after[n]}
        assert len(placed) >= 9  # 12 x (0.2..4 cards) on 12 cards: most fit
    finally:
        await chs.close()
        await cht.close()
        await trainer.stop()
        await sched.stop()
