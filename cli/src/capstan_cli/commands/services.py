"""``capstan svc``: online services (SPEC §6) through /api/v1/services."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ..common import common_options, config, parse_tags
from ..output import fields, print_json, table


@click.group()
def svc() -> None:
    """Online services: service groups (ms-xxxxxxxx), versions, instances, keys."""


def _spec(spec_file: Path | None, spec_json: str) -> dict[str, Any]:
    text = spec_file.read_text() if spec_file else spec_json
    try:
        value = json.loads(text or "{}")
    except ValueError as e:
        raise click.BadParameter(f"the spec is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise click.BadParameter("the spec must be a JSON object")
    return value


def _show(s: dict[str, Any]) -> None:
    if config().json_output:
        print_json(s)
        return
    click.echo(fields([("id", s["id"]), ("name", s["name"]), ("status", s["status"]), ("mode", s["deployment_mode"]),
                       ("auth", "on" if s["auth_enabled"] else "off"),
                       ("replicas", f"{s['running_replicas']}/{s['expected_replicas']}"), ("tags", s["tags"] or None),
                       ("creator", s["creator"])]))
    click.echo(table(["VERSION", "RUNTIME", "WEIGHT", "REPLICAS", "READY", "AUTOSCALING", "FAILED"],
                     [[v["id"], v["spec"]["runtime"], v["weight"], v["replicas"], v["ready_replicas"],
                       v["autoscaling"]["mode"], v["failed"] or None] for v in s["versions"]]))
    if s["instances"]:
        click.echo(table(["INSTANCE", "VERSION", "STATE", "ADDRESS", "RESTARTS"],
                         [[i["id"], i["version_id"], i["state"], i["address"] or None, i["restarts"]]
                          for i in s["instances"]]))
    if s.get("created_key"):
        click.echo(f"key {s['created_key']['id']}: {s['created_key']['secret']}  (shown once: keep it now)")


@svc.command("create")
@click.argument("name")
@click.option("--spec-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The version's form as a JSON file (SPEC §6.2).")
@click.option("--spec", "spec_json", default="", help="The version's form as JSON.")
@click.option("--rg", "resource_group", default="", help="Resource group (sets spec.resource_group_id).")
@click.option("--description", default="")
@click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE")
@click.option("--multi-instance", is_flag=True, help="Multi-instance deployment (fixed at creation).")
@click.option("--generate-key", is_flag=True, help="Create the first key and turn auth on.")
@common_options
def create(name: str, spec_file: Path | None, spec_json: str, resource_group: str, description: str,
           tags: tuple[str, ...], multi_instance: bool, generate_key: bool) -> None:
    """Create a service group with its first version."""
    spec = _spec(spec_file, spec_json)
    if resource_group:
        spec["resource_group_id"] = resource_group
    body = {"name": name, "description": description, "tags": parse_tags(tags), "spec": spec,
            "deployment_mode": "multi-instance" if multi_instance else "standard", "generate_key": generate_key}
    with config().client() as client:
        _show(client.post("/services", body))


@svc.command("list")
@click.option("--only-mine", is_flag=True)
@common_options
def list_services(only_mine: bool) -> None:
    """List service groups."""
    cfg = config()
    with cfg.client() as client:
        items = list(client.paginate("/services", only_mine=True if only_mine else None))
    if cfg.json_output:
        print_json(items)
        return
    click.echo(table(["ID", "NAME", "STATUS", "VERSIONS", "REPLICAS", "TAGS", "CREATOR"],
                     [[s["id"], s["name"], s["status"], f"{s['running_versions']}/{len(s['versions'])}",
                       f"{s['running_replicas']}/{s['expected_replicas']}", s["tags"] or None, s["creator"]]
                      for s in items]))


@svc.command("get")
@click.argument("service_id")
@common_options
def get(service_id: str) -> None:
    """Show a service group: versions, instances."""
    with config().client() as client:
        _show(client.get(f"/services/{service_id}"))


@svc.command("update")
@click.argument("service_id")
@click.option("--version", "version_id", default="", help="The version to update (empty: the only one).")
@click.option("--spec-file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--spec", "spec_json", default="", help="The fields to change, as JSON.")
@click.option("--new-version", is_flag=True, help="Add a version with this spec instead (weight --weight).")
@click.option("--weight", type=click.IntRange(0, 100), default=0)
@common_options
def update(service_id: str, version_id: str, spec_file: Path | None, spec_json: str, new_version: bool,
           weight: int) -> None:
    """Rolling update of a version, or a new version."""
    spec = _spec(spec_file, spec_json)
    with config().client() as client:
        if new_version:
            _show(client.post(f"/services/{service_id}/versions", {"spec": spec, "weight": weight}))
            return
        if not version_id:
            versions = client.get(f"/services/{service_id}")["versions"]
            if len(versions) != 1:
                raise click.UsageError(f"{service_id} has {len(versions)} versions: name one with --version")
            version_id = versions[0]["id"]
        _show(client.patch(f"/services/{service_id}/versions/{version_id}", {"spec": spec}))


@svc.command("scale")
@click.argument("service_id")
@click.argument("replicas", type=click.IntRange(0, 100))
@click.option("--version", "version_id", default="")
@common_options
def scale(service_id: str, replicas: int, version_id: str) -> None:
    """Quick scale: set the replicas of a version."""
    with config().client() as client:
        _show(client.post(f"/services/{service_id}/scale", {"replicas": replicas, "version_id": version_id}))


def _action(name: str, doc: str) -> None:
    @svc.command(name, help=doc)
    @click.argument("service_id")
    @common_options
    def run(service_id: str) -> None:
        with config().client() as client:
            _show(client.delete(f"/services/{service_id}") if name == "delete"
                  else client.post(f"/services/{service_id}/{name}"))


def _instance_action(name: str, doc: str) -> None:
    @svc.command(name, help=doc)
    @click.argument("service_id")
    @click.argument("instance_id")
    @common_options
    def run(service_id: str, instance_id: str) -> None:
        with config().client() as client:
            _show(client.post(f"/services/{service_id}/instances/{instance_id}/{name}"))


_action("stop", "Stop a service group.")
_action("start", "Start a stopped service group.")
_action("delete", "Delete a service group (its instances drain and stop first).")
_instance_action("isolate", "Isolate an instance: it stays up and gets no new traffic.")
_instance_action("unisolate", "Un-isolate an instance.")
_instance_action("rebuild", "Rebuild an instance: a fresh one replaces it.")


@svc.group("keys")
def keys() -> None:
    """Auth keys of a service (several; enabled/disabled; token limits)."""


@keys.command("list")
@click.argument("service_id")
@common_options
def keys_list(service_id: str) -> None:
    cfg = config()
    with cfg.client() as client:
        items = client.get(f"/services/{service_id}/keys")["items"]
    if cfg.json_output:
        print_json(items)
        return
    click.echo(table(["KEY", "ENABLED", "TPM", "TPD", "REMARK"],
                     [[k["id"], k["enabled"], k["tokens_per_minute"] or None, k["tokens_per_day"] or None,
                       k["remark"] or None] for k in items]))


@keys.command("create")
@click.argument("service_id")
@click.option("--remark", default="")
@click.option("--tpm", type=click.IntRange(0), default=0, help="Tokens per minute (0: no limit).")
@click.option("--tpd", type=click.IntRange(0), default=0, help="Tokens per day (0: no limit).")
@common_options
def keys_create(service_id: str, remark: str, tpm: int, tpd: int) -> None:
    """Create a key; its secret is printed this once."""
    cfg = config()
    with cfg.client() as client:
        k = client.post(f"/services/{service_id}/keys", {"remark": remark, "tokens_per_minute": tpm,
                                                          "tokens_per_day": tpd})
    print_json(k) if cfg.json_output else click.echo(f"{k['id']}  {k['secret']}  (shown once: keep it now)")


@keys.command("update")
@click.argument("service_id")
@click.argument("key_id")
@click.option("--enable/--disable", "enabled", default=None)
@click.option("--remark", default=None)
@click.option("--tpm", type=click.IntRange(0), default=None)
@click.option("--tpd", type=click.IntRange(0), default=None)
@common_options
def keys_update(service_id: str, key_id: str, enabled: bool | None, remark: str | None, tpm: int | None,
                tpd: int | None) -> None:
    body = {k: v for k, v in (("enabled", enabled), ("remark", remark), ("tokens_per_minute", tpm),
                              ("tokens_per_day", tpd)) if v is not None}
    with config().client() as client:
        print_json(client.patch(f"/services/{service_id}/keys/{key_id}", body))


@keys.command("delete")
@click.argument("service_id")
@click.argument("key_id")
@common_options
def keys_delete(service_id: str, key_id: str) -> None:
    with config().client() as client:
        client.delete(f"/services/{service_id}/keys/{key_id}")


@keys.command("auth")
@click.argument("service_id")
@click.argument("state", type=click.Choice(["on", "off"]))
@common_options
def keys_auth(service_id: str, state: str) -> None:
    """Switch auth on or off (the running instances are not touched)."""
    with config().client() as client:
        _show(client.patch(f"/services/{service_id}", {"auth_enabled": state == "on"}))


@svc.command("events")
@click.argument("service_id")
@click.option("--records", is_flag=True, help="Update records (who changed what) instead of the last 24 h of events.")
@common_options
def events(service_id: str, records: bool) -> None:
    """Events of the last 24 hours, or the update records."""
    cfg = config()
    with cfg.client() as client:
        items = client.get(f"/services/{service_id}/{'records' if records else 'events'}")["items"]
    if cfg.json_output:
        print_json(items)
        return
    import datetime as dt
    click.echo(table(["TIME", "LEVEL", "RESOURCE", "MESSAGE", "BY"],
                     [[dt.datetime.fromtimestamp(e["at_ms"] / 1000).strftime("%Y-%m-%d %H:%M:%S"), e["level"],
                       e["resource"], e["message"], e["by"] or None] for e in items]))


@svc.command("logs")
@click.argument("service_id")
@click.option("--instance", default="", help="One instance (empty: every instance the service has now).")
@click.option("--keyword", "-k", default="", help="Case-insensitive substring.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=1000)
@common_options
def logs(service_id: str, instance: str, keyword: str, limit: int) -> None:
    """Instance logs, searched by keyword."""
    cfg = config()
    with cfg.client() as client:
        page = client.get(f"/services/{service_id}/logs", instance=instance or None, keyword=keyword or None,
                          limit=limit)
    if cfg.json_output:
        print_json(page)
        return
    for x in page["lines"]:
        click.echo(f"[{x['instance']}] {x['line']}")


@svc.command("weights")
@click.argument("service_id")
@click.argument("weights", nargs=-1, required=True, metavar="VERSION=WEIGHT...")
@common_options
def weights(service_id: str, weights: tuple[str, ...]) -> None:
    """Split traffic between versions, e.g. ms-x-v1=90 ms-x-v2=10 (0..100 each)."""
    parsed: dict[str, int] = {}
    for w in weights:
        version, eq, value = w.partition("=")
        if not eq or not value.isdigit():
            raise click.BadParameter(f"{w!r} is not VERSION=WEIGHT (a whole number 0..100)")
        parsed[version] = int(value)
    with config().client() as client:
        _show(client.request("PUT", f"/services/{service_id}/weights", body={"weights": parsed}))


@svc.command("autoscale")
@click.argument("service_id")
@click.option("--version", "version_id", default="")
@click.option("--manual", is_flag=True, help="Back to the replica count set by hand.")
@click.option("--hpa", "hpa", default="", metavar="METRIC:TARGET",
              help="Scale on qps, concurrency, cpu, memory or gpu (% of the cards), e.g. qps:10 (with --min/--max).")
@click.option("--min", "lo", type=click.IntRange(1, 100), default=1)
@click.option("--max", "hi", type=click.IntRange(1, 100), default=1)
@click.option("--cooldown", type=click.IntRange(0, 86400), default=60, help="Seconds between changes.")
@click.option("--rules", default="", help='Time rules as JSON: {"rules": [{"at": "09:00", "replicas": 3, '
                                          '"except": ["* * * 1-7 10 *"]}], "default": 1, "timezone": "UTC"}')
@common_options
def autoscale(service_id: str, version_id: str, manual: bool, hpa: str, lo: int, hi: int, cooldown: int,
              rules: str) -> None:
    """Set how a version's replica count is decided: by hand, by time rules, or by load (HPA)."""
    if sum(map(bool, (manual, hpa, rules))) != 1:
        raise click.UsageError("give one of --manual, --hpa METRIC:TARGET or --rules JSON")
    if manual:
        cfg: dict[str, Any] = {"mode": "manual"}
    elif hpa:
        metric, _, target = hpa.partition(":")
        try:
            value = float(target)
        except ValueError as e:
            raise click.BadParameter(f"{hpa!r} is not METRIC:TARGET, e.g. qps:10") from e
        cfg = {"mode": "hpa", "metric": metric, "target": value, "min": lo, "max": hi, "cooldown_s": cooldown}
    else:
        cfg = {"mode": "time", **_spec(None, rules)}
    with config().client() as client:
        _show(client.request("PUT", f"/services/{service_id}/autoscaling",
                             body={"version_id": version_id, "autoscaling": cfg}))
