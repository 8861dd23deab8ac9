"""capstan login / whoami / account / key / policy / audit against a scripted stand-in for the REST API."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from capstan_cli.main import cli

FakeApi = Any  # conftest's (not importable under --import-mode=importlib)

ACCOUNT = {"id": "acct-1", "name": "alice", "kind": "sub", "tenant": "acct-0", "enabled": True, "is_operator": False,
           "policies": ["ReadOnlyAccess"], "description": "", "has_password": True, "created_by": "acct-0",
           "created_at": "2026-01-01T00:00:00Z"}


def run(runner: CliRunner, api: FakeApi, data_dir: Path, *args: str, stdin: str | None = None) -> Result:
    return runner.invoke(cli, ["--api", api.url, "--data-dir", str(data_dir), *args], input=stdin)


def test_login_stores_a_private_session_that_every_command_then_uses(
    runner: CliRunner, fake_api: FakeApi, data_dir: Path
) -> None:
    fake_api.on("POST", "/api/v1/login", (200, {"token": "cs.session.sig", "expires_at": "2026-01-01T12:00:00Z",
                                              "account": ACCOUNT}))
    fake_api.on("GET", "/api/v1/whoami", (200, {"account": ACCOUNT, "key_id": "", "source": "session",
                                              "operator_tenant": False}))
    r = run(runner, fake_api, data_dir, "login", "alice", "--password-stdin", stdin="pw from stdin\n")
    assert r.exit_code == 0, r.output
    assert "logged in as alice" in r.output and "pw from stdin" not in r.output
    login = fake_api.requests[-1]
    assert login.body == {"name": "alice", "password": "pw from stdin"} and "authorization" not in login.headers
    session = data_dir / "session"
    assert session.read_text() == "cs.session.sig" and stat.S_IMODE(session.stat().st_mode) == 0o600
    r = run(runner, fake_api, data_dir, "whoami")
    assert r.exit_code == 0 and "alice (acct-1)" in r.output
    assert fake_api.requests[-1].headers["authorization"] == "Bearer cs.session.sig"  # before admin-token
    assert run(runner, fake_api, data_dir, "logout").exit_code == 0 and not session.exists()
    run(runner, fake_api, data_dir, "whoami")
    assert fake_api.requests[-1].headers["authorization"] == "Bearer secret-token"


def test_account_and_key_commands(runner: CliRunner, fake_api: FakeApi, data_dir: Path) -> None:
    fake_api.on("POST", "/api/v1/accounts", lambda req: (201, {**ACCOUNT, "name": req.body["name"]}))
    fake_api.on("PUT", "/api/v1/accounts/acct-1/policies", (200, ACCOUNT))
    fake_api.on("PATCH", "/api/v1/accounts/acct-1", (200, {**ACCOUNT, "enabled": False}))
    key = {"id": "key-1", "account_id": "acct-1", "enabled": True, "expires_at": None, "description": "",
           "created_at": "2026-01-01T00:00:00Z"}
    fake_api.on("POST", "/api/v1/accounts/acct-1/keys", (201, {**key, "token": "ck.key-1.s3cret"}))
    fake_api.on("GET", "/api/v1/accounts/acct-1/keys", (200, [key]))
    r = run(runner, fake_api, data_dir, "account", "create", "bob", "--policy", "ReadOnlyAccess",
            "--password-stdin", stdin="bobs password\n")
    assert r.exit_code == 0, r.output
    assert fake_api.requests[-1].body == {"name": "bob", "kind": "sub", "policies": ["ReadOnlyAccess"],
                                          "description": "", "password": "bobs password"}
    assert run(runner, fake_api, data_dir, "account", "policies", "acct-1", "FullAccess").exit_code == 0
    assert fake_api.requests[-1].body == {"policies": ["FullAccess"]}
    assert run(runner, fake_api, data_dir, "account", "disable", "acct-1").exit_code == 0
    assert fake_api.requests[-1].body == {"enabled": False}
    r = run(runner, fake_api, data_dir, "key", "create", "acct-1", "--expires", "30d")
    assert r.exit_code == 0 and "ck.key-1.s3cret" in r.output and "shown once" in r.output
    assert fake_api.requests[-1].body["expires_at"].startswith("20")
    r = run(runner, fake_api, data_dir, "key", "list", "acct-1")
    assert r.exit_code == 0 and "key-1" in r.output and "s3cret" not in r.output


def test_policy_and_audit_commands(runner: CliRunner, fake_api: FakeApi, data_dir: Path, tmp_path: Path) -> None:
    fake_api.on("POST", "/api/v1/policies", (201, {"id": "pol-1"}))
    fake_api.on("GET", "/api/v1/audit", (200, {"items": [
        {"seq": 1, "at": "2026-01-01T00:00:00Z", "account": "alice", "tenant": "acct-0", "key_id": "key-1",
         "source": "key", "action": "trainer:DeleteTrainingTask", "object": "train:train-1", "allowed": False,
         "detail": "permission_denied"}], "next_after_seq": 0}))
    doc = tmp_path / "p.json"
    statements = [{"effect": "allow", "actions": ["trainer:*"], "tags": {"team": "a"}}]
    doc.write_text(json.dumps(statements))
    r = run(runner, fake_api, data_dir, "policy", "create", "team-a", "--file", str(doc))
    assert r.exit_code == 0 and r.output.strip() == "pol-1"
    assert fake_api.requests[-1].body == {"name": "team-a", "statements": statements, "description": ""}
    r = run(runner, fake_api, data_dir, "audit", "--account", "alice", "--since", "1h")
    assert r.exit_code == 0, r.output
    assert "refused (permission_denied)" in r.output
    q = fake_api.requests[-1].query
    assert q["account"] == "alice" and q["since"].endswith("Z") or "+00:00" in q["since"]


def test_audit_events_reads_the_event_log(runner: CliRunner, fake_api: FakeApi, data_dir: Path) -> None:
    fake_api.on("GET", "/api/v1/audit/events", (200, {"items": [
        {"seq": 7, "subject": "capstan.evt.train.train-1", "at": "2026-01-01T00:00:00Z",
         "by": {"account": "alice", "tenant": "acct-0", "key_id": "key-1", "source": "key", "is_operator": False},
         "event_types": ["TrainingTaskSubmitted"]}], "next_after_seq": 0}))
    r = run(runner, fake_api, data_dir, "audit", "--events", "--object", "train:train-1", "--action",
            "TrainingTaskSubmitted")
    assert r.exit_code == 0, r.output
    assert "train.train-1" in r.output and "alice" in r.output and "TrainingTaskSubmitted" in r.output
    q = fake_api.requests[-1].query
    assert q == {"object": "train:train-1", "event_type": "TrainingTaskSubmitted", "limit": "100"}
