"""The trace-driven simulator (issue #3, point 10): format, converter, exact outcomes, determinism, preemption."""

from __future__ import annotations

import json

import pytest

from capstan_scheduler.sim import (
    GroupSpec,
    NodeSpec,
    Trace,
    TraceError,
    WorkloadSpec,
    dumps,
    from_cpu_csv,
    generate,
    load,
    loads,
    save,
    simulate,
)


def _policy(queue: int = 0, preempted: int = 0) -> dict[str, object]:
    return {"Version": "1.0", "ResourceRule": {"DefaultPriority": 0, "DefaultQueue": queue, "Preempted": preempted},
            "TaskRules": [{"AttrRules": [{"ValueType": "Tag", "Key": "tier", "Value": "low"}],
                           "ScheduleRule": {"Priority": 9}}]}


def _tiny(cards: int, work: list[tuple[str, float, float, float]], preempted: int = 0,
          tags: dict[str, dict[str, str]] | None = None) -> Trace:
    """One node with ``cards`` A100; work = (id, submit, gpu, run_time)."""
    tags = tags or {}
    return Trace(
        groups={"rg": GroupSpec("rg", _policy(0, preempted))},
        nodes=[NodeSpec("n-0", "rg", 64, 512, {"A100": cards})],
        workloads=[WorkloadSpec(i, "training", "rg", s, r, 1, 4, "A100", g, tags=tags.get(i, {}))
                   for i, s, g, r in work],
    )


def test_trace_round_trips(tmp_path) -> None:
    tr = generate(nodes=4, tasks=60, seed=3)
    tr.workloads.append(WorkloadSpec("explicit", "service", "rsg-sim", 5.5, 10, 2, 8, "A100", 0.3, 1, 2, {"a": "b"}))
    text = dumps(tr)
    again = loads(text)
    assert again == tr
    assert dumps(again) == text
    save(tr, tmp_path / "t.jsonl")
    assert load(tmp_path / "t.jsonl") == tr
    first = json.loads(text.splitlines()[0])
    assert first["type"] == "trace" and first["version"] == 1


@pytest.mark.parametrize("line, words", [
    ('{"type": "workload", "id": "a", "submit": 0, "run_time": 1, "gpu": 1.5, "gpu_type": "A100"}', "gpu must"),
    ('{"type": "workload", "id": "a", "submit": 0, "run_time": 1, "gpu": 1}', "gpu_type is required"),
    ('{"type": "workload", "id": "a", "run_time": 1}', "missing field 'submit'"),
    ('{"type": "resource_group", "id": "g", "policy": {"ResourceRule": {"DefaultQueue": 5}}}',
     "ResourceRule.DefaultQueue must be 0, 1 or 2"),
    ('{"type": "nope"}', "type must be"),
])
def test_trace_errors_name_the_line_and_field(line: str, words: str) -> None:
    with pytest.raises(TraceError, match=words) as e:
        loads('{"type": "trace", "version": 1}\n' + line)
    assert "<trace>:2" in str(e.value)


def test_cpu_csv_converter() -> None:
    csv_text = "submit_time,duration,cpus,memory,extra\n100,50,2,4,x\n40,10,1,0.5,y\n70,-1,1,1,z\n80,5,999,1,w\n"
    tr = from_cpu_csv(csv_text, nodes=3, node_cpu=16, node_memory_gib=64, memory_unit_gib=2)
    assert len(tr.nodes) == 3 and all(n.cards == {} and n.cpu == 16 for n in tr.nodes)
    assert [(w.submit, w.run_time, w.cpu, w.memory_gib, w.gpu) for w in tr.workloads] == [
        (0.0, 10.0, 1.0, 1.0, 0.0), (60.0, 50.0, 2.0, 8.0, 0.0)]
    assert tr.meta["dropped_rows"] == 2
    assert loads(dumps(tr)) == tr
    r = simulate(tr)
    assert r.finished == 2 and r.gpu_utilisation == 0 and 0 < r.cpu_utilisation <= 1


TINY = [("w1", 0, 2, 100), ("w2", 10, 4, 50), ("w3", 20, 1, 30)]


def test_exact_start_times_strict_fifo_vs_backfill() -> None:
    tr = _tiny(4, TINY)
    fifo = simulate(tr, mode=0, keep_starts=True)
    back = simulate(tr, mode=2, keep_starts=True)
    assert fifo.starts == {"w1": [0], "w2": [100], "w3": [150]}
    assert back.starts == {"w1": [0], "w2": [100], "w3": [20]}
    assert fifo.makespan_s == 180 and back.makespan_s == 150
    # busy card-seconds: 2*100 + 4*50 + 1*30 = 430 on 4 cards
    assert fifo.gpu_utilisation == pytest.approx(430 / (4 * 180))
    assert back.gpu_utilisation == pytest.approx(430 / (4 * 150))
    assert fifo.wait_by_priority[0].count == 3
    assert fifo.wait_by_priority[0].mean_s == pytest.approx((0 + 90 + 130) / 3)
    assert back.wait_by_priority[0].p95_s == 90


def test_preempted_task_keeps_submit_order_and_finishes() -> None:
    low = {"tier": "low"}
    tr = _tiny(2, [("low", 0, 2, 100), ("mid", 5, 2, 10), ("high", 10, 2, 20)], preempted=1,
               tags={"low": low, "mid": low})
    r = simulate(tr, mode=2, keep_starts=True)
    assert r.preemptions == 1
    # high evicts low at 10 and runs to 30; low (submitted before mid) goes first again, with 90 s left
    assert r.starts == {"low": [0, 30], "high": [10], "mid": [120]}
    assert r.finish_order == ["high", "low", "mid"]
    assert r.unfinished == 0 and r.makespan_s == 130
    with_grace = simulate(tr, mode=2, keep_starts=True, grace_s=5)
    # the victim keeps working through its grace period: 15 s done, 85 s left from 35
    assert with_grace.starts == {"low": [0, 35], "high": [15], "mid": [120]}
    off = simulate(tr, mode=2, preemption=False, keep_starts=True)
    assert off.preemptions == 0 and off.starts["high"] == [100]


def test_deterministic_and_utilisation_bounded() -> None:
    tr = generate(nodes=6, tasks=250, seed=7, load=1.3)
    for mode in (0, 1, 2):
        a, b = simulate(tr, mode=mode), simulate(loads(dumps(tr)), mode=mode)
        assert a.metrics() == b.metrics()
        assert a.finished == 250
        assert 0 < a.gpu_utilisation <= 1 + 1e-9 and 0 < a.gpu_utilisation_arrivals <= 1 + 1e-9
        assert 0 <= a.fragmentation <= 1
        batched = simulate(tr, mode=mode, cycle_interval_s=60)
        assert batched.finished == 250 and batched.gpu_utilisation <= 1 + 1e-9


def test_what_if_policy_changes_the_outcome() -> None:
    tr = _tiny(4, TINY)
    recorded = simulate(tr, keep_starts=True)
    what_if = simulate(tr.with_policy(_policy(queue=2)), keep_starts=True)
    assert recorded.starts["w3"] == [150] and what_if.starts["w3"] == [20]
