"""capstan task outputs / copy / start / delete / tag / price, against the scripted stand-in for the API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from capstan_cli.main import cli

FakeApi = Any
T = "/api/v1/training-tasks/train-1"


def run(runner: CliRunner, api: FakeApi, data_dir: Path, *args: str) -> Result:
    return runner.invoke(cli, ["--api", api.url, "--data-dir", str(data_dir), *args])


FILES = {"files": [
    {"instance": 0, "path": "output", "kind": "dir", "size": 0, "modified_at": None},
    {"instance": 0, "path": "output/ckpt/step-1.pt", "kind": "file", "size": 5, "modified_at": None},
    {"instance": 1, "path": "model/weights.bin", "kind": "file", "size": 3, "modified_at": None},
]}


def test_outputs_lists_and_downloads_every_file(runner: CliRunner, fake_api: FakeApi, data_dir: Path,
                                                tmp_path: Path) -> None:
    fake_api.on("GET", f"{T}/outputs", (200, FILES))
    fake_api.on("GET", f"{T}/outputs/output/ckpt/step-1.pt", (200, b"ckpt!"))
    fake_api.on("GET", f"{T}/outputs/model/weights.bin", (200, b"w\x00\x01"))
    listed = run(runner, fake_api, data_dir, "task", "outputs", "train-1")
    assert listed.exit_code == 0, listed.output
    assert "output/ckpt/step-1.pt" in listed.stdout and "model/weights.bin" in listed.stdout
    dest = tmp_path / "got"
    got = run(runner, fake_api, data_dir, "task", "outputs", "train-1", "--download", str(dest))
    assert got.exit_code == 0, got.output
    assert (dest / "0" / "output" / "ckpt" / "step-1.pt").read_bytes() == b"ckpt!"
    assert (dest / "1" / "model" / "weights.bin").read_bytes() == b"w\x00\x01"
    assert "downloaded 2 file(s)" in got.stdout and "[2/2]" in got.stderr
    assert [r.query.get("instance") for r in fake_api.requests if "/outputs/" in r.path] == ["0", "1"]


def test_a_path_climbing_out_of_the_download_dir_is_refused(runner: CliRunner, fake_api: FakeApi, data_dir: Path,
                                                             tmp_path: Path) -> None:
    fake_api.on("GET", f"{T}/outputs", (200, {"files": [
        {"instance": 0, "path": "output/../../evil", "kind": "file", "size": 1, "modified_at": None}]}))
    got = run(runner, fake_api, data_dir, "task", "outputs", "train-1", "--download", str(tmp_path / "d"))
    assert got.exit_code == 1 and "refusing the path" in got.stderr
    assert not (tmp_path / "evil").exists()


def test_a_missing_file_says_so(runner: CliRunner, fake_api: FakeApi, data_dir: Path, tmp_path: Path) -> None:
    fake_api.on("GET", f"{T}/outputs", (200, {"files": [FILES["files"][1]]}))
    fake_api.on("GET", f"{T}/outputs/output/ckpt/step-1.pt",
                (404, {"error": {"code": "not_found", "message": "instance 0 has no output file x"}}))
    got = run(runner, fake_api, data_dir, "task", "outputs", "train-1", "--download", str(tmp_path / "d"))
    assert got.exit_code == 1 and "has no output file" in got.stderr
    assert not list((tmp_path / "d").rglob("*.part"))


def test_copy_start_delete_tag_price(runner: CliRunner, fake_api: FakeApi, data_dir: Path) -> None:
    form = {"name": "n", "resource_group_id": "rsg-1", "command": "true"}
    fake_api.on("GET", f"{T}/copy", (200, form))
    fake_api.on("POST", "/api/v1/training-tasks", lambda r: (201, {"id": "train-2", **r.body}))
    fake_api.on("POST", f"{T}/start", (201, {"id": "train-3"}))
    fake_api.on("DELETE", T, (204, b""))
    fake_api.on("PATCH", T, lambda r: (200, {"id": "train-1", "tags": r.body["tags"]}))
    fake_api.on("POST", "/api/v1/training-tasks/price",
                lambda r: (200, {"per_hour": 2.5 * r.body["instance_count"], "currency": "USD",
                                 "per_instance_hour": 2.5, "note": ""}))
    copied = run(runner, fake_api, data_dir, "task", "copy", "train-1", "--name", "again", "--submit")
    assert copied.stdout == "train-2\n" and fake_api.requests[-1].body["name"] == "again"
    assert run(runner, fake_api, data_dir, "task", "start", "train-1").stdout == "train-3\n"
    assert run(runner, fake_api, data_dir, "task", "delete", "train-1").stdout == "deleted train-1\n"
    assert run(runner, fake_api, data_dir, "task", "tag", "train-1", "--tag", "a=b").stdout == "a=b\n"
    assert run(runner, fake_api, data_dir, "task", "price", "--nodes", "2").stdout == "5 USD/hour\n"


def test_events_metrics_tensorboard_and_the_queued_status(runner: CliRunner, fake_api: FakeApi,
                                                           data_dir: Path) -> None:
    fake_api.on("GET", f"{T}/events", (200, {"items": [
        {"time": "2026-01-01T00:00:00Z", "level": "info", "type": "TrainingTaskSubmitted", "message": "submitted"}]}))
    fake_api.on("GET", f"{T}/metrics", (200, {"samples": [
        {"time": "2026-01-01T00:00:00Z", "instance": 0, "cpu_cores": 0.5, "cpu_percent": 50, "memory_bytes": 2 << 20,
         "memory_percent": 0.2, "gpus": [{"index": 1, "gpu_percent": 30, "memory_bytes": 0, "memory_percent": 0}]}],
        "last_seq": 3}))
    fake_api.on("POST", f"{T}/tensorboard", (200, {"url": "/api/v1/training-tasks/train-1/tensorboard/",
                                                  "ready": True}))
    fake_api.on("GET", T, (200, {"id": "train-1", "name": "n", "status": "Queued", "instances": [],
                                 "created_at": "2026-01-01T00:00:00Z",
                                 "queue": {"queued_since": "2026-01-01T00:00:00Z", "priority": 3, "position": 2,
                                           "reason": "r"}}))
    assert "TrainingTaskSubmitted" in run(runner, fake_api, data_dir, "task", "events", "train-1").stdout
    shown = run(runner, fake_api, data_dir, "task", "metrics", "train-1").stdout
    assert "2.0 MiB" in shown and "gpu1=30%" in shown
    tb = run(runner, fake_api, data_dir, "task", "tensorboard", "train-1").stdout
    assert tb.startswith(f"{fake_api.url}/api/v1/training-tasks/train-1/tensorboard/")
    status = run(runner, fake_api, data_dir, "task", "status", "train-1")
    assert "P3" in status.stdout and "position 2" in status.stdout, status.output
