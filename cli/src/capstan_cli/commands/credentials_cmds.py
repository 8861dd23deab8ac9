"""Credentials: join tokens that let a machine's agent join a resource group, and the platform's
secrets for a compose stack."""

from __future__ import annotations

import os
from pathlib import Path

import click

from capstan_core import credentials, natsauth

from ..common import common_options, config
from ..output import print_json, table, when
from ..platform import Ports
from .groups import nodes


@nodes.group("join-token")
def join_token() -> None:
    """Join tokens: what a machine's agent trades for its node certificate (like `kubeadm join`)."""


@join_token.command("create")
@click.option("--resource-group", "resource_group", metavar="ID", help="The group it joins [default: the default group].")
@click.option("--ttl", "ttl_s", type=click.IntRange(0, 365 * 24 * 3600), default=0,
              help="Seconds it stays valid [default: 24 hours].")
@click.option("--description", default="", help="What it is for (shown in lists).")
@common_options
def join_token_create(resource_group: str | None, ttl_s: int, description: str) -> None:
    """Create a join token; it is printed once, never again: hand it to the machine's operator."""
    cfg = config()
    rg = resource_group or cfg.default_resource_group()
    with cfg.client() as client:
        tok = client.post("/join-tokens", {"resource_group_id": rg, "ttl_seconds": ttl_s, "description": description})
    if cfg.json_output:
        print_json(tok)
        return
    click.echo(tok["token"])
    ports = Ports.load(cfg.paths)
    sched = f"127.0.0.1:{ports.scheduler}" if ports else "SCHEDULER_HOST:PORT"
    boot = f"127.0.0.1:{ports.bootstrap}" if ports else "SCHEDULER_HOST:BOOTSTRAP_PORT"
    click.echo(
        f"\nIt joins {rg} until {tok['expires_at']}. On the machine, with the platform CA's certificate\n"
        f"({cfg.paths.secrets / credentials.CA_CERT}) copied to ./ca.crt:\n"
        f"  CAPSTAN_JOIN_TOKEN=<the token> CAPSTAN_CA_FILE=ca.crt CAPSTAN_SCHEDULER_ADDR={sched} \\\n"
        f"  CAPSTAN_SCHEDULER_BOOTSTRAP_ADDR={boot} CAPSTAN_TRAINER_ADDR=... CAPSTAN_NATS_URL=... capstan-trainer-agent",
        err=True,
    )


@join_token.command("list")
@click.option("--resource-group", "resource_group", metavar="ID", help="Only this group's tokens.")
@common_options
def join_token_list(resource_group: str | None) -> None:
    """List join tokens (their ids and use, never their secrets)."""
    cfg = config()
    with cfg.client() as client:
        items = client.get("/join-tokens", resource_group_id=resource_group or "")["items"]
    if cfg.json_output:
        print_json(items)
        return
    rows = [
        [t["id"], t["resource_group_id"], "revoked" if t["revoked"] else "active", t["uses"], when(t["expires_at"]),
         t["created_by"], t["description"]]
        for t in items
    ]
    click.echo(table(["ID", "GROUP", "STATE", "USES", "EXPIRES", "CREATOR", "DESCRIPTION"], rows))


@join_token.command("revoke")
@click.argument("token_id", metavar="ID")
@common_options
def join_token_revoke(token_id: str) -> None:
    """Revoke a join token: no new machine joins with it (nodes that joined keep their certificates)."""
    cfg = config()
    with cfg.client() as client:
        tok = client.request("DELETE", f"/join-tokens/{token_id}")
    if cfg.json_output:
        print_json(tok)
    else:
        click.echo(f"{tok['id']}  revoked")


@click.group("secrets")
def secrets() -> None:
    """The platform's secrets: its CA, each component's certificate, the NATS users."""


@secrets.command("init")
@click.option("--dir", "directory", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Where to write them (created 0700), e.g. deploy/secrets for docker compose.")
@click.option("--uid", type=click.IntRange(0, 2**31 - 1), default=None,
              help="Give the files to this user (the compose images run as uid 10001): compose mounts them as they are.")
def secrets_init(directory: Path, uid: int | None) -> None:
    """Create whatever of the platform's secrets is missing in DIR (never overwrites one).

    `capstan up` does this by itself under its data dir; the compose stack reads them as secrets.
    """
    credentials.ensure_platform_secrets(directory)
    if uid is not None:
        for p in [directory, *directory.iterdir()]:
            os.chown(p, uid, -1, follow_symlinks=False)
    names = sorted(p.name for p in directory.iterdir() if p.is_file())
    click.echo(f"{len(names)} files in {directory} (mode 0600): {', '.join(names)}")
    click.echo(f"NATS users: {', '.join(natsauth.USERS)}; nats-server reads {credentials.NATS_AUTH}")
