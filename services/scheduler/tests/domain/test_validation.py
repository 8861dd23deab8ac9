"""The scheduler's domain refuses a node larger than the shared limits and a second group of one name."""

from __future__ import annotations

import math
from typing import Any

import pytest

from capstan_core.contracts.capacity import MAX_NODE_CARDS, MAX_NODE_CPU, MAX_NODE_MEMORY_GIB
from capstan_core.contracts.scheduling import NodeJoined, ResourceGroupCreated, ResourceGroupUpdated
from capstan_core.errors import AlreadyExists, InvalidArgument
from capstan_scheduler.domain.aggregates import decide_create_rg, decide_join, decide_update_rg, fold_node, fold_rg


def _join(cpu: float = 8, memory_gib: float = 8, gpus: dict[str, int] | None = None) -> list[Any]:
    return decide_join(fold_node([]), node_id="n", rg_id="rg", name="n", agent_kind="trainer", cpu=cpu,
                       memory_gib=memory_gib, gpus=gpus or {}, now_ms=1)


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        ({"cpu": 1e308}, f"cpu must be at most {MAX_NODE_CPU} cores"),
        ({"cpu": math.inf}, "cpu must be a finite number"),
        ({"cpu": math.nan}, "cpu must be a finite number"),
        ({"memory_gib": 1e308}, f"memory_gib must be at most {MAX_NODE_MEMORY_GIB} GiB"),
        ({"gpus": {"A100": MAX_NODE_CARDS + 1}}, f"gpus['A100'] must be 0..{MAX_NODE_CARDS} cards"),
        ({"gpus": {"A100": -1}}, f"gpus['A100'] must be 0..{MAX_NODE_CARDS} cards"),
        ({"gpus": {"": 1}}, "gpus must be 1..64 printable characters"),
    ],
)
def test_a_node_declaring_more_than_any_node_may_is_refused(declared: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        _join(**declared)
    assert e.value.message.startswith(message)


def test_the_largest_node_joins() -> None:
    joined = _join(MAX_NODE_CPU, MAX_NODE_MEMORY_GIB, {"A100": MAX_NODE_CARDS})[0]
    assert isinstance(joined, NodeJoined) and joined.gpus == {"A100": MAX_NODE_CARDS}


def _create(name: str, taken_by: str | None) -> list[Any]:
    return decide_create_rg(fold_rg([]), rg_id="rsg-2", name=name, description="", tags={}, policy=None,
                            creator="admin", now_ms=1, name_taken_by=taken_by)


def test_a_second_group_of_one_name_is_refused_naming_the_first() -> None:
    with pytest.raises(AlreadyExists) as e:
        _create("pool", "rsg-1")
    assert e.value.message == "a resource group named 'pool' already exists (rsg-1); choose another name"
    assert isinstance(_create("pool", None)[0], ResourceGroupCreated)


def test_a_rename_onto_another_groups_name_is_refused_and_other_edits_are_not() -> None:
    rg = fold_rg(_create("mine", None))
    with pytest.raises(AlreadyExists, match="a resource group named 'pool' already exists \\(rsg-1\\)"):
        decide_update_rg(rg, rg_id="rsg-2", name="pool", description=None, tags=None, policy=None, now_ms=2,
                         name_taken_by="rsg-1")
    # Not a rename (the name stays): a group that shares its name from before this rule can still be edited.
    (edited,) = decide_update_rg(rg, rg_id="rsg-2", name="mine", description="d", tags=None, policy=None, now_ms=2,
                                 name_taken_by="rsg-1")
    assert isinstance(edited, ResourceGroupUpdated) and edited.description == "d"
