"""Client commands against a scripted stand-in for the REST API: requests sent, output, errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from capstan_cli import logs as logs_module
from capstan_cli.commands import tasks as tasks_module
from capstan_cli.main import cli

# conftest's FakeApi and Request (not importable under --import-mode=importlib)
FakeApi = Any
Request = Any


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tasks_module, "POLL_S", 0.01)
    monkeypatch.setattr(logs_module, "POLL_S", 0.01)
    monkeypatch.setattr(logs_module, "SETTLE_S", 0.05)


def run(runner: CliRunner, api: FakeApi, data_dir: Path, *args: str) -> Result:
    return runner.invoke(cli, ["--api", api.url, "--data-dir", str(data_dir), *args])


def test_error_body_message_is_printed(runner: CliRunner, fake_api: FakeApi, data_dir: Path) -> None:
    fake_api.on(
        "GET",
        "/api/v1/resource-groups/rsg-x",
        (404, {"error": {"code": "not_found", "message": "resource group rsg-x does not exist"}}),
    )
    result = run(runner, fake_api, data_dir, "rg", "get", "rsg-x")
    assert result.exit_code == 1
    assert result.stderr == "error: resource group rsg-x does not exist\n"
    assert result.stdout == ""


def test_error_without_error_body(runner: CliRunner, fake_api: FakeApi, data_dir: Path) -> None:
    fake_api.on("GET", "/api/v1/nodes", (502, b"bad gateway"))
    result = run(runner, fake_api, data_dir, "nodes")
    assert result.exit_code == 1
    assert result.stderr == "error: HTTP 502: bad gateway\n"


def test_unreachable_api(runner: CliRunner, data_dir: Path) -> None:
    result = runner.invoke(cli, ["--api", "http://127.0.0.1:9", "--data-dir", str(data_dir), "task", "list"])
    assert result.exit_code == 1
    assert "cannot reach the Capstan API at http://127.0.0.1:9" in result.stderr


def test_api_url_and_token_come_from_the_data_dir(runner: CliRunner, fake_api: FakeApi, data_dir: Path) -> None:
    (data_dir / "run" / "api-url").write_text(fake_api.url + "\n")
    fake_api.on("GET", "/api/v1/resource-groups", (200, {"items": [], "next_page_token": "", "total": 0}))
    result = runner.invoke(cli, ["rg", "list", "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    assert fake_api.requests[0].headers["authorization"] == "Bearer secret-token"


def test_token_from_env(runner: CliRunner, fake_api: FakeApi, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPSTAN_TOKEN", "from-env")
    monkeypatch.setenv("CAPSTAN_API", fake_api.url)
    fake_api.on("GET", "/api/v1/resource-groups", (200, {"items": [], "next_page_token": "", "total": 0}))
    result = runner.invoke(cli, ["rg", "list", "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    assert fake_api.requests[0].headers["authorization"] == "Bearer from-env"


def test_rg_create(runner: CliRunner, fake_api: FakeApi, data_dir: Path) -> None:
    fake_api.on("POST", "/api/v1/resource-groups", lambda r: (201, {"id": "rsg-new", **r.body}))
    result = run(
        runner, fake_api, data_dir, "rg", "create", "team-a", "--tag", "team=a", "--policy", '{"Version": "1.0"}'
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == "rsg-new\n"
    assert fake_api.requests[0].body == {"name": "team-a", "tags": {"team": "a"}, "policy": {"Version": "1.0"}}


def test_rg_list_follows_pages(runner: CliRunner, fake_api: FakeApi, data_dir: Path) -> None:
    def page(r: Request) -> tuple[int, Any]:
        if r.query.get("page_token") == "p2":
            return 200, {"items": [{"id": "rsg-2", "name": "b", "node_count": 0}], "next_page_token": "", "total": 2}
        return 200, {"items": [{"id": "rsg-1", "name": "a", "node_count": 3}], "next_page_token": "p2", "total": 2}

    fake_api.on("GET", "/api/v1/resource-groups", page)
    result = run(runner, fake_api, data_dir, "rg", "list")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["ID", "NAME", "NODES", "TAGS", "CREATOR", "CREATED"]
    assert [ln.split()[:3] for ln in lines[1:]] == [["rsg-1", "a", "3"], ["rsg-2", "b", "0"]]
    result = run(runner, fake_api, data_dir, "--json", "rg", "list")
    assert [g["id"] for g in json.loads(result.stdout)] == ["rsg-1", "rsg-2"]


def test_nodes_table(runner: CliRunner, fake_api: FakeApi, data_dir: Path) -> None:
    node = {
        "id": "node-1", "resource_group_id": "rsg-1", "name": "box-trainer", "state": "Running",
        "agent_kind": "trainer", "cpu": 8, "memory_gib": 32, "gpus": {"A100": 8},
        "allocated": {"cpu": 2, "memory_gib": 4, "gpus": {"A100": 1}}, "last_heartbeat_at": None,
        "joined_at": "2025-01-01T00:00:00Z",
    }  # fmt: skip
    fake_api.on("GET", "/api/v1/nodes", (200, {"items": [node], "next_page_token": "", "total": 1}))
    result = run(runner, fake_api, data_dir, "nodes", "--resource-group", "rsg-1")
    assert result.exit_code == 0, result.output
    assert fake_api.requests[0].query["resource_group_id"] == "rsg-1"
    row = result.stdout.splitlines()[1]
    assert row.split() == ["node-1", "box-trainer", "rsg-1", "trainer", "Running", "2/8", "4/32", "A100", "1/8", "-"]


def _task(status: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": "train-1", "name": "hello", "status": status, "exit_code": None, "failure_reason": "",
        "instance_count": 1, "instances": [], "created_at": "2025-01-01T00:00:00Z", "started_at": None,
        "ended_at": None, "resources": {"cpu": 1, "memory_gib": 1, "gpu_type": "", "gpu": 0}, **extra,
    }  # fmt: skip


def test_submit_sends_the_task_and_prints_its_id(
    runner: CliRunner, fake_api: FakeApi, data_dir: Path, tmp_path: Path
) -> None:
    fake_api.on("POST", "/api/v1/training-tasks", (201, _task("Submitting")))
    hp = tmp_path / "hp.json"
    hp.write_text('{"lr": 0.1}')
    result = run(
        runner, fake_api, data_dir, "task", "submit", "--name", "hello", "--command", "echo hi",
        "--hyperparameters-file", str(hp), "--cpu", "2", "--memory", "4", "--gpu-type", "A100", "--gpu", "0.5",
        "--nodes", "2", "--tag", "k=v",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout == "train-1\n"
    assert fake_api.requests[0].body == {
        "name": "hello",
        "resource_group_id": "rsg-default",  # from DATA_DIR/run/default-rg
        "command": "echo hi",
        "hyperparameters": {"lr": 0.1},
        "resources": {"cpu": 2, "memory_gib": 4, "gpu": 0.5, "gpu_type": "A100"},
        "instance_count": 2,
        "tags": {"k": "v"},
    }


@pytest.mark.parametrize(("final", "code"), [("Succeeded", 0), ("Failed", 1), ("Stopped", 1)])
def test_submit_wait_exit_code(runner: CliRunner, fake_api: FakeApi, data_dir: Path, final: str, code: int) -> None:
    states = iter(["Queued", "Starting", "Running", final])
    fake_api.on("POST", "/api/v1/training-tasks", (201, _task("Submitting")))
    fake_api.on("GET", "/api/v1/training-tasks/train-1", lambda r: (200, _task(next(states), exit_code=0)))
    result = run(runner, fake_api, data_dir, "task", "submit", "--name", "x", "--command", "true", "--wait")
    assert result.exit_code == code, result.output
    assert result.stdout == "train-1\n"
    assert [ln.split()[1] for ln in result.stderr.splitlines()] == ["Queued", "Starting", "Running", final]


def test_status_shows_how_long_queued(runner: CliRunner, fake_api: FakeApi, data_dir: Path) -> None:
    fake_api.on("GET", "/api/v1/training-tasks/train-1", (200, _task("Queued")))
    result = run(runner, fake_api, data_dir, "task", "status", "train-1")
    assert result.exit_code == 0, result.output
    assert "Queued (queued " in result.stdout


def test_status_shows_instances(runner: CliRunner, fake_api: FakeApi, data_dir: Path) -> None:
    t = _task("Failed", exit_code=3, failure_reason="instance 0 exited with code 3",
              instances=[{"index": 0, "node_id": "node-1", "status": "Exited", "exit_code": 3}])  # fmt: skip
    fake_api.on("GET", "/api/v1/training-tasks/train-1", (200, t))
    result = run(runner, fake_api, data_dir, "task", "status", "train-1")
    assert "Failed (exit code 3; instance 0 exited with code 3)" in result.stdout
    assert result.stdout.splitlines()[-1].split() == ["0", "node-1", "Exited", "3"]


def test_submit_sends_the_restart_budget(runner: CliRunner, fake_api: FakeApi, data_dir: Path) -> None:
    fake_api.on("POST", "/api/v1/training-tasks", (201, _task("Submitting")))
    result = run(runner, fake_api, data_dir, "task", "submit", "--name", "x", "--command", "true", "--max-restarts", "2")
    assert result.exit_code == 0, result.output
    assert fake_api.requests[0].body["max_restarts"] == 2
    assert "network" not in fake_api.requests[0].body  # the platform's default


def test_submit_sends_the_network_mode(runner: CliRunner, fake_api: FakeApi, data_dir: Path) -> None:
    fake_api.on("POST", "/api/v1/training-tasks", (201, _task("Submitting")))
    result = run(runner, fake_api, data_dir, "task", "submit", "--name", "x", "--command", "true", "--network", "none")
    assert result.exit_code == 0, result.output
    assert fake_api.requests[0].body["network"] == "none"
    result = run(runner, fake_api, data_dir, "task", "submit", "--name", "x", "--command", "true", "--network", "wide")
    assert result.exit_code == 2


def test_status_shows_restarts_against_the_budget(runner: CliRunner, fake_api: FakeApi, data_dir: Path) -> None:
    t = _task("Running", attempt=3, restarts=2, restarts_used=1, max_restarts=3, preemptions=1)
    fake_api.on("GET", "/api/v1/training-tasks/train-1", (200, t))
    result = run(runner, fake_api, data_dir, "task", "status", "train-1")
    assert result.exit_code == 0, result.output
    lines = {ln.split(":", 1)[0]: ln.split(":", 1)[1].strip() for ln in result.stdout.splitlines() if ":" in ln}
    assert lines["restarts"] == "1 of 3 automatic restart(s) used; 1 after a lost node"
    assert lines["attempt"] == "3" and lines["preemptions"] == "1"
    fake_api.on("GET", "/api/v1/training-tasks/train-1", (200, _task("Running", max_restarts=0, restarts=0)))
    plain = run(runner, fake_api, data_dir, "task", "status", "train-1")
    assert "restarts" not in plain.stdout and "attempt" not in plain.stdout


def test_logs_pages_with_after_seq_and_passes_filters(runner: CliRunner, fake_api: FakeApi, data_dir: Path) -> None:
    fake_api.on("GET", "/api/v1/training-tasks/train-1", (200, _task("Succeeded")))
    lines = [
        {"time": "2025-01-01T00:00:00Z", "instance": 0, "stream": "stdout", "line": f"l{i}", "seq": i}
        for i in (1, 2, 3)
    ]

    def logs(r: Request) -> tuple[int, Any]:
        after = int(r.query.get("after_seq", 0))
        page = [ln for ln in lines if ln["seq"] > after][:2]
        return 200, {"lines": page, "last_seq": page[-1]["seq"] if page else after}

    fake_api.on("GET", "/api/v1/training-tasks/train-1/logs", logs)
    result = run(
        runner,
        fake_api,
        data_dir,
        "task",
        "logs",
        "train-1",
        "--keyword",
        "l",
        "--instance",
        "0",
        "--since",
        "2025-01-01T00:00:00Z",
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == "l1\nl2\nl3\n"
    q = [r.query for r in fake_api.requests if r.path.endswith("/logs")]
    assert [x.get("after_seq") for x in q] == [None, "2", "3"]
    assert q[0]["keyword"] == "l" and q[0]["instance"] == "0" and q[0]["start"] == "2025-01-01T00:00:00Z"


def test_logs_follow_until_the_task_ends(runner: CliRunner, fake_api: FakeApi, data_dir: Path) -> None:
    produced: list[dict[str, Any]] = []

    def task(r: Request) -> tuple[int, Any]:
        if len(produced) < 4:  # the task writes one line between two polls of its status, four in all
            n = len(produced)
            produced.append(
                {"time": "2025-01-01T00:00:00Z", "instance": n % 2, "stream": "stdout", "line": f"n{n}", "seq": n + 1}
            )
        return 200, _task("Running" if len(produced) < 4 else "Succeeded", instance_count=2)

    def logs(r: Request) -> tuple[int, Any]:
        after = int(r.query.get("after_seq", 0))
        page = [ln for ln in produced if ln["seq"] > after]
        return 200, {"lines": page, "last_seq": page[-1]["seq"] if page else after}

    fake_api.on("GET", "/api/v1/training-tasks/train-1", task)
    fake_api.on("GET", "/api/v1/training-tasks/train-1/logs", logs)
    result = run(runner, fake_api, data_dir, "task", "logs", "train-1", "--follow")
    assert result.exit_code == 0, result.output
    assert result.stdout == "[0] n0\n[1] n1\n[0] n2\n[1] n3\n"  # two instances: lines carry their index
    assert len([r for r in fake_api.requests if r.path.endswith("/logs")]) > 4  # it polled


QUARANTINE = {
    "items": [
        {"service": "scheduler", "seq": 7, "subject": "capstan.evt.rsg.x", "projection": "scheduler",
         "kind": "undecodable", "error": "not JSON (JSONDecodeError: Expecting value)", "stored_at": "2025-01-01T00:00:00Z"},
        {"service": "trainer", "seq": 9, "subject": "capstan.evt.train.y", "projection": "trainer",
         "kind": "invalid", "error": "event 0 (TrainingTaskSubmitted): resources: Input should be a valid dictionary",
         "stored_at": "2025-01-01T00:00:01Z"},
    ],
    "counters": [{"service": "scheduler", "name": "quarantined_commits",
                  "labels": {"projection": "scheduler", "kind": "undecodable"}, "value": 1}],
    "services": [{"service": "scheduler", "reachable": True, "error": "", "quarantined": 1},
                 {"service": "trainer", "reachable": True, "error": "", "quarantined": 1},
                 {"service": "registry", "reachable": False, "error": "the registry service is not reachable",
                  "quarantined": 0}],
}


def test_events_quarantine_table_names_each_message_and_unreachable_services(
    runner: CliRunner, fake_api: FakeApi, data_dir: Path
) -> None:
    fake_api.on("GET", "/api/v1/admin/quarantine", (200, QUARANTINE))
    r = run(runner, fake_api, data_dir, "events", "quarantine", "--limit", "20")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["SERVICE", "SEQ", "SUBJECT", "KIND", "STORED", "ERROR"]
    assert lines[1].split()[:4] == ["scheduler", "7", "capstan.evt.rsg.x", "undecodable"]
    assert "resources: Input should be a valid dictionary" in lines[2]
    assert lines[3] == "set aside in all: scheduler 1, trainer 1"
    assert "warning: registry could not be asked: the registry service is not reachable" in r.stderr
    assert fake_api.requests[0].query == {"limit": "20"}


def test_events_quarantine_json_and_counters(runner: CliRunner, fake_api: FakeApi, data_dir: Path) -> None:
    fake_api.on("GET", "/api/v1/admin/quarantine", (200, QUARANTINE))
    r = run(runner, fake_api, data_dir, "--json", "events", "quarantine")
    assert json.loads(r.stdout) == QUARANTINE
    r = run(runner, fake_api, data_dir, "events", "counters")
    assert r.stdout.splitlines()[1].split() == ["scheduler", "quarantined_commits", "projection=scheduler,kind=undecodable", "1"]


def test_submit_from_file_sends_batches_with_keys_and_prints_every_id(
    runner: CliRunner, fake_api: FakeApi, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from capstan_cli import sweep

    monkeypatch.setattr(sweep, "CHUNK", 2)
    seen: list[str] = []

    def batch(req: Request) -> tuple[int, Any]:
        seen.append(req.headers["idempotency-key"])
        if len(seen) == 2:  # the second batch fails once: it is resent as it was
            return 503, {"error": {"code": "unavailable", "message": "the trainer service is unavailable"}}
        return 201, {"items": [{**_task("Queued"), "id": f"train-{it['name']}"} for it in req.body["items"]]}

    fake_api.on("POST", "/api/v1/training-tasks/batch", batch)
    sweep_file = tmp_path / "sweep.jsonl"
    lines = [json.dumps({"name": f"t{i}", "command": "python train.py", "hyperparameters": {"lr": i}}) for i in range(5)]
    sweep_file.write_text("# lr sweep\n" + "\n".join(lines[:3]) + "\n\n" + "\n".join(lines[3:]) + "\n")
    result = run(runner, fake_api, data_dir, "task", "submit", "--from-file", str(sweep_file))
    assert result.exit_code == 0, result.output
    assert result.stdout.split() == [f"train-t{i}" for i in range(5)]
    bodies = [r.body for r in fake_api.requests]
    assert [len(b["items"]) for b in bodies] == [2, 2, 2, 1]  # 2, 2 (refused), the same 2 again, 1
    assert bodies[0]["items"][1] == {"name": "t1", "command": "python train.py", "hyperparameters": {"lr": 1},
                                     "resource_group_id": "rsg-default"}
    assert seen[1] == seen[2] and len(set(seen)) == 3  # a resent batch keeps its key


def test_submit_from_file_names_the_bad_line_and_sends_nothing(
    runner: CliRunner, fake_api: FakeApi, data_dir: Path, tmp_path: Path
) -> None:
    sweep_file = tmp_path / "sweep.jsonl"
    sweep_file.write_text('{"name": "ok", "command": "true"}\n{"name": \n')
    result = run(runner, fake_api, data_dir, "task", "submit", "--from-file", str(sweep_file))
    assert result.exit_code == 2 and "line 2: not JSON" in result.output
    result = run(runner, fake_api, data_dir, "task", "submit", "--from-file", str(sweep_file), "--name", "x")
    assert result.exit_code == 2 and "--from-file takes every task's fields" in result.output
    assert fake_api.requests == []


def test_rg_queue_shows_other_tenants_work_anonymously(runner: CliRunner, fake_api: FakeApi, data_dir: Path) -> None:
    res = {"cpu": 4.0, "memory_gib": 1.0, "gpu_type": "", "gpu": 0.0}
    view = {"resource_group_id": "rsg-1", "queue_mode": 0, "lanes": [], "items": [
        {"workload_id": "", "kind": "", "priority": "P4", "position": 1, "card_type": "", "reason": "another tenant's work",
         "submitted_at": None, "resources": res, "instance_count": 1, "other_tenant": True},
        {"workload_id": "train-mine", "kind": "training", "priority": "P4", "position": 2, "card_type": "",
         "reason": "blocked by strict FIFO behind another tenant's work", "submitted_at": None, "resources": res,
         "instance_count": 1, "other_tenant": False}],
        "nodes": [{"node_id": "node-1", "name": "n1", "state": "Running", "cpu": 4.0, "cpu_free": 0.0, "memory_gib": 8.0,
                   "memory_gib_free": 7.0, "gpus": {}, "gpus_free": {}, "workloads": [], "other_tenant_workloads": 2}]}
    fake_api.on("GET", "/api/v1/resource-groups/rsg-1/queue", (200, view))
    result = run(runner, fake_api, data_dir, "rg", "queue", "rsg-1")
    assert result.exit_code == 0, result.output
    assert "(another tenant's)" in result.stdout and "train-mine" in result.stdout
    assert "+2 of other tenants" in result.stdout


def test_a_model_name_other_tenants_use_is_made_the_callers_own(fake_api: FakeApi) -> None:
    """Names are unique per tenant (#8): the operator, who sees every tenant, makes its own "x" when only
    other tenants have one; any other refusal is shown."""
    from capstan_cli.client import ApiClient, ApiError
    from capstan_cli.commands.models import ensure_model

    ambiguous = {"error": {"code": "invalid_argument",
                           "message": "model_id: several tenants have a model named 'x' (model-a, model-b); name it by its id"}}
    fake_api.on("GET", "/api/v1/models/x", (400, ambiguous))
    fake_api.on("POST", "/api/v1/models", lambda r: (201, {"id": "model-mine", **r.body}))
    with ApiClient(fake_api.url) as client:
        assert ensure_model(client, "x")["id"] == "model-mine"
        fake_api.on("GET", "/api/v1/models/y", (400, {"error": {"code": "invalid_argument", "message": "bad name"}}))
        with pytest.raises(ApiError):
            ensure_model(client, "y")
