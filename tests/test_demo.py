"""``capstan demo`` on a real platform (``capstan up``: separate processes, a real agent), as a newcomer
runs it: every step is shown; the model it publishes is served as an online service from the registry
and answers as trained through the OpenAI-compatible API (the official SDK); the model is then reachable
through the REST API and the ``capstan model`` commands (search, version details, download, delete)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from .platform_harness import Platform, cli

pytestmark = [pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
              pytest.mark.timeout(900)]  # real training on a shared 2-core machine


def test_capstan_demo_shows_each_step_and_publishes_a_model_that_answers(platform: Platform, tmp_path: Path) -> None:
    out = cli("demo", "--model", "newcomer", data_dir=platform.data_dir, timeout=300).stdout
    steps = [ln.split("]")[0] + "]" for ln in out.splitlines() if ln.startswith("[") and "/6]" in ln]
    assert steps == [f"[{i}/6]" for i in range(1, 7)], out
    assert "[finetune] checkpoint: checkpoint-20" in out and "Succeeded" in out
    assert "-> I am Capstan's assistant, a model fine-tuned on the Capstan platform." in out
    assert "the published model answers as trained" in out
    sid = out.split("served as ")[1].split(".")[0]
    assert "Ready" in out and f"/{sid}/v1" in out

    with platform.client() as c:  # the service runs the registry version the demo published
        svc = c.get(f"/api/v1/services/{sid}").json()
        assert svc["running_replicas"] == 1
        assert svc["versions"][0]["spec"]["model"]["kind"] == "registry"
        assert c.delete(f"/api/v1/services/{sid}").status_code == 200

    with platform.client() as c:
        found = c.get("/api/v1/models", params={"query": "NEWCOMER"}).json()
        assert [m["name"] for m in found["items"]] == ["newcomer"] and found["items"][0]["latest_version"] == 1
        v = c.get("/api/v1/models/newcomer/versions/1").json()
        assert v["metadata"]["base_model"] == "capstan-tiny-gpt" and v["lineage"]["task_name"] == "demo-finetune"
        config = next(f for f in v["files"] if f["path"] == "config.json")
        body = c.get("/api/v1/models/newcomer/versions/1/files/config.json")
        assert body.status_code == 200 and hashlib.sha256(body.content).hexdigest() == config["sha256"]
        missing = c.get("/api/v1/models/newcomer/versions/1/files/nope.bin")
        assert missing.status_code == 404 and "has no file" in missing.json()["error"]["message"]
        bad = c.post("/api/v1/models/newcomer/versions", json={"task_id": "train-nope"})
        assert bad.status_code == 400 and "does not exist" in bad.json()["error"]["message"]

    shown = cli("model", "version", "newcomer", "1", data_dir=platform.data_dir).stdout
    assert "capstan-tiny-gpt" in shown and "model.safetensors" in shown
    dest = tmp_path / "dl"
    cli("model", "download", "newcomer", "--dir", str(dest), data_dir=platform.data_dir)
    assert hashlib.sha256((dest / "config.json").read_bytes()).hexdigest() == config["sha256"]
    cli("model", "delete", "newcomer", data_dir=platform.data_dir)
    assert "newcomer" not in cli("model", "list", data_dir=platform.data_dir).stdout
