"""`capstan nodes --history`, `nodes health` and `nodes remove` against a scripted stand-in for the REST API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from capstan_cli.main import cli

FakeApi = Any  # conftest's FakeApi (not importable under --import-mode=importlib)


def run(runner: CliRunner, api: FakeApi, data_dir: Path, *args: str) -> Result:
    return runner.invoke(cli, ["--api", api.url, "--data-dir", str(data_dir), *args])


def _node(state: str, reason: str = "") -> dict[str, Any]:
    return {
        "id": "node-1", "resource_group_id": "rsg-1", "name": "box", "state": state, "state_reason": reason,
        "agent_kind": "trainer", "cpu": 8, "memory_gib": 32, "gpus": {},
        "allocated": {"cpu": 0, "memory_gib": 0, "gpus": {}}, "last_heartbeat_at": None,
        "joined_at": "2025-01-01T00:00:00Z", "state_changed_at": None,
    }  # fmt: skip


def test_history_asks_for_the_history_view_and_shows_reasons(runner: CliRunner, fake_api: FakeApi, data_dir: Path) -> None:
    page = {"items": [_node("DeployFailed", "deploy checks failed: disk: full")], "next_page_token": "", "total": 1}
    fake_api.on("GET", "/api/v1/nodes", (200, page))
    result = run(runner, fake_api, data_dir, "nodes", "--history")
    assert result.exit_code == 0, result.output
    assert fake_api.requests[0].query["view"] == "history"
    header, row = result.stdout.splitlines()[:2]
    assert header.split()[-1] == "REASON" and row.endswith("deploy checks failed: disk: full")
    run(runner, fake_api, data_dir, "nodes")
    assert fake_api.requests[1].query["view"] == "active"


def test_health_lists_records_newest_first(runner: CliRunner, fake_api: FakeApi, data_dir: Path) -> None:
    record = {"node_id": "node-1", "resource_group_id": "rsg-1", "ok": False, "trigger": "periodic",
              "checks": [{"name": "disk", "ok": False, "detail": "full"}, {"name": "gpus", "ok": True, "detail": ""}],
              "at": "2025-01-01T00:00:00Z"}
    fake_api.on("GET", "/api/v1/nodes/health-checks", (200, {"items": [record], "next_page_token": "", "total": 1}))
    result = run(runner, fake_api, data_dir, "nodes", "health", "--node", "node-1")
    assert result.exit_code == 0, result.output
    assert fake_api.requests[0].query["node_id"] == "node-1"
    row = result.stdout.splitlines()[1]
    assert "periodic" in row and "FAILED" in row and "disk FAILED (full); gpus ok" in row
    result = run(runner, fake_api, data_dir, "--json", "nodes", "health")
    assert json.loads(result.stdout) == [record]


def test_remove_moves_released_nodes_to_history(runner: CliRunner, fake_api: FakeApi, data_dir: Path) -> None:
    fake_api.on("DELETE", "/api/v1/nodes/node-1", (200, _node("Unused", "record removed by the operator")))
    result = run(runner, fake_api, data_dir, "nodes", "remove", "node-1")
    assert result.exit_code == 0, result.output
    assert result.stdout == "node-1  Unused\n"
    fake_api.on("DELETE", "/api/v1/nodes/node-1",
                (409, {"error": {"code": "failed_precondition", "message": "node node-1 is Running; release it first"}}))
    result = run(runner, fake_api, data_dir, "nodes", "remove", "node-1")
    assert result.exit_code == 1 and "release it first" in result.stderr


def _token(token: str | None = None) -> dict[str, Any]:
    return {"id": "jt-abcdefgh", "resource_group_id": "rsg-1", "description": "rack 4", "created_by": "admin",
            "created_at": "2025-01-01T00:00:00Z", "expires_at": "2025-01-02T00:00:00Z", "revoked": False, "uses": 0,
            "last_used_at": None, "token": token}


def test_join_token_create_prints_the_token_once_and_how_to_use_it(
    runner: CliRunner, fake_api: FakeApi, data_dir: Path
) -> None:
    fake_api.on("POST", "/api/v1/join-tokens", (201, _token("cjt.jt-abcdefgh.s3cretS3cretS3cretS3cret")))
    result = run(runner, fake_api, data_dir, "nodes", "join-token", "create", "--resource-group", "rsg-1",
                 "--ttl", "3600", "--description", "rack 4")
    assert result.exit_code == 0, result.output
    assert result.stdout == "cjt.jt-abcdefgh.s3cretS3cretS3cretS3cret\n"  # alone on stdout: scripts can take it
    assert "CAPSTAN_JOIN_TOKEN" in result.stderr and "ca.crt" in result.stderr
    assert fake_api.requests[0].body == {"resource_group_id": "rsg-1", "ttl_seconds": 3600, "description": "rack 4"}


def test_join_token_list_never_shows_a_secret_and_revoke(runner: CliRunner, fake_api: FakeApi, data_dir: Path) -> None:
    fake_api.on("GET", "/api/v1/join-tokens", (200, {"items": [_token()]}))
    result = run(runner, fake_api, data_dir, "nodes", "join-token", "list")
    assert result.exit_code == 0, result.output
    assert "jt-abcdefgh" in result.stdout and "active" in result.stdout and "cjt." not in result.stdout
    fake_api.on("DELETE", "/api/v1/join-tokens/jt-abcdefgh", (200, {**_token(), "revoked": True}))
    result = run(runner, fake_api, data_dir, "nodes", "join-token", "revoke", "jt-abcdefgh")
    assert result.stdout == "jt-abcdefgh  revoked\n"


def test_secrets_init_makes_every_secret_0600_and_never_overwrites(runner: CliRunner, tmp_path: Path) -> None:
    target = tmp_path / "compose-secrets"
    result = runner.invoke(cli, ["secrets", "init", "--dir", str(target)])
    assert result.exit_code == 0, result.output
    files = {p.name: p for p in target.iterdir()}
    assert {"ca.crt", "ca.key", "scheduler.crt", "gateway.key", "admin.nats", "agent.nats", "nats-auth.conf"} <= set(files)
    assert target.stat().st_mode & 0o777 == 0o700
    assert all(p.stat().st_mode & 0o077 == 0 for p in files.values())
    before = {n: p.read_bytes() for n, p in files.items()}
    assert runner.invoke(cli, ["secrets", "init", "--dir", str(target)]).exit_code == 0
    assert {n: p.read_bytes() for n, p in files.items()} == before
