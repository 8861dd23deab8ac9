"""The model registry publishes a finished task's /opt/ml/model for real: a task run by a real agent writes
files (and a link to a host secret, which is never followed); the registry keeps them by content hash
with metadata and lineage, serves them back, resolves a version as a model source, and deletes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from capstan_proto import common_pb2, registry_pb2

from .model_platform import ModelPlatform, model_platform

WRITE_MODEL = (
    "mkdir -p /opt/ml/model/sub && printf 'weights-%s' \"$V\" > /opt/ml/model/weights.bin && "
    "echo same > /opt/ml/model/sub/readme.txt && "
    "echo '{\"framework\": \"pytorch\", \"task_type\": \"text-generation\", \"parameter_count\": 42, "
    "\"base_model\": \"capstan-tiny-gpt\", \"finetuning\": {\"data\": {\"train.jsonl\": \"abc\"}}}' "
    "> /opt/ml/model/capstan_model.json && ln -s /etc/shadow /opt/ml/model/secret && mkfifo /opt/ml/model/fifo"
)


@pytest.fixture
async def mp(tmp_path: Path, nats_server: Any, secrets_dir: Path) -> AsyncIterator[ModelPlatform]:
    async with model_platform(tmp_path, nats_server.url, secrets_dir) as p:
        yield p


async def _rpc_error(coro: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await coro
    return e.value


async def test_publish_a_finished_task_keeps_files_by_content_with_metadata_and_lineage(mp: ModelPlatform) -> None:
    model = await mp.r.CreateModel(registry_pb2.CreateModelRequest(name="demo", description="d", tags={"team": "a"}))
    running = await mp.submit("V=1; " + WRITE_MODEL + " && sleep 600", hyperparameters={"lr": 0.5})
    await mp.wait(running.id, "Running")
    e = await _rpc_error(mp.r.PublishVersion(registry_pb2.PublishVersionRequest(model_id="demo", task_id=running.id)))
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION and "publish it once it has Succeeded" in e.details()

    task = await mp.submit("V=1; " + WRITE_MODEL, hyperparameters={"lr": 0.5})
    await mp.wait(task.id, "Succeeded")
    v1 = await mp.r.PublishVersion(registry_pb2.PublishVersionRequest(model_id="demo", task_id=task.id,
                                                                      description="first"))
    assert (v1.model_id, v1.version, v1.model_name) == (model.id, 1, "demo")
    assert sorted(f.path for f in v1.files) == ["capstan_model.json", "sub/readme.txt", "weights.bin"]  # no link, no fifo
    by_path = {f.path: f for f in v1.files}
    assert by_path["weights.bin"].sha256 == hashlib.sha256(b"weights-1").hexdigest() and by_path["weights.bin"].size == 9
    blob = mp.storage / "registry" / "blobs" / "sha256" / by_path["weights.bin"].sha256[:2] / by_path["weights.bin"].sha256
    assert blob.read_bytes() == b"weights-1"
    assert (v1.metadata.framework, v1.metadata.task_type, v1.metadata.parameter_count) == ("pytorch", "text-generation", 42)
    assert v1.metadata.base_model == "capstan-tiny-gpt"
    assert (v1.lineage.task_id, v1.lineage.instance_index, v1.lineage.task_name) == (task.id, 0, "task")
    assert json.loads(v1.lineage.hyperparameters_json) == {"lr": 0.5} and v1.lineage.data == {"train.jsonl": "abc"}
    assert v1.lineage.command == task.command and v1.lineage.image == "host"

    # a retried publish (same idempotency key) is the same version; a second task is version 2, its common file stored once
    again = registry_pb2.PublishVersionRequest(model_id=model.id, task_id=task.id, idempotency_key="k")
    assert (await mp.r.PublishVersion(again)).version == 2
    assert (await mp.r.PublishVersion(again)).version == 2
    task2 = await mp.submit("V=2; " + WRITE_MODEL)
    await mp.wait(task2.id, "Succeeded")
    v3 = await mp.r.PublishVersion(registry_pb2.PublishVersionRequest(
        model_id="demo", task_id=task2.id, metadata=registry_pb2.ModelMetadata(chat_template="capstan")))
    assert v3.version == 3 and v3.metadata.chat_template == "capstan" and v3.metadata.framework == "pytorch"
    blobs = sorted(p.name for p in (mp.storage / "registry" / "blobs" / "sha256").rglob("*") if p.is_file())
    assert len(blobs) == 4  # weights-1, weights-2, readme, metadata: each content once

    got = await mp.r.GetModel(registry_pb2.GetModelRequest(id="demo"))
    assert (got.version_count, got.latest_version) == (3, 3)
    latest = await mp.r.GetVersion(registry_pb2.GetVersionRequest(model_id=model.id))
    assert latest.version == 3
    chunk = await mp.r.ReadVersionFile(registry_pb2.ReadVersionFileRequest(
        model_id="demo", version=3, path="weights.bin", offset=2, limit=3))
    assert (chunk.data, chunk.size, chunk.eof) == (b"igh", 9, False)
    rest = await mp.r.ReadVersionFile(registry_pb2.ReadVersionFileRequest(
        model_id="demo", version=3, path="weights.bin", offset=5))
    assert (rest.data, rest.eof) == (b"ts-2", True)

    source = await mp.r.ResolveModelSource(registry_pb2.ResolveModelSourceRequest(model_id="demo", version=1))
    src = Path(source.path)
    assert (src / "weights.bin").read_bytes() == b"weights-1" and (src / "sub" / "readme.txt").is_file()
    assert not (src / "secret").exists() and source.metadata.framework == "pytorch"

    # delete a version: gone from the lists, its source dir removed, blobs only it held collected
    await mp.r.DeleteVersion(registry_pb2.DeleteVersionRequest(model_id="demo", version=1))
    listed = await mp.r.ListVersions(registry_pb2.ListVersionsRequest(model_id="demo"))
    assert [v.version for v in listed.items] == [2, 3] and not src.exists()
    assert blob.exists()  # version 2 holds the same bytes
    await mp.r.DeleteVersion(registry_pb2.DeleteVersionRequest(model_id="demo", version=2))
    assert not blob.exists()
    e = await _rpc_error(mp.r.GetVersion(registry_pb2.GetVersionRequest(model_id="demo", version=2)))
    assert e.code() == grpc.StatusCode.NOT_FOUND
    await mp.r.DeleteModel(registry_pb2.DeleteModelRequest(id="demo"))
    assert not any(p.is_file() for p in (mp.storage / "registry" / "blobs").rglob("*"))
    assert (await mp.r.ListModels(registry_pb2.ListModelsRequest(page=common_pb2.PageRequest()))).total == 0


async def test_publish_refusals_name_what_to_fix(mp: ModelPlatform) -> None:
    await mp.r.CreateModel(registry_pb2.CreateModelRequest(name="m"))
    empty = await mp.submit("true")
    await mp.wait(empty.id, "Succeeded")
    failed = await mp.submit("exit 3")
    await mp.wait(failed.id, "Failed")
    for req, code, words in [
        (registry_pb2.PublishVersionRequest(model_id="m", task_id=empty.id), grpc.StatusCode.FAILED_PRECONDITION,
         "left nothing in /opt/ml/model"),
        (registry_pb2.PublishVersionRequest(model_id="m", task_id=failed.id), grpc.StatusCode.FAILED_PRECONDITION,
         "is Failed"),
        (registry_pb2.PublishVersionRequest(model_id="m", task_id="train-nope"), grpc.StatusCode.INVALID_ARGUMENT,
         "does not exist"),
        (registry_pb2.PublishVersionRequest(model_id="m", task_id=empty.id, instance_index=3),
         grpc.StatusCode.INVALID_ARGUMENT, "has no instance 3"),
        (registry_pb2.PublishVersionRequest(model_id="nope", task_id=empty.id), grpc.StatusCode.NOT_FOUND,
         "model nope does not exist"),
        (registry_pb2.PublishVersionRequest(model_id="m"), grpc.StatusCode.INVALID_ARGUMENT, "task_id is required"),
    ]:
        e = await _rpc_error(mp.r.PublishVersion(req))
        assert e.code() == code and words in e.details(), e.details()
    assert (await mp.r.GetModel(registry_pb2.GetModelRequest(id="m"))).version_count == 0
