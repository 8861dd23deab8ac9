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


@rg.command("update")
@click.argument("group_id", metavar="ID")
@click.option("--name", help="New name.")
@click.option("--description", help="New description (up to 500 characters).")
@click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE", help="Replace the tags with these (repeatable).")
@click.option("--clear-tags", is_flag=True, help="Remove every tag.")
@click.option("--policy", metavar="JSON", help="New scheduling policy.")
@click.option("--default-policy", is_flag=True, help="Reset the scheduling policy to the default.")
@common_options
def rg_update(
    group_id: str, name: str | None, description: str | None, tags: tuple[str, ...], clear_tags: bool,
    policy: str | None, default_policy: bool,
) -> None:
    """Edit a resource group; options left out stay as they are."""
    body: dict[str, Any] = {}
    if name is not None:
        body["name"] = name
    if description is not None:
        body["description"] = description
    if tags or clear_tags:
        body["tags"] = parse_tags(tags)
    if policy is not None and default_policy:
        raise click.UsageError("give --policy or --default-policy, not both")
    if policy is not None:
        body["policy"] = json_object(policy, "--policy")
    elif default_policy:
        body["policy"] = None
    if not body:
        raise click.UsageError("nothing to change: give --name, --description, --tag/--clear-tags or a policy option")
    cfg = config()
    with cfg.client() as client:
        group = client.request("PATCH", f"/resource-groups/{group_id}", body=body)
    if cfg.json_output:
        print_json(group)
    else:
        click.echo(f"{group['id']} updated")


@rg.command("delete")
@click.argument("group_id", metavar="ID")
@common_options
def rg_delete(group_id: str) -> None:
    """Delete a resource group (refused while any of its nodes is in use: release them first)."""
    cfg = config()
    with cfg.client() as client:
        client.request("DELETE", f"/resource-groups/{group_id}")
    click.echo(f"{group_id} deleted")


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


@click.group("nodes", invoke_without_command=True)
@click.option("--resource-group", "resource_group", metavar="ID", help="Only this group's nodes.")
@click.option("--history", is_flag=True, help="The node history: nodes that failed to deploy or are no longer used.")
@common_options
@click.pass_context
def nodes(ctx: click.Context, resource_group: str | None, history: bool) -> None:
    """List nodes (machines whose agents joined a resource group); `nodes release` releases them,
    `nodes health` shows health-check records, `nodes remove` moves a Released node to the history."""
    if ctx.invoked_subcommand is not None:
        return
    cfg = config()
    with cfg.client() as client:
        items = list(client.paginate("/nodes", resource_group_id=resource_group, view="history" if history else "active"))
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
    if history or any(n.get("state") in ("Abnormal", "DeployFailed") for n in items):
        headers.append("REASON")
        for row, n in zip(rows, items, strict=True):
            row.append(n.get("state_reason") or None)
    click.echo(table(headers, rows))


@nodes.command("health")
@click.option("--resource-group", "resource_group", metavar="ID", help="Only this group's nodes.")
@click.option("--node", "node_id", metavar="ID", help="Only this node.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10000), help="Newest records to show.")
@common_options
def nodes_health(resource_group: str | None, node_id: str | None, limit: int) -> None:
    """Health-check records, newest first: the deploy checks of each join and periodic checks when their outcome changed."""
    cfg = config()
    with cfg.client() as client:
        records = []
        for r in client.paginate("/nodes/health-checks", resource_group_id=resource_group, node_id=node_id):
            records.append(r)
            if len(records) >= limit:
                break
    if cfg.json_output:
        print_json(records)
        return
    rows = [
        [
            r["at"], r["node_id"], r["trigger"], "ok" if r["ok"] else "FAILED",
            "; ".join(f"{c['name']} {'ok' if c['ok'] else 'FAILED'}" + (f" ({c['detail']})" if c["detail"] else "")
                      for c in r["checks"]),
        ]
        for r in records
    ]
    click.echo(table(["AT", "NODE", "TRIGGER", "RESULT", "CHECKS"], rows))


@nodes.command("remove")
@click.argument("node_ids", nargs=-1, required=True, metavar="ID...")
@common_options
def nodes_remove(node_ids: tuple[str, ...]) -> None:
    """Move Released nodes from the node list to the group's history (state Unused)."""
    cfg = config()
    with cfg.client() as client:
        removed = [client.request("DELETE", f"/nodes/{n}") for n in node_ids]
    _print_states(cfg.json_output, removed)


def _print_states(json_output: bool, items: list[dict[str, Any]]) -> None:
    """Nodes a command changed: as JSON, or one "id  state" line each."""
    if json_output:
        print_json(items)
        return
    for n in items:
        click.echo(f"{n['id']}  {n['state']}")


@nodes.command("release")
@click.argument("node_ids", nargs=-1, required=True, metavar="ID...")
@common_options
def nodes_release(node_ids: tuple[str, ...]) -> None:
    """Release nodes: they take no new work and become Released once what runs there has ended."""
    cfg = config()
    with cfg.client() as client:
        result = client.post("/nodes/release", {"node_ids": list(node_ids)})
    _print_states(cfg.json_output, result["items"])


@rg.command("queue")
@click.argument("group_id", metavar="ID")
@common_options
def rg_queue(group_id: str) -> None:
    """The queue of a group: positions, why each item waits, free cards per type, and the node board."""
    cfg = config()
    with cfg.client() as client:
        view = client.get(f"/resource-groups/{group_id}/queue")
    if cfg.json_output:
        print_json(view)
        return
    modes = {0: "strict FIFO", 1: "backfill within a priority", 2: "backfill across the queue"}
    click.echo(f"queue mode: {modes.get(view['queue_mode'], view['queue_mode'])}")
    if view["lanes"]:
        click.echo("\ncards:")
        click.echo(table(
            ["TYPE", "TOTAL", "WHOLE-MACHINE FREE", "FRAGMENT FREE"],
            [[lane["card_type"], lane["total_cards"], lane["whole_machine_free_cards"], lane["fragment_free_cards"]]
             for lane in view["lanes"]],
        ))
    click.echo("\nqueue:" if view["items"] else "\nqueue: empty")
    if view["items"]:
        click.echo(table(
            ["POS", "ID", "KIND", "PRIORITY", "LANE", "QUEUED", "WHY"],
            [[i["position"] or "next", "(another tenant's)" if i.get("other_tenant") else i["workload_id"], i["kind"],
              i["priority"], i["card_type"] or "cpu",
              since(i["submitted_at"]) if i.get("submitted_at") else None, i["reason"]] for i in view["items"]],
        ))
    click.echo("\nnodes:")
    click.echo(table(
        ["NODE", "NAME", "STATE", "CPU FREE", "MEMORY FREE", "GPUS FREE", "RUNNING"],
        [[n["node_id"], n["name"], n["state"], _used(n["cpu_free"], n["cpu"]),
          _used(n["memory_gib_free"], n["memory_gib"]),
          ",".join(f"{t} {_used(n['gpus_free'].get(t), c)}" for t, c in sorted(n["gpus"].items())) or None,
          ",".join(n["workloads"] + ([f"+{n['other_tenant_workloads']} of other tenants"]
                                     if n.get("other_tenant_workloads") else [])) or None] for n in view["nodes"]],
    ))
