"""Resource groups and their nodes."""

from __future__ import annotations

import json
from typing import Any

import click

from ..common import common_options, config, json_object, parse_tags
from ..output import cell, fields, print_json, since, table, when


@click.group("rg")
def rg() -> None:
    """Resource groups: the pools of nodes tasks run on."""


@rg.command("create")
@click.argument("name")
@click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE", help="A tag (repeatable).")
@click.option("--policy", metavar="JSON", help='Scheduling policy, e.g. \'{"Version": "1.0", "ResourceRule": {...}}\'.')
@common_options
def rg_create(name: str, tags: tuple[str, ...], policy: str | None) -> None:
    """Create a resource group; prints its id."""
    body: dict[str, Any] = {"name": name, "tags": parse_tags(tags)}
    if policy is not None:
        body["policy"] = json_object(policy, "--policy")
    cfg = config()
    with cfg.client() as client:
        group = client.post("/resource-groups", body)
    if cfg.json_output:
        print_json(group)
    else:
        click.echo(group["id"])


@rg.command("list")
@common_options
def rg_list() -> None:
    """List resource groups."""
    cfg = config()
    with cfg.client() as client:
        groups = list(client.paginate("/resource-groups"))
    if cfg.json_output:
        print_json(groups)
        return
    click.echo(
        table(
            ["ID", "NAME", "NODES", "TAGS", "CREATOR", "CREATED"],
            [
                [
                    g.get("id"),
                    g.get("name"),
                    g.get("node_count"),
                    g.get("tags"),
                    g.get("creator"),
                    when(g.get("created_at")),
                ]
                for g in groups
            ],
        )
    )


@rg.command("get")
@click.argument("group_id", metavar="ID")
@common_options
def rg_get(group_id: str) -> None:
    """Show one resource group."""
    cfg = config()
    with cfg.client() as client:
        g = client.get(f"/resource-groups/{group_id}")
    if cfg.json_output:
        print_json(g)
        return
    click.echo(
        fields(
            [
                ("id", g.get("id")),
                ("name", g.get("name")),
                ("nodes", g.get("node_count")),
                ("tags", g.get("tags") or "-"),
                ("creator", g.get("creator")),
                ("created", when(g.get("created_at"))),
                ("policy", json.dumps(g["policy"], indent=2) if g.get("policy") else "-"),
            ]
        )
    )


def _used(used: Any, total: Any) -> str:
    return f"{cell(used or 0)}/{cell(total or 0)}"


def _gpus(total: Any, used: Any) -> str | None:
    """``A100 2/8`` per card type: allocated / offered."""
    if not isinstance(total, dict) or not total:
        return None
    used = used if isinstance(used, dict) else {}
    return ",".join(f"{kind} {_used(used.get(kind), count)}" for kind, count in sorted(total.items()))


@click.command()
@click.option("--resource-group", "resource_group", metavar="ID", help="Only this group's nodes.")
@common_options
def nodes(resource_group: str | None) -> None:
    """List nodes (machines whose agents joined a resource group)."""
    cfg = config()
    with cfg.client() as client:
        items = list(client.paginate("/nodes", resource_group_id=resource_group))
    if cfg.json_output:
        print_json(items)
        return
    rows = [
        [
            n.get("id"),
            n.get("name"),
            n.get("resource_group_id"),
            n.get("agent_kind"),
            n.get("state"),
            _used((n.get("allocated") or {}).get("cpu"), n.get("cpu")),
            _used((n.get("allocated") or {}).get("memory_gib"), n.get("memory_gib")),
            _gpus(n.get("gpus"), (n.get("allocated") or {}).get("gpus")),
            f"{since(n['last_heartbeat_at'])} ago" if n.get("last_heartbeat_at") else None,
        ]
        for n in items
    ]
    # Resources read allocated/offered.
    headers = ["ID", "NAME", "GROUP", "KIND", "STATE", "CPU", "MEMORY_GIB", "GPUS", "HEARTBEAT"]
    click.echo(table(headers, rows))
