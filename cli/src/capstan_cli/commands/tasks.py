"""Training tasks: submit (and wait), list, status, stop, logs."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from capstan_core.contracts.task_status import FINISHED

from .. import sweep
from ..client import ApiClient, wait_until
from ..common import common_options, config, json_object, number, one_of, parse_tags
from ..logs import stream_logs
from ..output import fields, print_json, since, table, time_arg, when

POLL_S = 1.0
# Keep polling through a gateway or service restart (the durability tests do that).
OUTAGE_S = 120.0


@click.group()
def task() -> None:
    """Training tasks."""


def _resources(r: dict[str, Any] | None, count: Any) -> str:
    if not r:
        return "-"
    parts = [f"cpu={number(r.get('cpu') or 0)}", f"mem={number(r.get('memory_gib') or 0)}G"]
    if r.get("gpu"):
        parts.append(f"gpu={r.get('gpu_type') or 'any'}x{number(r['gpu'])}")
    return " ".join(parts) + (f" x{count}" if count and count != 1 else "")


def restarts_text(t: dict[str, Any]) -> str | None:
    """Restarts so far, and how much of the auto-restart budget they used (None: nothing to say)."""
    budget, used, total = int(t.get("max_restarts") or 0), int(t.get("restarts_used") or 0), int(t.get("restarts") or 0)
    parts = []
    if budget or used:
        parts.append(f"{used} of {budget} automatic restart(s) used")
    if total > used:
        parts.append(f"{total - used} after a lost node")
    return "; ".join(parts) or None


def status_text(t: dict[str, Any]) -> str:
    """The status, with what a person wants to know next to it (SPEC 3.2: Queued shows how long)."""
    status = str(t.get("status") or "?")
    if status == "Queued":
        q = t.get("queue") or {}
        queued = since(q.get("queued_since") or t.get("created_at"))
        extra = [f"queued {queued}"] if queued else []
        if q.get("priority") is not None:
            extra.append(f"P{q['priority']}")
        if q.get("position") is not None:
            extra.append(f"position {q['position']}")
        return f"{status} ({', '.join(extra)})" if extra else status
    if status == "Running" and t.get("started_at"):
        return f"{status} ({since(t['started_at'])})"
    if status in FINISHED:
        bits = []
        if t.get("exit_code") is not None:
            bits.append(f"exit code {t['exit_code']}")
        if t.get("failure_reason"):
            bits.append(str(t["failure_reason"]))
        return f"{status} ({'; '.join(bits)})" if bits else status
    return status


@task.command("submit")
@click.option("--name", help="Task name (required unless --from-file).")
@click.option("--resource-group", "resource_group", metavar="ID", help="[default: the default group of `capstan up`]")
@click.option("--command", "command_text", metavar="CMD", help="Start command (run by /bin/sh in /opt/ml/code).")
@click.option("--command-file", type=click.Path(exists=True, dir_okay=False), help="Read the start command from F.")
@click.option("--hyperparameters", metavar="JSON", help="A JSON object, e.g. '{\"lr\": 0.1}'.")
@click.option("--hyperparameters-file", type=click.Path(exists=True, dir_okay=False), help="Read them from F.")
@click.option("--cpu", type=click.FloatRange(min=0, min_open=True), default=1, show_default=True, help="CPUs per node.")
@click.option(
    "--memory", type=click.FloatRange(min=0, min_open=True), default=1, show_default=True, help="GiB per node."
)
@click.option("--gpu-type", metavar="T", help="GPU type, e.g. A100.")
@click.option("--gpu", type=click.FloatRange(min=0), default=0, help="GPUs per node.")
@click.option("--nodes", type=click.IntRange(min=1), default=1, show_default=True, help="Instance count.")
@click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE", help="A tag (repeatable).")
@click.option(
    "--stop-grace-seconds", type=click.IntRange(min=1), help="SIGTERM-to-SIGKILL grace on stop [API default 30]."
)
@click.option(
    "--network",
    type=click.Choice(["isolated", "none", "host"]),
    help="isolated: its own network (its peers, the outside through NAT) [default]; none: loopback only; "
    "host: the host's network, where the group's policy allows it.",
)
@click.option(
    "--max-restarts",
    type=click.IntRange(min=0, max=10),
    metavar="N",
    help="Auto-restart: run it again up to N times (1..10) when it exits abnormally while running [default: 0, off].",
)
@click.option("--description", help="Up to 500 characters.")
@click.option("--image", metavar="NAME", help="A built-in image's name or sha256:<digest> of an imported one.")
@click.option("--mode", type=click.Choice(["DDP", "MPI", "Horovod", "PS-Worker", "Ray"]), help="Distributed mode.")
@click.option("--role", "roles", multiple=True, metavar="ROLE=N",
              help="Instances per role, in index order (repeatable), e.g. --role ps=1 --role worker=2.")
@click.option("--storage", "storage", multiple=True, metavar="JSON",
              help='A storage row (repeatable): {"kind": "object", "source": "local:bucket/data", '
              '"path": "/opt/ml/input/data/train", "purpose": "training_data"}.')
@click.option("--code", metavar="STORE:BUCKET/PREFIX", help="Code package, downloaded into /opt/ml/code.")
@click.option("--output", metavar="STORE:BUCKET/PREFIX", help="Where /opt/ml/output and /opt/ml/model are uploaded.")
@click.option("--wait", is_flag=True, help="Wait until the task ends; exit 0 only if it Succeeded.")
@click.option(
    "--from-file", "from_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Submit many tasks (a sweep): one JSON object per line, with the API's create fields; prints their ids.",
)
@common_options
def submit(
    name: str | None,
    resource_group: str | None,
    command_text: str | None,
    command_file: str | None,
    hyperparameters: str | None,
    hyperparameters_file: str | None,
    cpu: float,
    memory: float,
    gpu_type: str | None,
    gpu: float,
    nodes: int,
    tags: tuple[str, ...],
    stop_grace_seconds: int | None,
    max_restarts: int | None,
    network: str | None,
    description: str | None,
    image: str | None,
    mode: str | None,
    roles: tuple[str, ...],
    storage: tuple[str, ...],
    code: str | None,
    output: str | None,
    wait: bool,
    from_file: Path | None,
) -> None:
    """Submit a training task; prints its id."""
    if from_file is not None:
        if name or command_text or command_file or hyperparameters or hyperparameters_file or wait:
            raise click.UsageError("--from-file takes every task's fields from the file; drop the other options")
        _submit_file(from_file, resource_group)
        return
    if not name:
        raise click.UsageError("Missing option '--name'.")
    command = one_of(command_text, command_file, "--command", required=True)
    assert command is not None
    if not command.strip():
        raise click.BadParameter("the command is empty", param_hint="--command")
    hp_text = one_of(hyperparameters, hyperparameters_file, "--hyperparameters", required=False)
    if gpu_type and not gpu:
        raise click.UsageError("--gpu-type needs --gpu N")
    cfg = config()
    resources: dict[str, Any] = {"cpu": number(cpu), "memory_gib": number(memory), "gpu": number(gpu)}
    if gpu_type:
        resources["gpu_type"] = gpu_type
    body: dict[str, Any] = {
        "name": name,
        "resource_group_id": resource_group or cfg.default_resource_group(),
        "command": command,
        "hyperparameters": json_object(hp_text, "--hyperparameters") if hp_text is not None else {},
        "resources": resources,
        "instance_count": nodes,
        "tags": parse_tags(tags),
    }
    if stop_grace_seconds is not None:
        body["stop_grace_seconds"] = stop_grace_seconds
    if max_restarts is not None:
        body["max_restarts"] = max_restarts
    if network is not None:
        body["network"] = network
    extra = {"description": description, "image": image, "mode": mode, "code": code, "output": output}
    body |= {k: v for k, v in extra.items() if v is not None}
    if roles:
        body["roles"] = {k: int(v) for k, v in parse_tags(roles).items() if v.isdigit()}
        if len(body["roles"]) != len(roles):
            raise click.BadParameter("each --role is ROLE=N", param_hint="--role")
    if storage:
        body["storage"] = [json_object(s, "--storage") for s in storage]
    with cfg.client() as client:
        created = client.post("/training-tasks", body)
        task_id = str(created["id"])
        if not wait:
            print_json(created) if cfg.json_output else click.echo(task_id)
            return
        if not cfg.json_output:
            click.echo(task_id)
        final = wait_for(client, task_id)
    if cfg.json_output:
        print_json(final)
    sys.exit(0 if final.get("status") == "Succeeded" else 1)


def _submit_file(path: Path, resource_group: str | None) -> None:
    cfg = config()
    tasks = sweep.read_tasks(path, lambda: resource_group or cfg.default_resource_group())
    with cfg.client() as client:
        created = sweep.submit_all(client, tasks, progress=sweep.progress_wanted())
    if cfg.json_output:
        print_json(created)
    else:
        for t in created:
            click.echo(t["id"])


def wait_for(client: ApiClient, task_id: str) -> dict[str, Any]:
    """Poll until the task ends, keeping one status line up to date on stderr."""
    tty = sys.stderr.isatty()
    last = ""
    try:
        while True:
            t = wait_until(lambda: client.get(f"/training-tasks/{task_id}"), OUTAGE_S)
            line = f"{task_id}  {status_text(t)}"
            if tty:
                click.echo("\r\033[K" + line, nl=False, err=True)
            elif str(t.get("status")) != last:
                click.echo(line, err=True)
            last = str(t.get("status"))
            if last in FINISHED:
                if tty:
                    click.echo("", err=True)
                return dict(t)
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        click.echo(f"\nstopped waiting; the task goes on (stop it with: capstan task stop {task_id})", err=True)
        sys.exit(130)


@task.command("list")
@click.option("--only-mine", is_flag=True, help="Only tasks I created.")
@click.option("--status", metavar="STATUS", help="Only tasks in this status, e.g. Running.")
@click.option("--resource-group", "resource_group", metavar="ID", help="Only tasks of this group.")
@common_options
def task_list(only_mine: bool, status: str | None, resource_group: str | None) -> None:
    """List training tasks."""
    cfg = config()
    params: dict[str, Any] = {"status": status, "resource_group_id": resource_group}
    if only_mine:
        params["only_mine"] = True
    with cfg.client() as client:
        items = list(client.paginate("/training-tasks", **params))
    if cfg.json_output:
        print_json(items)
        return
    rows = [
        [
            t.get("id"),
            t.get("name"),
            status_text(t),
            _resources(t.get("resources"), t.get("instance_count")),
            t.get("tags") or None,
            when(t.get("created_at")),
            when(t.get("started_at")),
            since(t["started_at"], t.get("ended_at")) if t.get("started_at") else None,
        ]
        for t in items
    ]
    click.echo(table(["ID", "NAME", "STATUS", "RESOURCES", "TAGS", "CREATED", "STARTED", "RUN TIME"], rows))


@task.command("status")
@click.argument("task_id", metavar="ID")
@common_options
def task_status(task_id: str) -> None:
    """Show a task: status, exit code, instances, times."""
    cfg = config()
    with cfg.client() as client:
        t = client.get(f"/training-tasks/{task_id}")
    if cfg.json_output:
        print_json(t)
        return
    click.echo(
        fields(
            [
                ("id", t.get("id")),
                ("name", t.get("name")),
                ("status", status_text(t)),
                ("exit code", t.get("exit_code")),
                ("failure", t.get("failure_reason")),
                ("attempt", t.get("attempt") or None),
                ("restarts", restarts_text(t)),
                ("preemptions", t.get("preemptions") or None),
                ("resource group", t.get("resource_group_id")),
                ("resources", _resources(t.get("resources"), t.get("instance_count"))),
                ("tags", t.get("tags") or None),
                ("creator", t.get("creator")),
                ("created", when(t.get("created_at"))),
                ("started", when(t.get("started_at"))),
                ("ended", when(t.get("ended_at"))),
                ("run time", since(t["started_at"], t.get("ended_at")) if t.get("started_at") else None),
            ]
        )
    )
    instances = t.get("instances") or []
    if instances:
        click.echo("instances:")
        rows = [[i.get("index"), i.get("node_id"), i.get("status"), i.get("exit_code")] for i in instances]
        click.echo("  " + table(["INDEX", "NODE", "STATUS", "EXIT CODE"], rows).replace("\n", "\n  "))


@task.command("stop")
@click.argument("task_id", metavar="ID")
@common_options
def task_stop(task_id: str) -> None:
    """Stop a queued or running task."""
    cfg = config()
    with cfg.client() as client:
        t = client.post(f"/training-tasks/{task_id}/stop")
        if not t:
            t = client.get(f"/training-tasks/{task_id}")
    if cfg.json_output:
        print_json(t)
    else:
        click.echo(f"{task_id}  {status_text(t)}")


@task.command("logs")
@click.argument("task_id", metavar="ID")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines until the task has ended.")
@click.option("--keyword", metavar="K", help="Only lines containing K.")
@click.option("--since", "since_", metavar="T", help="From T: an age (10m, 2h, 1d) or a time (2025-01-31T12:00:00Z).")
@click.option("--until", metavar="T", help="Up to T (same forms as --since).")
@click.option("--instance", type=click.IntRange(min=0), metavar="I", help="Only instance I.")
@click.option("--source", type=click.Choice(["platform", "code"]),
              help="platform: the platform's lines (inputs, containment, exit); code: stdout and stderr [both].")
@common_options
def task_logs(
    task_id: str, follow: bool, keyword: str | None, since_: str | None, until: str | None, instance: int | None,
    source: str | None,
) -> None:
    """Print a task's logs (one JSON object per line with --json)."""
    cfg = config()
    params: dict[str, Any] = {
        "keyword": keyword,
        "start": time_arg(since_) if since_ else None,
        "end": time_arg(until) if until else None,
        "instance": instance,
        "source": source,
    }
    with cfg.client() as client:
        t = client.get(f"/training-tasks/{task_id}")
        prefix = instance is None and int(t.get("instance_count") or len(t.get("instances") or []) or 1) > 1
        stream_logs(client, task_id, params, follow, prefix, cfg.json_output, ended=str(t.get("status")) in FINISHED)
