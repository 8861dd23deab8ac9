"""Training-task operations beyond submit/list/status/stop/logs (SPEC §3.3): outputs (list and download),
copy, start again, delete, tags, and the form's price."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import click

from ..common import common_options, config, number, parse_tags
from ..output import print_json, table, when
from .tasks import task


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:g} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


@task.command("outputs")
@click.argument("task_id")
@click.option("--instance", type=click.IntRange(min=0), help="Only this instance's outputs.")
@click.option("--download", "download_dir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Download every file into DIR/<instance>/output|model/...")
@common_options
def outputs(task_id: str, instance: int | None, download_dir: Path | None) -> None:
    """List what a task left in /opt/ml/output and /opt/ml/model; download it with --download DIR."""
    cfg = config()
    with cfg.client() as client:
        files = (client.get(f"/training-tasks/{task_id}/outputs", instance=instance) or {}).get("files") or []
        if download_dir is None:
            if cfg.json_output:
                print_json(files)
                return
            rows = [[str(f["instance"]), f["path"] + ("/" if f["kind"] == "dir" else ""),
                     _size(int(f["size"])) if f["kind"] == "file" else "", when(f.get("modified_at"))] for f in files]
            click.echo(table(["INSTANCE", "PATH", "SIZE", "MODIFIED"], rows) if rows else "no outputs yet")
            return
        wanted = [f for f in files if f["kind"] == "file"]
        total = 0
        for n, f in enumerate(wanted, 1):
            rel = PurePosixPath(f["path"])
            if rel.is_absolute() or ".." in rel.parts:  # the API never sends one; never write outside DIR
                raise click.ClickException(f"refusing the path {f['path']!r}")
            dest = download_dir / str(f["instance"]) / Path(*rel.parts)
            dest.parent.mkdir(parents=True, exist_ok=True)
            total += client.download(f"/training-tasks/{task_id}/outputs/{f['path']}", dest, instance=f["instance"])
            click.echo(f"[{n}/{len(wanted)}] {dest}", err=True)
    click.echo(f"downloaded {len(wanted)} file(s), {_size(total)}, into {download_dir}")


@task.command("copy")
@click.argument("task_id")
@click.option("--name", help="The copy's name [default: the task's].")
@click.option("--submit", "do_submit", is_flag=True, help="Submit the copy (else print its form as JSON).")
@common_options
def copy(task_id: str, name: str | None, do_submit: bool) -> None:
    """A new task's form pre-filled from TASK_ID: printed (edit and submit it), or submitted."""
    cfg = config()
    with cfg.client() as client:
        form = client.get(f"/training-tasks/{task_id}/copy")
        if name:
            form["name"] = name
        if not do_submit:
            print_json(form)
            return
        created = client.post("/training-tasks", form)
    print_json(created) if cfg.json_output else click.echo(created["id"])


@task.command("start")
@click.argument("task_id")
@common_options
def start(task_id: str) -> None:
    """Start a stopped (finished) task again: a new task with its settings, from the outputs it left."""
    cfg = config()
    with cfg.client() as client:
        created = client.post(f"/training-tasks/{task_id}/start")
    print_json(created) if cfg.json_output else click.echo(created["id"])


@task.command("delete")
@click.argument("task_id")
@common_options
def delete(task_id: str) -> None:
    """Delete a finished task."""
    with config().client() as client:
        client.delete(f"/training-tasks/{task_id}")
    click.echo(f"deleted {task_id}")


@task.command("tag")
@click.argument("task_id")
@click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE", help="A tag (repeatable): the task's new tags.")
@common_options
def tag(task_id: str, tags: tuple[str, ...]) -> None:
    """Replace a task's tags."""
    cfg = config()
    with cfg.client() as client:
        t = client.patch(f"/training-tasks/{task_id}", {"tags": parse_tags(tags)})
    print_json(t) if cfg.json_output else click.echo(" ".join(f"{k}={v}" for k, v in t["tags"].items()) or "no tags")


@task.command("price")
@click.option("--cpu", type=click.FloatRange(min=0, min_open=True), default=1, show_default=True)
@click.option("--memory", type=click.FloatRange(min=0, min_open=True), default=1, show_default=True)
@click.option("--gpu-type", metavar="T")
@click.option("--gpu", type=click.FloatRange(min=0), default=0)
@click.option("--nodes", type=click.IntRange(min=1, max=64), default=1, show_default=True)
@common_options
def price(cpu: float, memory: float, gpu_type: str | None, gpu: float, nodes: int) -> None:
    """The estimated price per hour of a request (the operator's price table)."""
    cfg = config()
    resources: dict[str, Any] = {"cpu": number(cpu), "memory_gib": number(memory), "gpu": number(gpu)}
    if gpu_type:
        resources["gpu_type"] = gpu_type
    with cfg.client() as client:
        p = client.post("/training-tasks/price", {"resources": resources, "instance_count": nodes})
    if cfg.json_output:
        print_json(p)
        return
    click.echo(f"{p['per_hour']:g} {p['currency']}/hour".strip() + (f" ({p['note']})" if p.get("note") else ""))


@task.command("events")
@click.argument("task_id")
@common_options
def events(task_id: str) -> None:
    """A task's lifecycle events (submitted, started, evicted, restarted, ended)."""
    cfg = config()
    with cfg.client() as client:
        items = (client.get(f"/training-tasks/{task_id}/events") or {}).get("items") or []
    if cfg.json_output:
        print_json(items)
        return
    click.echo(table(["TIME", "LEVEL", "EVENT", "MESSAGE"],
                     [[when(e["time"]), e["level"], e["type"], e["message"]] for e in items]))


@task.command("metrics")
@click.argument("task_id")
@click.option("--instance", type=click.IntRange(min=0), help="Only this instance.")
@common_options
def metrics(task_id: str, instance: int | None) -> None:
    """CPU and memory (and GPU) samples of a task's instances over time."""
    cfg = config()
    with cfg.client() as client:
        samples = (client.get(f"/training-tasks/{task_id}/metrics", instance=instance) or {}).get("samples") or []
    if cfg.json_output:
        print_json(samples)
        return
    rows = [[when(s["time"]), str(s["instance"]), f"{s['cpu_cores']:g}" if s["cpu_cores"] is not None else "-",
             _size(int(s["memory_bytes"] or 0)), " ".join(f"gpu{g['index']}={g['gpu_percent']:g}%" for g in s["gpus"])]
            for s in samples]
    click.echo(table(["TIME", "INSTANCE", "CPU", "MEMORY", "GPUS"], rows) if rows else "no samples yet")


@task.command("tensorboard")
@click.argument("task_id")
@common_options
def tensorboard(task_id: str) -> None:
    """Start the task's TensorBoard (on what it wrote to /opt/ml/summary); prints its address."""
    cfg = config()
    with cfg.client() as client:
        tb = client.post(f"/training-tasks/{task_id}/tensorboard")
        base = client.base_url
    print_json(tb) if cfg.json_output else click.echo(
        f"{base}{tb['url']}" + ("" if tb["ready"] else "  (starting: ready in a few seconds)")
        + "\n(send the same Authorization: Bearer token)")
