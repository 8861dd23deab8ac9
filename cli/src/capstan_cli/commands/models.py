"""The model registry: models, versions published from finished tasks, downloads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click

from ..client import ApiClient, ApiError
from ..common import common_options, config, parse_tags
from ..output import fields, print_json, table, when


@click.group()
def model() -> None:
    """Model registry: models and their versions (files, metadata, lineage)."""


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def ensure_model(client: ApiClient, name: str, description: str = "") -> dict[str, Any]:
    """The model named ``name`` of the caller's tenant (names are unique per tenant), created when it does
    not exist yet. (The operator, who sees every tenant, is told when several others have the name and
    it has none: then it makes its own.)"""
    try:
        return dict(client.get(f"/models/{quote(name, safe='')}"))
    except ApiError as e:
        if e.status != 404 and not (e.status == 400 and "several tenants have a model named" in e.message):
            raise
    return dict(client.post("/models", {"name": name, "description": description}))


def publish_task(client: ApiClient, task_id: str, model_name: str, instance: int = 0, description: str = "") -> dict[str, Any]:
    """Publish ``task_id``'s /opt/ml/model as the next version of ``model_name`` (created if missing)."""
    m = ensure_model(client, model_name)
    body = {"task_id": task_id, "instance_index": instance, "description": description}
    return dict(client.post(f"/models/{m['id']}/versions", body))


def download_version(client: ApiClient, ref: str, version: int | None, dest: Path) -> dict[str, Any]:
    """Every file of a version into ``dest``; the version."""
    v = dict(client.get(f"/models/{quote(ref, safe='')}/versions/{version}")) if version else _latest(client, ref)
    for f in v["files"]:
        target = (dest / f["path"]).resolve()
        if not target.is_relative_to(dest.resolve()):
            raise ApiError(f"the registry listed a file outside the version's directory: {f['path']!r}")
        client.download(f"/models/{v['model_id']}/versions/{v['version']}/files/{quote(f['path'])}", target)
    return v


def _latest(client: ApiClient, ref: str) -> dict[str, Any]:
    m = client.get(f"/models/{quote(ref, safe='')}")
    if not m.get("latest_version"):
        raise ApiError(f"model {ref} has no version yet (capstan model publish TASK_ID --model {ref})")
    return dict(client.get(f"/models/{m['id']}/versions/{m['latest_version']}"))


@model.command("create")
@click.argument("name")
@click.option("--description", default="", help="Up to 500 characters.")
@click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE", help="A tag (repeatable).")
@common_options
def create(name: str, description: str, tags: tuple[str, ...]) -> None:
    """Create a model; prints its id."""
    cfg = config()
    with cfg.client() as client:
        m = client.post("/models", {"name": name, "description": description, "tags": parse_tags(tags)})
    print_json(m) if cfg.json_output else click.echo(m["id"])


@model.command("list")
@click.option("--query", "-q", default="", help="Case-insensitive substring of the name, description or tags.")
@click.option("--only-mine", is_flag=True, help="Only models I created.")
@common_options
def list_models(query: str, only_mine: bool) -> None:
    """List or search models."""
    cfg = config()
    with cfg.client() as client:
        items = list(client.paginate("/models", query=query or None, only_mine=True if only_mine else None))
    if cfg.json_output:
        print_json(items)
        return
    rows = [[m["id"], m["name"], m["version_count"], m.get("latest_version"), m.get("tags") or None, m["creator"],
             when(m["created_at"])] for m in items]
    click.echo(table(["ID", "NAME", "VERSIONS", "LATEST", "TAGS", "CREATOR", "CREATED"], rows))


@model.command("get")
@click.argument("ref", metavar="MODEL")
@common_options
def get(ref: str) -> None:
    """Show a model (by id or name) and its versions."""
    cfg = config()
    with cfg.client() as client:
        m = client.get(f"/models/{quote(ref, safe='')}")
        versions = list(client.paginate(f"/models/{m['id']}/versions"))
    if cfg.json_output:
        print_json({**m, "versions": versions})
        return
    click.echo(fields([("id", m["id"]), ("name", m["name"]), ("description", m["description"] or None),
                       ("tags", m["tags"] or None), ("creator", m["creator"]), ("created", when(m["created_at"]))]))
    rows = [[v["version"], v["metadata"]["framework"] or None, v["metadata"]["base_model"] or None,
             v["lineage"]["task_id"] or None, len(v["files"]), _size(v["size_bytes"]), when(v["created_at"])]
            for v in versions]
    click.echo(table(["VERSION", "FRAMEWORK", "BASE MODEL", "TASK", "FILES", "SIZE", "CREATED"], rows))


@model.command("version")
@click.argument("ref", metavar="MODEL")
@click.argument("version", type=click.IntRange(min=1))
@common_options
def version(ref: str, version: int) -> None:
    """Show one version: metadata, lineage, files."""
    cfg = config()
    with cfg.client() as client:
        v = client.get(f"/models/{quote(ref, safe='')}/versions/{version}")
    if cfg.json_output:
        print_json(v)
        return
    meta, lin = v["metadata"], v["lineage"]
    click.echo(fields([
        ("model", f"{v['model_name']} ({v['model_id']})"), ("version", v["version"]),
        ("description", v["description"] or None), ("framework", meta["framework"] or None),
        ("task type", meta["task_type"] or None), ("base model", meta["base_model"] or None),
        ("chat template", meta["chat_template"] or None), ("parameters", f"{meta['parameter_count']:,}" if meta["parameter_count"] else None),
        ("task", f"{lin['task_id']} ({lin['task_name']}), instance {lin['instance_index']}"),
        ("hyperparameters", json.dumps(lin["hyperparameters"], sort_keys=True)), ("data", lin["data"] or None),
        ("image", lin["image"] or None), ("creator", v["creator"]), ("created", when(v["created_at"])),
    ]))
    click.echo(table(["FILE", "SIZE", "SHA256"], [[f["path"], _size(f["size"]), f["sha256"]] for f in v["files"]]))


@model.command("publish")
@click.argument("task_id", metavar="TASK_ID")
@click.option("--model", "model_name", required=True, metavar="NAME", help="The model (created if missing).")
@click.option("--instance", type=click.IntRange(min=0), default=0, show_default=True, help="Whose /opt/ml/model.")
@click.option("--description", default="", help="The version's description.")
@common_options
def publish(task_id: str, model_name: str, instance: int, description: str) -> None:
    """Publish a Succeeded task's /opt/ml/model as the model's next version."""
    cfg = config()
    with cfg.client() as client:
        v = publish_task(client, task_id, model_name, instance, description)
    if cfg.json_output:
        print_json(v)
        return
    click.echo(f"{v['model_name']} version {v['version']}: {len(v['files'])} files, {_size(v['size_bytes'])}")


@model.command("download")
@click.argument("ref", metavar="MODEL")
@click.option("--version", "version_no", type=click.IntRange(min=1), help="[default: the latest]")
@click.option("--dir", "dest", required=True, type=click.Path(file_okay=False), help="Where to write the files.")
@common_options
def download(ref: str, version_no: int | None, dest: str) -> None:
    """Download a version's files (a Hugging Face model directory for LLMs)."""
    cfg = config()
    with cfg.client() as client:
        v = download_version(client, ref, version_no, Path(dest))
    click.echo(f"{v['model_name']} version {v['version']}: {len(v['files'])} files in {dest}", err=cfg.json_output)


@model.command("delete")
@click.argument("ref", metavar="MODEL")
@click.argument("version", type=click.IntRange(min=1), required=False)
@common_options
def delete(ref: str, version: int | None) -> None:
    """Delete a model with all its versions, or one VERSION of it."""
    cfg = config()
    with cfg.client() as client:
        if version:
            client.delete(f"/models/{quote(ref, safe='')}/versions/{version}")
            click.echo(f"deleted {ref} version {version}")
        else:
            client.delete(f"/models/{quote(ref, safe='')}")
            click.echo(f"deleted {ref}")
