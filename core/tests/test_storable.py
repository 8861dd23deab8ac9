"""Nothing unstorable can become an event, a page offset or a subject; node limits are defined once."""

from __future__ import annotations

import base64
import math
from typing import Any

import pytest

from capstan_core.contracts.capacity import (
    MAX_NODE_CARD_TYPES,
    MAX_NODE_CARDS,
    MAX_NODE_CPU,
    MAX_NODE_MEMORY_GIB,
    check_node_capacity,
    check_request,
)
from capstan_core.contracts.common import ResourceSpec
from capstan_core.contracts.scheduling import NodeJoined, WorkloadPlaced
from capstan_core.contracts.training import TrainingTaskSubmitted
from capstan_core.errors import InvalidArgument
from capstan_core.events import decode, encode
from capstan_core.numbers import INT64_MAX, INT64_MIN, MAX_DEPTH, unstorable
from capstan_core.paging import page_bounds
from capstan_core.streams import event_subject

INF, NAN = math.inf, math.nan


def submitted(**over: Any) -> TrainingTaskSubmitted:
    fields: dict[str, Any] = dict(
        task_id="train-1", name="t", resource_group_id="rsg-1", command="true", hyperparameters={},
        resources=ResourceSpec(), instance_count=1, tags={}, creator="admin", stop_grace_seconds=30, at_ms=1,
    )
    fields.update(over)
    return TrainingTaskSubmitted(**fields)


@pytest.mark.parametrize(
    ("over", "field", "reason"),
    [
        ({"resources": ResourceSpec(cpu=INF)}, "resources.cpu", "finite"),
        ({"resources": ResourceSpec(memory_gib=-INF)}, "resources.memory_gib", "finite"),
        ({"resources": ResourceSpec(gpu=NAN, gpu_type="A100")}, "resources.gpu", "finite"),
        ({"resources": ResourceSpec(cpu=float("1e400"))}, "resources.cpu", "finite"),
        ({"hyperparameters": {"lr": [0.1, {"x": NAN}]}}, "hyperparameters.lr[1].x", "finite"),
        ({"hyperparameters": {"big": 10**30}}, "hyperparameters.big", "64 bits"),
        ({"at_ms": 2**63}, "at_ms", "64 bits"),
        ({"tags": {"k": "a\x00b"}}, "tags.k", "NUL"),
        ({"command": "echo \ud800"}, "command", "lone surrogate"),
    ],
)
def test_an_event_refuses_what_no_store_can_hold(over: dict[str, Any], field: str, reason: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        submitted(**over)
    assert e.value.field == field
    assert e.value.message.startswith(f"{field}: ") and reason in e.value.message


def test_every_event_kind_is_checked_nested_models_included() -> None:
    with pytest.raises(InvalidArgument, match=r"^cpu: must be a finite number"):
        NodeJoined(node_id="n", resource_group_id="r", name="n", agent_kind="trainer", cpu=NAN, memory_gib=1,
                   gpus={}, at_ms=1)
    with pytest.raises(InvalidArgument, match=r"^gpus.A100: integers must fit in 64 bits"):
        NodeJoined(node_id="n", resource_group_id="r", name="n", agent_kind="trainer", cpu=1, memory_gib=1,
                   gpus={"A100": 2**64}, at_ms=1)
    with pytest.raises(InvalidArgument, match=r"^resources.memory_gib: must be a finite number"):
        WorkloadPlaced(workload_id="w", kind="training", resources=ResourceSpec(memory_gib=INF), placements=[], at_ms=1)


def test_storable_events_round_trip_and_stored_ones_are_not_checked_again() -> None:
    ok = submitted(hyperparameters={"lr": 1e-3, "n": INT64_MAX, "m": INT64_MIN, "name": "名前"})
    assert decode(encode(ok)) == ok
    # An event appended before these checks existed still loads (the log is history, not input).
    raw = encode(submitted())
    raw["data"]["hyperparameters"] = {"big": 10**30}
    assert decode(raw).hyperparameters == {"big": 10**30}  # type: ignore[attr-defined]


def test_unstorable_walks_without_recursion_and_bounds_depth() -> None:
    deep: Any = 1
    for _ in range(MAX_DEPTH + 5):
        deep = [deep]
    found = unstorable({"h": deep}, "body")
    assert found is not None and found[1] == f"nested deeper than {MAX_DEPTH} levels"
    fine: Any = 1
    for _ in range(MAX_DEPTH - 2):
        fine = {"k": fine}
    assert unstorable({"h": fine}, "body") is None
    assert unstorable({"a\x00": 1}, "body") == ("body", "text must not contain the NUL character (\\u0000)")


@pytest.mark.parametrize("offset", [10**30, INT64_MAX + 1, -1])
def test_a_forged_page_token_beyond_64_bits_is_refused(offset: int) -> None:
    token = base64.urlsafe_b64encode(str(offset).encode()).decode()
    with pytest.raises(InvalidArgument, match="page_token is not one this service issued"):
        page_bounds(50, token)
    assert page_bounds(50, base64.urlsafe_b64encode(str(INT64_MAX).encode()).decode()) == (50, INT64_MAX)


@pytest.mark.parametrize("bad", ["", ">", "*", "a.*", "a b", "a..b", ".a", "a\x00", "tab\there"])
def test_an_id_that_is_no_literal_subject_is_refused(bad: str) -> None:
    with pytest.raises(InvalidArgument, match="is not a valid id"):
        event_subject("train", bad)
    assert event_subject("workload", "svc-1.r0") == "capstan.evt.workload.svc-1.r0"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((INF, 1, "", 0), "resources.cpu must be a finite number"),
        ((1, NAN, "", 0), "resources.memory_gib must be a finite number"),
        ((1e308, 1, "", 0), f"resources.cpu must be at most {MAX_NODE_CPU} cores"),
        ((1, 1e308, "", 0), f"resources.memory_gib must be at most {MAX_NODE_MEMORY_GIB} GiB"),
        ((1, 1, "A100", 9007199254740994), f"resources.gpu must be at most {MAX_NODE_CARDS} cards"),
        ((1, 1, "", 1), "resources.gpu_type is required when resources.gpu > 0"),
        ((1, 1, "A100", 0), "resources.gpu_type 'A100' is set but resources.gpu is 0"),
        ((1, 1, "A\n100", 1), "resources.gpu_type must be 1..64 printable characters"),
    ],
)
def test_a_request_larger_than_any_node_or_malformed_is_refused(args: tuple[Any, ...], message: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        check_request(*args)
    assert e.value.message.startswith(message)


def test_the_largest_node_and_the_largest_request_are_the_same_limits() -> None:
    check_node_capacity(MAX_NODE_CPU, MAX_NODE_MEMORY_GIB, {"A100": MAX_NODE_CARDS})
    check_request(MAX_NODE_CPU, MAX_NODE_MEMORY_GIB, "A100", MAX_NODE_CARDS)
    for cpu, mem, gpus, message in [
        (1e308, 1, {}, f"cpu must be at most {MAX_NODE_CPU} cores"),
        (INF, 1, {}, "cpu must be a finite number"),
        (1, 1e308, {}, f"memory_gib must be at most {MAX_NODE_MEMORY_GIB} GiB"),
        (1, 1, {"A100": MAX_NODE_CARDS + 1}, f"gpus['A100'] must be 0..{MAX_NODE_CARDS} cards"),
        (1, 1, {f"T{i}": 1 for i in range(MAX_NODE_CARD_TYPES + 1)}, "a node may declare at most"),
        (0, 1, {}, "a node must offer cpu > 0"),
    ]:
        with pytest.raises(InvalidArgument) as e:
            check_node_capacity(cpu, mem, gpus)
        assert e.value.message.startswith(message), e.value.message
