"""Commands that run the platform on this machine: up, down, ps, restart-component, agent start/stop."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import click

from capstan_core.capacity import parse_gpus

from .. import agents, lifecycle, procs
from ..common import common_options, config, number, say_for
from ..health import probe
from ..output import fields, print_json, table
from ..platform import Paths, Ports, components, read_text


def _data_dir_hint(paths: Paths) -> str:
    default = Paths.of(os.environ.get("CAPSTAN_DATA_DIR") or ".capstan")
    return "" if default.root == paths.root else f" --data-dir {paths.root}"


@click.command()
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True, help="REST API port.")
@click.option("--host", default="127.0.0.1", show_default=True, help="REST API listen address.")
@common_options
def up(port: int, host: str) -> None:
    """Start the platform (nats-server, services, gateway, one trainer and one inference agent) in the background."""
    cfg = config()
    paths = cfg.paths
    paths.make()
    with procs.exclusive(paths, say_for(cfg)):
        summary = lifecycle.up(str(paths.root), port, host, say_for(cfg))
    if cfg.json_output:
        print_json(summary)
        return
    hint = _data_dir_hint(paths)
    state = "already up" if summary["already_up"] else "up"
    click.echo(f"Capstan is {state} in {paths.root}")
    click.echo(
        fields(
            [
                ("  API", summary["api_url"]),
                (
                    "  Admin token",
                    f"{summary['admin_token_file']}  (capstan reads it from there; other clients: "
                    f"export CAPSTAN_TOKEN=$(cat {summary['admin_token_file']}))",
                ),
                ("  Resource group", f"{summary['default_resource_group']} (default)"),
                ("  Logs", summary["logs"]),
            ]
        )
    )
    click.echo(f"Next: capstan task submit{hint} --name hello --command 'echo hello from $(pwd)' --wait")
    click.echo(f"Stop: capstan down{hint}")


@click.command()
@common_options
def down() -> None:
    """Stop everything `capstan up` started in the data dir (agents, instance runners, gateway, services, nats)."""
    cfg = config()
    with procs.exclusive(cfg.paths, say_for(cfg)):
        stopped = lifecycle.down(str(cfg.paths.root), say_for(cfg))
    if cfg.json_output:
        print_json({"stopped": stopped})


@click.command("restart-component")
@click.argument("name")
@common_options
def restart_component(name: str) -> None:
    """(Operators, tests) Restart one component, e.g. scheduler, with its saved ports and environment.

    NAME is one of nats, scheduler, trainer, registry, inference, gateway, trainer-agent,
    inference-agent, or agent-<name> for an agent added with `capstan agent start`.
    """
    cfg = config()
    with procs.exclusive(cfg.paths, say_for(cfg)):
        pid = lifecycle.restart_component(str(cfg.paths.root), name, say_for(cfg))
    if cfg.json_output:
        print_json({"name": name, "pid": pid})


@click.command()
@common_options
def ps() -> None:
    """Show the platform's processes in the data dir: pid, running, healthy."""
    cfg = config()
    paths = cfg.paths
    ports = Ports.load(paths)
    if ports is None:
        raise click.ClickException(f"no platform was started in {paths.root}")
    table_ = components(paths, ports, read_text(paths.default_rg))

    async def check() -> list[dict[str, Any]]:
        out = []
        for name, comp in table_.items():
            pid = procs.running_pid(paths, comp)
            healthy = pid is not None and await probe(comp)
            out.append({"name": name, "pid": pid, "running": pid is not None, "healthy": healthy})
        return out

    rows = asyncio.run(check())
    if cfg.json_output:
        print_json(rows)
    else:
        click.echo(
            table(
                ["NAME", "PID", "RUNNING", "HEALTHY"], [[r["name"], r["pid"], r["running"], r["healthy"]] for r in rows]
            )
        )


@click.group()
def agent() -> None:
    """Agents on this machine beyond the two that `capstan up` starts."""


@agent.command("start")
@click.option("--resource-group", "resource_group", metavar="ID", help="Join this group [default: the default group].")
@click.option("--name", required=True, help="Node name (also names its directory DATA_DIR/agents/NAME).")
@click.option("--cpu", type=click.FloatRange(min=0, min_open=True), help="CPUs the node offers.")
@click.option("--memory", type=click.FloatRange(min=0, min_open=True), help="Memory (GiB) the node offers.")
@click.option(
    "--gpus", metavar="TYPE:COUNT", help="GPUs the node offers, e.g. A100:8 (simulated where there are none)."
)
@click.option("--kind", type=click.Choice(["trainer", "inference"]), default="trainer", show_default=True,
              help="What the node runs: training tasks, or online-service replicas.")
@common_options
def agent_start(
    resource_group: str | None, name: str, cpu: float | None, memory: float | None, gpus: str | None, kind: str
) -> None:
    """Start one more agent, detached; `capstan down` stops it and `capstan up` starts it again."""
    if gpus is not None:
        try:
            parse_gpus(gpus)  # the agent's own parser: refuse here what it would refuse at start
        except ValueError as e:
            raise click.BadParameter(f"{e} (TYPE:COUNT[,TYPE:COUNT])", param_hint="--gpus") from e
    cfg = config()
    with procs.exclusive(cfg.paths, say_for(cfg)):
        result = agents.agent_start(
            str(cfg.paths.root),
            name,
            resource_group,
            number(cpu) if cpu is not None else None,
            number(memory) if memory is not None else None,
            gpus,
            say_for(cfg),
            kind,
        )
    if cfg.json_output:
        print_json(result)
    else:
        click.echo(f"{kind} agent {name} joined {result['resource_group']} as node {result['node_id']} "
                   f"(pid {result['pid']})")


@agent.command("stop")
@click.argument("name")
@common_options
def agent_stop(name: str) -> None:
    """Stop an agent started with `capstan agent start` and forget it."""
    cfg = config()
    with procs.exclusive(cfg.paths, say_for(cfg)):
        agents.agent_stop(str(cfg.paths.root), name, say_for(cfg))
