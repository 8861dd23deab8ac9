"""Conversions between the API schemas and the protobuf contracts (no services needed)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from capstan_core.errors import InvalidArgument
from capstan_gateway.schemas import LogPage, ResourceGroup, TrainingTask
from capstan_gateway.schemas.common import from_ms, parse_time
from capstan_proto import common_pb2, scheduler_pb2, trainer_pb2


def test_times() -> None:
    assert from_ms(0) is None
    assert from_ms(1714564800123) == datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)
    assert parse_time("1714564800123", "q") == 1714564800123
    assert parse_time("2024-05-01T12:00:00Z", "q") == 1714564800000
    assert parse_time("2024-05-01T14:00:00+02:00", "q") == 1714564800000
    assert parse_time("2024-05-01T12:00:00", "q") == 1714564800000  # naive means UTC
    with pytest.raises(InvalidArgument, match="query.start: expected an ISO-8601 time"):
        parse_time("last tuesday", "query.start")


def test_resource_group_policy_json() -> None:
    rg = scheduler_pb2.ResourceGroup(id="rsg-1", name="a", policy_json="", created_at_ms=1)
    assert ResourceGroup.from_proto(rg).policy == {}
    rg.policy_json = '{"Version": "1.0"}'
    assert ResourceGroup.from_proto(rg).policy == {"Version": "1.0"}
    assert ResourceGroup.from_proto(rg).model_dump(mode="json")["created_at"] == "1970-01-01T00:00:00.001000Z"


@pytest.mark.parametrize(
    ("status", "code", "has", "expected"),
    [
        ("Running", 0, False, None),
        ("Succeeded", 0, True, 0),
        ("Failed", 3, True, 3),
        ("Failed", 0, False, None),  # e.g. not scheduled: it never ran
        ("Stopped", 0, True, 0),  # exited 0 on SIGTERM
        ("Stopped", 0, False, None),  # stopped while queued
    ],
)
def test_task_exit_code_only_when_known(status: str, code: int, has: bool, expected: int | None) -> None:
    t = trainer_pb2.TrainingTask(id="train-1", status=status, exit_code=code, has_exit_code=has, created_at_ms=1)
    assert TrainingTask.from_proto(t).exit_code == expected


def test_task_instances_and_optional_times() -> None:
    t = trainer_pb2.TrainingTask(
        id="train-1",
        status="Running",
        hyperparameters_json='{"lr": 0.1}',
        resources=common_pb2.Resources(cpu=1, memory_gib=2),
        created_at_ms=1000,
        started_at_ms=2000,
        instances=[
            trainer_pb2.TrainingInstance(index=0, node_id="node-1", status="Running"),
            trainer_pb2.TrainingInstance(index=1, status="Exited", exit_code=0, has_exit_code=True),
        ],
    )
    task = TrainingTask.from_proto(t)
    assert task.hyperparameters == {"lr": 0.1}
    assert task.started_at == datetime.fromtimestamp(2, UTC) and task.ended_at is None
    assert [(i.node_id, i.exit_code) for i in task.instances] == [("node-1", None), (None, 0)]


def test_log_page() -> None:
    resp = trainer_pb2.GetLogsResponse(
        lines=[trainer_pb2.LogLine(ts_ms=1000, instance_index=1, stream="stderr", line="oops", seq=7)], last_seq=7
    )
    assert LogPage.from_proto(resp).model_dump(mode="json") == {
        "lines": [{"time": "1970-01-01T00:00:01Z", "instance": 1, "stream": "stderr", "line": "oops", "seq": 7}],
        "last_seq": 7,
    }
