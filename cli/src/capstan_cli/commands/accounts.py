"""Accounts (#8): capstan login / logout / whoami, account, key, policy, audit."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from ..client import ApiClient, ApiError
from ..common import common_options, config
from ..output import fields, print_json, table, time_arg, when


def _password(stdin: bool, prompt: str = "Password", confirm: bool = False) -> str:
    """Read a password without echoing it (or, ``--password-stdin``, the first line of stdin)."""
    if stdin:
        return sys.stdin.readline().rstrip("\n")
    return str(click.prompt(prompt, hide_input=True, confirmation_prompt=confirm))


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


@click.command()
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin instead of a prompt.")
@common_options
def login(name: str, password_stdin: bool) -> None:
    """Log in as account NAME: the session is stored in DATA_DIR/session (0600) and used by every command."""
    cfg = config()
    password = _password(password_stdin)
    with ApiClient(cfg.api_url()) as client:
        s = client.post("/login", {"name": name, "password": password})
    _write_private(cfg.paths.session, s["token"])
    if cfg.json_output:
        print_json({"account": s["account"], "expires_at": s["expires_at"]})
    else:
        click.echo(f"logged in as {s['account']['name']} until {when(s['expires_at'])}")


@click.command()
@common_options
def logout() -> None:
    """Forget the stored session (DATA_DIR/session)."""
    cfg = config()
    cfg.paths.session.unlink(missing_ok=True)
    click.echo("logged out")


@click.command()
@common_options
def whoami() -> None:
    """The account the commands act as."""
    cfg = config()
    with cfg.client() as client:
        me = client.get("/whoami")
    if cfg.json_output:
        print_json(me)
        return
    a = me["account"]
    click.echo(fields([("account", f"{a['name']} ({a['id']})"), ("kind", a["kind"]), ("tenant", a["tenant"]),
                       ("policies", ", ".join(a["policies"]) or None), ("via", me["source"]),
                       ("key", me["key_id"] or None), ("operator", me["operator_tenant"])]))


def _accounts_table(items: list[dict[str, Any]]) -> str:
    rows = [[a["id"], a["name"], a["kind"], a["tenant"], "yes" if a["enabled"] else "no",
             ", ".join(a["policies"]) or None, when(a["created_at"])] for a in items]
    return table(["ID", "NAME", "KIND", "TENANT", "ENABLED", "POLICIES", "CREATED"], rows)


@click.group()
def account() -> None:
    """Accounts: main accounts (tenants, the operator's to make), sub-accounts and collaborators."""


@account.command("create")
@click.argument("name")
@click.option("--kind", type=click.Choice(["sub", "collaborator", "main"]), default="sub", show_default=True)
@click.option("--policy", "policies", multiple=True, help="A preset (FullAccess, ResourceGroupFullAccess, "
              "ReadOnlyAccess) or a custom policy id (repeatable).")
@click.option("--with-password", is_flag=True, help="Set a password (prompted) for capstan login.")
@click.option("--password-stdin", is_flag=True, help="Read that password from stdin.")
@click.option("--description", default="")
@common_options
def account_create(name: str, kind: str, policies: tuple[str, ...], with_password: bool, password_stdin: bool,
                   description: str) -> None:
    """Create an account; prints it."""
    cfg = config()
    body: dict[str, Any] = {"name": name, "kind": kind, "policies": list(policies), "description": description}
    if with_password or password_stdin:
        body["password"] = _password(password_stdin, confirm=not password_stdin)
    with cfg.client() as client:
        a = client.post("/accounts", body)
    print_json(a) if cfg.json_output else click.echo(_accounts_table([a]))


@account.command("list")
@common_options
def account_list() -> None:
    """List the accounts of my tenant (the operator: every tenant's)."""
    cfg = config()
    with cfg.client() as client:
        items = client.get("/accounts")
    print_json(items) if cfg.json_output else click.echo(_accounts_table(items))


def _set_enabled(account_id: str, enabled: bool) -> None:
    cfg = config()
    with cfg.client() as client:
        a = client.patch(f"/accounts/{account_id}", {"enabled": enabled})
    print_json(a) if cfg.json_output else click.echo(f"{a['id']} {'enabled' if enabled else 'disabled'}")


@account.command("disable")
@click.argument("account_id")
@common_options
def account_disable(account_id: str) -> None:
    """Disable an account: its keys and sessions stop working (a main account: its whole tenant)."""
    _set_enabled(account_id, False)


@account.command("enable")
@click.argument("account_id")
@common_options
def account_enable(account_id: str) -> None:
    """Enable an account again."""
    _set_enabled(account_id, True)


@account.command("delete")
@click.argument("account_id")
@common_options
def account_delete(account_id: str) -> None:
    """Delete an account and its keys."""
    with config().client() as client:
        client.delete(f"/accounts/{account_id}")
    click.echo(f"{account_id} deleted")


@account.command("policies")
@click.argument("account_id")
@click.argument("policies", nargs=-1)
@common_options
def account_policies(account_id: str, policies: tuple[str, ...]) -> None:
    """Attach exactly POLICIES (presets or custom policy ids) to a sub-account or collaborator."""
    cfg = config()
    with cfg.client() as client:
        a = client.put(f"/accounts/{account_id}/policies", {"policies": list(policies)})
    print_json(a) if cfg.json_output else click.echo(_accounts_table([a]))


@account.command("password")
@click.argument("account_id")
@click.option("--password-stdin", is_flag=True, help="Read the new password from stdin.")
@common_options
def account_password(account_id: str, password_stdin: bool) -> None:
    """Set an account's password (ends its sessions)."""
    password = _password(password_stdin, "New password", confirm=not password_stdin)
    with config().client() as client:
        client.put(f"/accounts/{account_id}/password", {"password": password})
    click.echo("password set")


@click.group()
def key() -> None:
    """API secret keys: id + secret; the secret is shown once, at creation."""


@key.command("create")
@click.argument("account_id")
@click.option("--description", default="")
@click.option("--expires", default=None, help="When it stops working: ISO-8601, or a duration like 30d, 12h.")
@common_options
def key_create(account_id: str, description: str, expires: str | None) -> None:
    """Create a key; prints its token ONCE (store it now: it is never shown again)."""
    cfg = config()
    body: dict[str, Any] = {"description": description}
    if expires:
        body["expires_at"] = _future(expires)
    with cfg.client() as client:
        k = client.post(f"/accounts/{account_id}/keys", body)
    if cfg.json_output:
        print_json(k)
    else:
        click.echo(f"key {k['id']} (shown once, store it now):")
        click.echo(k["token"])


def _future(text: str) -> str:
    """``30d`` / ``12h`` / ``15m`` from now, or an ISO-8601 time as given."""
    from datetime import UTC, datetime, timedelta

    units = {"d": "days", "h": "hours", "m": "minutes"}
    if text[:-1].isdigit() and text[-1:] in units:
        at = datetime.now(UTC) + timedelta(**{units[text[-1]]: int(text[:-1])})
        return at.isoformat()
    return text


@key.command("list")
@click.argument("account_id")
@common_options
def key_list(account_id: str) -> None:
    """List an account's keys (never their secrets)."""
    cfg = config()
    with cfg.client() as client:
        items = client.get(f"/accounts/{account_id}/keys")
    if cfg.json_output:
        print_json(items)
        return
    rows = [[k["id"], "yes" if k["enabled"] else "no", when(k["expires_at"]) if k["expires_at"] else None,
             k["description"] or None, when(k["created_at"])] for k in items]
    click.echo(table(["ID", "ENABLED", "EXPIRES", "DESCRIPTION", "CREATED"], rows))


@key.command("disable")
@click.argument("key_id")
@common_options
def key_disable(key_id: str) -> None:
    """Disable a key (it can be enabled again)."""
    _set_key_enabled(key_id, False)


@key.command("enable")
@click.argument("key_id")
@common_options
def key_enable(key_id: str) -> None:
    """Enable a key again."""
    _set_key_enabled(key_id, True)


def _set_key_enabled(key_id: str, enabled: bool) -> None:
    with config().client() as client:
        client.patch(f"/keys/{key_id}", {"enabled": enabled})
    click.echo(f"{key_id} {'enabled' if enabled else 'disabled'}")


@key.command("delete")
@click.argument("key_id")
@common_options
def key_delete(key_id: str) -> None:
    """Delete a key (rotate: create a new one first, then delete the old one)."""
    with config().client() as client:
        client.delete(f"/keys/{key_id}")
    click.echo(f"{key_id} deleted")


@click.group()
def policy() -> None:
    """Policies: presets, and custom ones (allow/deny on actions and resources, conditions on tags)."""


@policy.command("list")
@common_options
def policy_list() -> None:
    """The presets and my tenant's custom policies."""
    cfg = config()
    with cfg.client() as client:
        items = client.get("/policies")
    if cfg.json_output:
        print_json(items)
        return
    rows = [[p["id"], p["name"], "preset" if p["preset"] else "custom", len(p["statements"]),
             p["description"] or None] for p in items]
    click.echo(table(["ID", "NAME", "KIND", "STATEMENTS", "DESCRIPTION"], rows))


@policy.command("create")
@click.argument("name")
@click.option("--file", "path", required=True, type=click.Path(exists=True, dir_okay=False),
              help='JSON: a list of statements {"effect": "allow"|"deny", "actions": [...], "resources": [...], '
              '"tags": {...}} (actions: the x-capstan-action names of GET /openapi.json).')
@click.option("--description", default="")
@common_options
def policy_create(name: str, path: str, description: str) -> None:
    """Create a custom policy from a JSON file of statements."""
    cfg = config()
    try:
        statements = json.loads(Path(path).read_text())
    except ValueError as e:
        raise ApiError(f"{path} is not JSON: {e}") from e
    with cfg.client() as client:
        p = client.post("/policies", {"name": name, "statements": statements, "description": description})
    print_json(p) if cfg.json_output else click.echo(p["id"])


@policy.command("delete")
@click.argument("policy_id")
@common_options
def policy_delete(policy_id: str) -> None:
    """Delete a custom policy (detach it first)."""
    with config().client() as client:
        client.delete(f"/policies/{policy_id}")
    click.echo(f"{policy_id} deleted")


@click.command()
@click.option("--account", default="", help="Only this account's (by name).")
@click.option("--action", default="", help="Only this action, e.g. trainer:CreateTrainingTask.")
@click.option("--object", "obj", default="", help="Only this object, e.g. train:train-1a2b3c4d.")
@click.option("--since", default="", help="From this time: ISO-8601, or an age like 1h, 2d.")
@click.option("--until", default="", help="Before this time.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 500))
@click.option("--events", "from_log", is_flag=True, help="Read the event log itself (each commit's actor) instead "
              "of the gateway's request records; --action then filters by event type.")
@common_options
def audit(account: str, action: str, obj: str, since: str, until: str, limit: int, from_log: bool) -> None:
    """Who asked for what, on which object, when, and whether it was allowed (or, --events, who
    changed what in the event log)."""
    cfg = config()
    params = {"account": account or None, "object": obj or None,
              "since": time_arg(since) if since else None, "until": time_arg(until) if until else None,
              "limit": limit}
    with cfg.client() as client:
        if from_log:
            page = client.get("/audit/events", event_type=action or None, **params)
        else:
            page = client.get("/audit", action=action or None, **params)
    if cfg.json_output:
        print_json(page)
        return
    if from_log:
        rows = [[when(c["at"]), c["by"].get("account") or c["by"].get("caller"), c["by"].get("key_id") or None,
                 c["subject"].removeprefix("capstan.evt."), ", ".join(c["event_types"])] for c in page["items"]]
        click.echo(table(["AT", "BY", "KEY", "OBJECT", "EVENTS"], rows))
        return
    rows = [[when(i["at"]), i["account"], i["source"], i["key_id"] or None, i["action"], i["object"],
             "allowed" if i["allowed"] else f"refused ({i['detail']})"] for i in page["items"]]
    click.echo(table(["AT", "ACCOUNT", "VIA", "KEY", "ACTION", "OBJECT", "OUTCOME"], rows))


COMMANDS = (login, logout, whoami, account, key, policy, audit)
