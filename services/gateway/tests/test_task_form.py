"""The task form and operations through REST, against the real trainer and scheduler: every new field,
the price, queue info, tags, copy, delete, start again, and outputs listed and downloaded."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest

TASKS = "/api/v1/training-tasks"


async def _until(api: httpx.AsyncClient, task_id: str, status: str) -> dict[str, Any]:
    for _ in range(200):
        task: dict[str, Any] = (await api.get(f"{TASKS}/{task_id}")).json()
        if task["status"] == status:
            return task
        await asyncio.sleep(0.1)
    raise AssertionError(f"{task_id} never became {status}: {task}")


FORM = {
    "name": "ps-run", "command": "python train.py", "instance_count": 3, "mode": "PS-Worker",
    "roles": {"ps": 1, "worker": 2}, "description": "a parameter-server run", "image": "capstan/python-ml",
    "storage": [{"kind": "object", "purpose": "training_data", "source": "local:data/train",
                 "path": "/opt/ml/input/data/train"},
                {"kind": "fs", "purpose": "builtin_model", "source": "platform:models/tiny",
                 "path": "/opt/ml/pretrain_model", "readonly": True}],
    "code": "local:code/v1", "output": "local:runs", "tags": {"team": "nlp"}, "region": "default",
}


async def test_the_whole_form_round_trips_and_a_queued_task_shows_its_place(api: httpx.AsyncClient, rg_id: str,
                                                                             tmp_path: Path) -> None:
    (tmp_path / "t").mkdir(exist_ok=True)
    (tmp_path / "t" / "prices.json").write_text(json.dumps(
        {"currency": "USD", "cpu_core_hour": 0.5, "memory_gib_hour": 0.25, "gpu_hour": {"A100": 2}}))
    r = await api.post(TASKS, json={**FORM, "resource_group_id": rg_id})
    assert r.status_code == 201, r.text
    task = r.json()
    for key in ("mode", "roles", "description", "image", "code", "output", "storage", "region"):
        want = FORM[key]
        got = task[key]
        if key == "storage":
            got = [{k: v for k, v in row.items() if k in want_row} for row, want_row in zip(got, want, strict=True)]
        assert got == want, key
    # 1 core and 1 GiB per instance by default: (0.5 + 0.25) x 3
    assert task["price"] == {"per_hour": 2.25, "currency": "USD", "per_instance_hour": 0.75, "note": ""}
    queued = await _until(api, task["id"], "Queued")  # no node in the group: it waits
    assert queued["queue"]["queued_since"] and queued["queue"]["priority"] is not None
    assert queued["queue"]["position"] is not None and queued["queue"]["reason"]
    price = await api.post(f"{TASKS}/price", json={"resources": {"cpu": 2, "memory_gib": 4, "gpu_type": "A100",
                                                                 "gpu": 1}, "instance_count": 2})
    assert price.json()["per_hour"] == 8.0  # (2 x 0.5 + 4 x 0.25 + 2) x 2
    form = (await api.get(f"{TASKS}/{task['id']}/copy")).json()
    assert form["roles"] == FORM["roles"] and form["storage"][0]["source"] == "local:data/train"
    assert form["region"] == "default"
    tagged = await api.patch(f"{TASKS}/{task['id']}", json={"tags": {"team": "cv", "p": "1"}})
    assert tagged.status_code == 200 and tagged.json()["tags"] == {"team": "cv", "p": "1"}
    refused = await api.delete(f"{TASKS}/{task['id']}")
    assert refused.status_code == 409, refused.text
    assert "stop it first" in refused.json()["error"]["message"]


@pytest.mark.parametrize(("change", "message"), [
    ({"description": "x" * 501}, "description"),
    ({"mode": "PS-Worker", "roles": {"ps": 1, "worker": 1}}, "add up to 2 instances"),
    ({"roles": {"ps": 1}}, "roles need a training mode"),
    ({"mode": "Ray", "roles": {"head": 2, "worker": 1}}, "Ray roles"),
    ({"image": "Not An Image!"}, "image"),
    ({"region": "ap-guangzhou"}, "not served by this install: its region is 'default'"),
    ({"code": "nowhere:x"}, "not configured"),
    ({"storage": [{"kind": "fs", "source": "platform:a", "path": "/opt/ml/input/x"},
                  {"kind": "fs", "source": "platform:b", "path": "/opt/ml/input/x"}]}, "same path"),
])
async def test_bad_forms_are_400s_naming_the_field(api: httpx.AsyncClient, rg_id: str, change: dict[str, Any],
                                                   message: str) -> None:
    body = {"name": "bad", "resource_group_id": rg_id, "command": "true", "instance_count": 3, **change}
    r = await api.post(TASKS, json=body)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]["message"]
    assert (await api.get(TASKS)).json()["total"] == 0


async def test_outputs_are_listed_and_downloaded_and_links_never_followed(api: httpx.AsyncClient, rg_id: str,
                                                                          tmp_path: Path) -> None:
    task = (await api.post(TASKS, json={"name": "out", "resource_group_id": rg_id, "command": "true"})).json()
    await api.post(f"{TASKS}/{task['id']}/stop")
    await _until(api, task["id"], "Stopped")
    # what an agent saved for instance 0 (platform storage, shared with the trainer)
    base = tmp_path / "t" / "storage" / "train" / task["id"] / "0"
    (base / "output" / "ckpt").mkdir(parents=True)
    (base / "model").mkdir(parents=True)
    (base / "output" / "ckpt" / "step-1.pt").write_bytes(b"\x00checkpoint")
    (base / "model" / "config.json").write_text("{}")
    os.symlink("/etc/passwd", base / "model" / "leak")
    listing = (await api.get(f"{TASKS}/{task['id']}/outputs")).json()["files"]
    assert {(f["path"], f["kind"]) for f in listing} == {
        ("output/ckpt", "dir"), ("output/ckpt/step-1.pt", "file"), ("model/config.json", "file")}
    got = await api.get(f"{TASKS}/{task['id']}/outputs/output/ckpt/step-1.pt")
    assert got.status_code == 200 and got.content == b"\x00checkpoint"
    assert got.headers["content-type"] == "application/octet-stream"
    for path, status in (("model/leak", 400), ("model/missing", 404), ("secrets/x", 400)):
        r = await api.get(f"{TASKS}/{task['id']}/outputs/{path}")
        assert r.status_code == status, (path, r.text)
    assert (await api.get(f"{TASKS}/{task['id']}/outputs", params={"instance": 5})).status_code == 400
    # checkpoints and evaluation results, read from the outputs
    assert (await api.get(f"{TASKS}/{task['id']}/evaluation")).status_code == 404
    (base / "output" / "checkpoint-750").mkdir()
    (base / "output" / "checkpoint-750" / "adapter.safetensors").write_bytes(b"x")
    (base / "output" / "evaluation.json").write_text('{"accuracy": 0.9, "loss": 0.3}')
    cks = (await api.get(f"{TASKS}/{task['id']}/checkpoints")).json()["files"]
    assert [f["path"] for f in cks] == ["output/checkpoint-750", "output/ckpt"]  # directories, listed once
    assert (await api.get(f"{TASKS}/{task['id']}/evaluation")).json() == {"accuracy": 0.9, "loss": 0.3}
    events = (await api.get(f"{TASKS}/{task['id']}/events")).json()["items"]
    assert [e["type"] for e in events] == ["TrainingTaskSubmitted", "TrainingTaskStopRequested", "TrainingTaskEnded"]
    assert (await api.get(f"{TASKS}/{task['id']}/metrics")).json()["samples"] == []
    # start again: a new task with the same settings; delete the old one
    again = await api.post(f"{TASKS}/{task['id']}/start")
    assert again.status_code == 201 and again.json()["source_task_id"] == task["id"]
    assert (await api.delete(f"{TASKS}/{task['id']}")).status_code == 204
    assert (await api.get(f"{TASKS}/{task['id']}")).status_code == 404


async def test_tensorboard_on_the_tasks_summaries_through_the_gateway(api: httpx.AsyncClient, rg_id: str,
                                                                      tmp_path: Path) -> None:
    torch_tb = pytest.importorskip("torch.utils.tensorboard")
    pytest.importorskip("tensorboard")
    task = (await api.post(TASKS, json={"name": "tb", "resource_group_id": rg_id, "command": "true"})).json()
    # what an instance wrote to /opt/ml/summary, as the agent saved it
    writer = torch_tb.SummaryWriter(str(tmp_path / "t" / "storage" / "train" / task["id"] / "0" / "output" / "summary"))
    for step in range(5):
        writer.add_scalar("loss", 1.0 / (step + 1), step)
    writer.close()
    started = (await api.post(f"{TASKS}/{task['id']}/tensorboard")).json()
    assert started["url"] == f"/api/v1/training-tasks/{task['id']}/tensorboard/"
    runs = None
    for _ in range(300):  # the first request waits until it is up; the run appears once it has read the logdir
        r = await api.get(f"{TASKS}/{task['id']}/tensorboard/data/runs")
        assert r.status_code == 200, r.text
        if runs := r.json():
            break
        await asyncio.sleep(0.2)
    assert runs is not None and [r.split("/")[0] for r in runs] == ["instance-0"]  # one run per instance
    tags = (await api.get(f"{TASKS}/{task['id']}/tensorboard/data/plugin/scalars/tags")).json()
    assert "loss" in tags[runs[0]]
    page = await api.get(f"{TASKS}/{task['id']}/tensorboard/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    missing = await api.get(f"{TASKS}/{task['id']}/tensorboard/no/such%12page")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    unauthenticated = await api.get(f"{TASKS}/{task['id']}/tensorboard/data/runs", headers={"Authorization": ""})
    assert unauthenticated.status_code == 401
