"""The node aggregate: card sharing fixed at join (SPEC §7.3), deploy checks, periodic health records."""

from __future__ import annotations

import json

from capstan_core.contracts.scheduling import HealthCheckResult, NodeHealthChecked, NodeJoined, NodeStateChanged
from capstan_scheduler.domain.aggregates import decide_health, decide_join, fold_node
from capstan_scheduler.snapshot import build_plans

OK = HealthCheckResult(name="disk", ok=True)
BAD = HealthCheckResult(name="disk", ok=False, detail="full")


def _join(events: list, gpus: dict[str, int], shareable: frozenset[str], checks=()) -> list:  # type: ignore[no-untyped-def]
    return decide_join(fold_node(events), node_id="n", rg_id="rg", name="n", agent_kind="trainer", cpu=8, memory_gib=8,
                       gpus=gpus, now_ms=len(events), checks=checks, shareable=shareable)


def test_a_card_type_keeps_the_sharing_it_joined_with_and_new_types_take_the_current_setting() -> None:
    first = _join([], {"T4": 2}, frozenset())  # T4 not yet supported for sharing
    joined = first[0]
    assert isinstance(joined, NodeJoined) and joined.shareable == []
    log = list(first)
    assert _join(log, {"T4": 2}, frozenset({"T4"})) == []  # same capacity: nothing new, still not sharing
    grown = _join(log, {"T4": 2, "A100": 1}, frozenset({"T4", "A100"}))
    assert isinstance(grown[0], NodeJoined) and grown[0].shareable == ["A100"]
    legacy = NodeJoined(node_id="n", resource_group_id="rg", name="n", agent_kind="trainer", cpu=8, memory_gib=8,
                        gpus={"T4": 1}, at_ms=0)  # an older event, without the field
    again = _join([legacy, NodeStateChanged(node_id="n", state="Running", at_ms=0)], {"T4": 2}, frozenset({"T4"}))
    assert again[0].shareable == ["T4"]


def test_the_plan_uses_the_sharing_fixed_at_join() -> None:
    groups = [{"id": "rg", "policy": "{}"}]
    row = {"id": "n1", "resource_group_id": "rg", "cpu": 8, "memory_gib": 8, "gpus": json.dumps({"T4": 1}),
           "state": "Running", "shareable": "[]"}
    newer = {**row, "id": "n2", "shareable": json.dumps(["T4"])}
    legacy = {**row, "id": "n3", "shareable": None}
    plan = build_plans(groups, [row, newer, legacy], [], [], frozenset({"T4"}))["rg"]
    assert {n.id: n.shareable for n in plan.snapshot.nodes} == {
        "n1": frozenset(), "n2": frozenset({"T4"}), "n3": frozenset({"T4"})}


def test_deploy_checks_decide_running_or_deploy_failed() -> None:
    ok = _join([], {}, frozenset(), checks=[OK])
    assert [type(e).__name__ for e in ok] == ["NodeJoined", "NodeHealthChecked", "NodeStateChanged"]
    assert ok[-1].state == "Running"
    failed = _join([], {}, frozenset(), checks=[BAD])
    assert failed[-1].state == "DeployFailed" and failed[-1].reason == "deploy checks failed: disk: full"


def test_periodic_records_only_on_change_or_when_the_last_is_old() -> None:
    log = list(_join([], {}, frozenset(), checks=[OK]))

    def health(checks, now):  # type: ignore[no-untyped-def]
        return decide_health(fold_node(log), node_id="n", checks=checks, now_ms=now, record_every_ms=1000)

    assert health([OK], 10) == []
    assert [type(e).__name__ for e in health([OK], 2000)] == ["NodeHealthChecked"]
    went_bad = health([BAD], 20)
    assert [type(e).__name__ for e in went_bad] == ["NodeHealthChecked", "NodeStateChanged"]
    log.extend(went_bad)
    assert health([BAD], 30) == []
    other = health([HealthCheckResult(name="disk", ok=False, detail="fuller")], 40)
    assert isinstance(other[0], NodeHealthChecked) and other[1].reason == "health check failed: disk: fuller"
    back = health([OK], 50)
    assert isinstance(back[1], NodeStateChanged) and back[1].state == "Running"
