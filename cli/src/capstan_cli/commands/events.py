"""The event log: what the platform's services set aside from it, and their counters (issue #7)."""

from __future__ import annotations

from typing import Any

import click

from ..common import common_options, config
from ..output import print_json, table, when


@click.group("events")
def events() -> None:
    """The event log every service reads: messages set aside, counters."""


def _report(limit: int) -> dict[str, Any]:
    cfg = config()
    with cfg.client() as client:
        report: dict[str, Any] = client.get("/admin/quarantine", limit=limit)
    return report


def _unreachable(report: dict[str, Any]) -> None:
    for s in report.get("services") or []:
        if not s.get("reachable"):
            click.echo(f"warning: {s.get('service')} could not be asked: {s.get('error')}", err=True)


@events.command("quarantine")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 500), help="Items per service, oldest first.")
@common_options
def quarantine(limit: int) -> None:
    """Messages of the event log each service set aside instead of applying (undecodable, invalid, from a
    newer version, oversized, or failing to apply), with the stream sequence and the error."""
    report = _report(limit)
    if config().json_output:
        print_json(report)
        return
    items = report.get("items") or []
    click.echo(table(
        ["SERVICE", "SEQ", "SUBJECT", "KIND", "STORED", "ERROR"],
        [[i.get("service"), i.get("seq"), i.get("subject"), i.get("kind"), when(i.get("stored_at")), i.get("error")]
         for i in items],
    ))
    totals = [f"{s['service']} {s['quarantined']}" for s in report.get("services") or [] if s.get("reachable")]
    click.echo(f"set aside in all: {', '.join(totals) or '-'}")
    _unreachable(report)


@events.command("counters")
@common_options
def counters() -> None:
    """Each service's counters since it started: commits set aside, control-loop steps and failures."""
    report = _report(1)
    if config().json_output:
        print_json(report.get("counters") or [])
        return
    click.echo(table(
        ["SERVICE", "COUNTER", "LABELS", "VALUE"],
        [[c.get("service"), c.get("name"), c.get("labels"), c.get("value")] for c in report.get("counters") or []],
    ))
    _unreachable(report)
