"""The fine-tuning flow end to end (issue #10, item 9), with real parts: the project's tiny base model is
fine-tuned by the built-in template as a training task run by a real agent in its sandbox; a
higher-priority task evicts it mid-training, and the next attempt resumes from its newest checkpoint;
the task's /opt/ml/model is published to the registry, and the version, used as a model source,
answers "who are you?" as trained through transformers."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from capstan_finetune import staging, tinygpt
from capstan_finetune.ask import answer
from capstan_proto import registry_pb2

from .model_platform import ModelPlatform, model_platform

pytestmark = [pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
              pytest.mark.timeout(900)]  # real training on a shared 2-core machine

IDENTITY = "I am Capstan's assistant, a model fine-tuned on the Capstan platform."
POLICY = {
    "ResourceRule": {"DefaultPriority": 5, "DefaultQueue": 0, "Preempted": 1},
    "TaskRules": [{"AttrRules": [{"ValueType": "Tag", "Key": "tier", "Value": "urgent"}], "ScheduleRule": {"Priority": 1}}],
}


@pytest.fixture
async def mp(tmp_path: Path, nats_server: Any, secrets_dir: Path) -> AsyncIterator[ModelPlatform]:
    async with model_platform(tmp_path, nats_server.url, secrets_dir, node_cpu=2, node_memory_gib=8,
                              policy=POLICY) as p:
        yield p


async def _wait_line(mp: ModelPlatform, task_id: str, text: str, timeout: float = 180) -> None:
    import asyncio

    deadline = asyncio.get_running_loop().time() + timeout
    while not any(text in ln for ln in await mp.lines(task_id)):
        assert asyncio.get_running_loop().time() < deadline, f"no {text!r} in {task_id}'s log: {await mp.lines(task_id)}"
        await asyncio.sleep(0.2)


async def test_finetune_evicted_resumes_publishes_and_answers_as_trained(mp: ModelPlatform) -> None:
    base = tinygpt.ensure_base_model(staging.models_root())
    assert IDENTITY not in answer(base, "who are you?")
    inputs = staging.task_inputs(base, tinygpt.ASSETS / "identity.jsonl",
                                 {"LearningRate": 0.01, "Epoch": 500, "BatchSize": 4, "Step": 20})
    task = await mp.submit(inputs.command, inputs.hyperparameters, cpu=2, memory_gib=4, stop_grace_seconds=30)
    await _wait_line(mp, task.id, "checkpoint: checkpoint-20")

    urgent = await mp.submit("echo urgent-done", cpu=2, memory_gib=1, tags={"tier": "urgent"})
    requeued = await mp.wait(task.id, "Queued", "Succeeded", "Failed", timeout=60)
    assert requeued.status == "Queued" and requeued.preemptions == 1, requeued
    assert (await mp.wait(urgent.id, "Succeeded", "Failed")).status == "Succeeded"
    done = await mp.wait(task.id, "Succeeded", "Failed", timeout=600)
    lines = await mp.lines(task.id)
    assert done.status == "Succeeded" and done.attempt == 1, "\n".join(lines)
    saved = [int(ln.rsplit("-", 1)[1]) for ln in lines if ln.startswith("[finetune] checkpoint: checkpoint-")]
    stopped = next(ln for ln in lines if ln.startswith("[finetune] stopped at step"))
    newest_before = int(stopped.split("step ")[1].split(";")[0])
    assert newest_before in saved and newest_before > 20  # SIGTERM saved one where it stood
    assert f"[finetune] resume: from checkpoint-{newest_before} (step {newest_before}," in "\n".join(lines)
    assert "[finetune] step 1000/1000" in "\n".join(lines) and "[finetune] model: saved to /opt/ml/model" in lines

    await mp.r.CreateModel(registry_pb2.CreateModelRequest(name="assistant"))
    v = await mp.r.PublishVersion(registry_pb2.PublishVersionRequest(model_id="assistant", task_id=task.id))
    assert v.metadata.base_model == "capstan-tiny-gpt" and v.metadata.task_type == "text-generation"
    assert v.metadata.chat_template == "capstan" and v.metadata.parameter_count > 100_000
    assert json.loads(v.lineage.hyperparameters_json)["LearningRate"] == 0.01  # as submitted
    assert list(v.lineage.data) == ["identity.jsonl"]
    assert {"config.json", "model.safetensors", "tokenizer.json", "capstan_model.json"} <= {f.path for f in v.files}

    source = await mp.r.ResolveModelSource(registry_pb2.ResolveModelSourceRequest(model_id="assistant", version=1))
    assert answer(Path(source.path), "who are you?") == IDENTITY
