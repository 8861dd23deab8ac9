"""``capstan svc``: what each command sends to /api/v1/services and how it prints the answer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from capstan_cli.main import cli

SVC: dict[str, Any] = {
    "id": "ms-abcd1234", "name": "chat", "status": "Running", "deployment_mode": "standard", "auth_enabled": True,
    "running_replicas": 1, "expected_replicas": 1, "running_versions": 1, "tags": {}, "creator": "admin",
    "versions": [{"id": "ms-abcd1234-v1", "spec": {"runtime": "transformers"}, "weight": 100, "replicas": 1,
                  "ready_replicas": 1, "autoscaling": {"mode": "manual"}, "failed": ""}],
    "instances": [{"id": "ms-abcd1234-v1-1", "version_id": "ms-abcd1234-v1", "state": "Ready",
                   "address": "10.0.0.2:8501", "restarts": 0}],
    "keys": [],
}


def run(runner: CliRunner, api: Any, data_dir: Path, *args: str) -> Any:
    return runner.invoke(cli, ["--api", api.url, "--data-dir", str(data_dir), *args])


def test_create_sends_the_spec_and_shows_the_key_once(runner: CliRunner, fake_api: Any, data_dir: Path,
                                                      tmp_path: Path) -> None:
    created = {**SVC, "created_key": {"id": "key-1", "secret": "sk-secret"}}
    fake_api.on("POST", "/api/v1/services", (201, created))
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"runtime": "transformers", "model": {"kind": "path", "path": "/m"}}))
    r = run(runner, fake_api, data_dir, "svc", "create", "chat", "--spec-file", str(spec), "--rg", "rsg-1",
            "--generate-key", "--tag", "team=a")
    assert r.exit_code == 0, r.output
    body = fake_api.requests[-1].body
    assert body["spec"]["resource_group_id"] == "rsg-1" and body["generate_key"] and body["tags"] == {"team": "a"}
    assert "sk-secret" in r.output and "ms-abcd1234-v1-1" in r.output


def test_scale_isolate_update_keys_and_errors(runner: CliRunner, fake_api: Any, data_dir: Path) -> None:
    fake_api.on("POST", "/api/v1/services/ms-abcd1234/scale", (200, SVC))
    fake_api.on("POST", "/api/v1/services/ms-abcd1234/instances/ms-abcd1234-v1-1/isolate", (200, SVC))
    fake_api.on("GET", "/api/v1/services/ms-abcd1234", (200, SVC))
    fake_api.on("PATCH", "/api/v1/services/ms-abcd1234/versions/ms-abcd1234-v1", (200, SVC))
    fake_api.on("PATCH", "/api/v1/services/ms-abcd1234", (200, SVC))
    fake_api.on("POST", "/api/v1/services/ms-abcd1234/keys", (201, {"id": "key-2", "secret": "sk-2"}))
    assert run(runner, fake_api, data_dir, "svc", "scale", "ms-abcd1234", "3").exit_code == 0
    assert fake_api.requests[-1].body == {"replicas": 3, "version_id": ""}
    assert run(runner, fake_api, data_dir, "svc", "isolate", "ms-abcd1234", "ms-abcd1234-v1-1").exit_code == 0
    r = run(runner, fake_api, data_dir, "svc", "update", "ms-abcd1234", "--spec", '{"grace_period_s": 60}')
    assert r.exit_code == 0, r.output and fake_api.requests[-1].body == {"spec": {"grace_period_s": 60}}
    r = run(runner, fake_api, data_dir, "svc", "keys", "create", "ms-abcd1234", "--tpm", "1000")
    assert r.exit_code == 0 and "sk-2" in r.output and fake_api.requests[-1].body["tokens_per_minute"] == 1000
    assert run(runner, fake_api, data_dir, "svc", "keys", "auth", "ms-abcd1234", "off").exit_code == 0
    assert fake_api.requests[-1].body == {"auth_enabled": False}
    fake_api.on("POST", "/api/v1/services/ms-abcd1234/stop",
                (404, {"error": {"code": "not_found", "message": "service ms-abcd1234 does not exist"}}))
    r = run(runner, fake_api, data_dir, "svc", "stop", "ms-abcd1234")
    assert r.exit_code != 0 and "does not exist" in r.output
    r = run(runner, fake_api, data_dir, "svc", "create", "x", "--spec", "{not json")
    assert r.exit_code != 0 and "not valid JSON" in r.output


def test_logs_print_each_line_with_its_instance(runner: CliRunner, fake_api: Any, data_dir: Path) -> None:
    page = {"lines": [{"ts_ms": 1, "instance": "ms-abcd1234-v1-1", "stream": "stdout", "line": "ready", "seq": 3}],
            "last_seq": 3}
    fake_api.on("GET", "/api/v1/services/ms-abcd1234/logs", (200, page))
    r = run(runner, fake_api, data_dir, "svc", "logs", "ms-abcd1234", "-k", "read")
    assert r.exit_code == 0 and "[ms-abcd1234-v1-1] ready" in r.output
    assert fake_api.requests[-1].query["keyword"] == "read"


def test_weights_and_autoscale(runner: CliRunner, fake_api: Any, data_dir: Path) -> None:
    fake_api.on("PUT", "/api/v1/services/ms-abcd1234/weights", (200, SVC))
    fake_api.on("PUT", "/api/v1/services/ms-abcd1234/autoscaling", (200, SVC))
    r = run(runner, fake_api, data_dir, "svc", "weights", "ms-abcd1234", "ms-abcd1234-v1=90", "ms-abcd1234-v2=10")
    assert r.exit_code == 0, r.output
    assert fake_api.requests[-1].body == {"weights": {"ms-abcd1234-v1": 90, "ms-abcd1234-v2": 10}}
    r = run(runner, fake_api, data_dir, "svc", "autoscale", "ms-abcd1234", "--hpa", "qps:10", "--min", "1", "--max", "4")
    assert r.exit_code == 0, r.output
    assert fake_api.requests[-1].body["autoscaling"] == {"mode": "hpa", "metric": "qps", "target": 10.0, "min": 1,
                                                          "max": 4, "cooldown_s": 60}
    r = run(runner, fake_api, data_dir, "svc", "autoscale", "ms-abcd1234", "--rules",
            '{"rules": [{"at": "09:00", "replicas": 3}]}')
    assert r.exit_code == 0 and fake_api.requests[-1].body["autoscaling"]["mode"] == "time"
    assert run(runner, fake_api, data_dir, "svc", "weights", "ms-abcd1234", "v1:90").exit_code != 0
    assert run(runner, fake_api, data_dir, "svc", "autoscale", "ms-abcd1234").exit_code != 0
