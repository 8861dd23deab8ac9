"""The trainer's gRPC edge: bad input is refused before anything is appended; a down scheduler is named."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from nats.aio.client import Client

from capstan_core.contracts.capacity import MAX_NODE_CARDS, MAX_NODE_CPU, MAX_NODE_MEMORY_GIB
from capstan_core.grpcutil import ANSWERED_BY
from capstan_core.natsserver import free_port
from capstan_core.numbers import MAX_TIME_MS
from capstan_core.service import Service
from capstan_core.settings import ServiceSettings
from capstan_core.streams import EVENTS_STREAM
from capstan_core.testing import admin_channel
from capstan_proto import common_pb2, trainer_pb2, trainer_pb2_grpc
from capstan_trainer.service import DEFINITION as TRAINER


@pytest.fixture
def last_seq(nc: Client) -> Callable[[], Awaitable[int]]:
    """The event stream's last sequence: a refused command must leave it where it was."""

    async def seq() -> int:
        return int((await nc.jetstream().stream_info(EVENTS_STREAM)).state.last_seq)

    return seq


async def refused(call: Awaitable[Any], code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call
    assert e.value.code() == code, e.value.details()
    assert (ANSWERED_BY, "trainer") in tuple(e.value.trailing_metadata() or ())
    return e.value.details() or ""


def submit(rg: str, resources: common_pb2.Resources | None = None, **over: Any) -> trainer_pb2.CreateTrainingTaskRequest:
    return trainer_pb2.CreateTrainingTaskRequest(
        name="t", resource_group_id=rg, command="true",
        resources=resources or common_pb2.Resources(cpu=1, memory_gib=1), **over,
    )


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        (common_pb2.Resources(cpu=float("inf"), memory_gib=1), "resources.cpu must be a finite number"),
        (common_pb2.Resources(cpu=float("1e400"), memory_gib=1), "resources.cpu must be a finite number"),
        (common_pb2.Resources(cpu=float("nan"), memory_gib=1), "resources.cpu must be a finite number"),
        (common_pb2.Resources(cpu=1, memory_gib=float("-inf")), "resources.memory_gib must be a finite number"),
        (common_pb2.Resources(cpu=1e308, memory_gib=1), f"resources.cpu must be at most {MAX_NODE_CPU} cores"),
        (common_pb2.Resources(cpu=1, memory_gib=1e308), f"resources.memory_gib must be at most {MAX_NODE_MEMORY_GIB} GiB"),
        (common_pb2.Resources(cpu=1, memory_gib=1, gpu_type="A100", gpu=9007199254740994),
         f"resources.gpu must be at most {MAX_NODE_CARDS} cards"),
        (common_pb2.Resources(cpu=1, memory_gib=1, gpu_type="A100"), "resources.gpu_type 'A100' is set but resources.gpu is 0"),
        (common_pb2.Resources(cpu=1, memory_gib=1, gpu=1), "resources.gpu_type is required when resources.gpu > 0"),
    ],
)
async def test_a_submit_no_node_could_run_is_refused(
    platform: Any, last_seq: Callable[[], Awaitable[int]], resources: common_pb2.Resources, message: str
) -> None:
    rg = await platform.group("pool")
    before = await last_seq()
    assert (await refused(platform.t.CreateTrainingTask(submit(rg, resources)))).startswith(message)
    assert await last_seq() == before


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"lr": NaN}', "hyperparameters.lr: must be a finite number"),
        ('{"lr": Infinity}', "hyperparameters.lr: must be a finite number"),
        ('{"lr": 1e400}', "hyperparameters.lr: must be a finite number"),
        ('{"steps": 99999999999999999999999}', "hyperparameters.steps: integers must fit in 64 bits"),
        ('{"note": "a\\u0000b"}', "hyperparameters.note: text must not contain the NUL character"),
    ],
)
async def test_hyperparameters_no_store_can_hold_are_refused(
    platform: Any, last_seq: Callable[[], Awaitable[int]], text: str, message: str
) -> None:
    rg = await platform.group("pool")
    before = await last_seq()
    assert (await refused(platform.t.CreateTrainingTask(submit(rg, hyperparameters_json=text)))).startswith(message)
    assert await last_seq() == before


async def test_log_queries_beyond_what_the_store_holds_are_refused(platform: Any) -> None:
    rg = await platform.group("pool")
    task = await platform.t.CreateTrainingTask(submit(rg))
    for req, message in [
        (trainer_pb2.GetLogsRequest(task_id=task.id, after_seq=2**64 - 1), "after_seq must be 0..9223372036854775807"),
        (trainer_pb2.GetLogsRequest(task_id=task.id, start_ms=-1), "start must be epoch milliseconds from 0"),
        (trainer_pb2.GetLogsRequest(task_id=task.id, end_ms=MAX_TIME_MS + 1), "end must be epoch milliseconds from 0"),
    ]:
        assert (await refused(platform.t.GetLogs(req))).startswith(message)
    ok = await platform.t.GetLogs(trainer_pb2.GetLogsRequest(task_id=task.id, after_seq=2**63 - 1, end_ms=MAX_TIME_MS))
    assert list(ok.lines) == []


async def test_a_forged_page_token_and_a_wildcard_id_are_refused(
    platform: Any, last_seq: Callable[[], Awaitable[int]]
) -> None:
    page = common_pb2.PageRequest(page_token=base64.urlsafe_b64encode(str(10**30).encode()).decode())
    message = await refused(platform.t.ListTrainingTasks(trainer_pb2.ListTrainingTasksRequest(page=page)))
    assert message == "page_token is not one this service issued"
    before = await last_seq()
    for bad in (">", "train-*"):
        assert await refused(platform.t.StopTrainingTask(trainer_pb2.StopTrainingTaskRequest(id=bad))) == (
            f"{bad!r} is not a valid id"
        )
    assert await last_seq() == before


async def test_with_the_scheduler_down_a_submit_names_the_scheduler(
    tmp_path: Path, nats_server: Any, secrets_dir: Path, last_seq: Callable[[], Awaitable[int]]
) -> None:
    trainer = Service(TRAINER, ServiceSettings(secrets_dir=secrets_dir, data_dir=tmp_path / "t", nats_url=nats_server.url,
                                               scheduler_addr=f"127.0.0.1:{free_port()}"))
    await trainer.start()
    try:
        before = await last_seq()
        async with admin_channel(trainer.address, "trainer", secrets_dir) as ch:
            call = trainer_pb2_grpc.TrainerStub(ch).CreateTrainingTask(submit("rsg-12345678"))
            message = await refused(call, grpc.StatusCode.UNAVAILABLE)
        assert message == "the scheduler service is not reachable; retry shortly"
        assert await last_seq() == before
    finally:
        await trainer.stop()
