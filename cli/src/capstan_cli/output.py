"""Output: aligned tables, key/value blocks, JSON for scripts, times and durations for people."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import click


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Plain columns separated by two spaces, each as wide as its widest cell."""
    cells = [[cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, v in enumerate(row):
            widths[i] = max(widths[i], len(v))
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def fields(pairs: Sequence[tuple[str, Any]]) -> str:
    """``key:  value`` lines, values aligned; rows whose value is None or "" are left out."""
    shown = [(k, cell(v)) for k, v in pairs if v is not None and v != ""]
    width = max((len(k) for k, _ in shown), default=0) + 1
    return "\n".join(f"{(k + ':').ljust(width)}  {v}" for k, v in shown)


def cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, dict):
        return ",".join(f"{k}={cell(x)}" for k, x in v.items()) or "-"
    if isinstance(v, (list, tuple)):
        return ",".join(cell(x) for x in v) or "-"
    return str(v)


def print_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=False, default=str))


def parse_time(value: Any) -> datetime | None:
    if not value or not isinstance(value, str):
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def when(value: Any) -> str | None:
    """An API timestamp in local time, to the second."""
    t = parse_time(value)
    if t is None:
        return value if value else None
    return t.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def duration(seconds: float) -> str:
    s = max(0, int(seconds))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d}d{h:02d}h"
    if h:
        return f"{h}h{m:02d}m"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


def since(value: Any, until: Any = None) -> str | None:
    """How long from ``value`` to ``until`` (default now), e.g. ``2m05s``."""
    start = parse_time(value)
    if start is None:
        return None
    end = parse_time(until) or datetime.now(UTC)
    return duration((end - start).total_seconds())


_REL = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def time_arg(value: str, now: datetime | None = None) -> str:
    """``--since/--until``: a relative age (``90s``, ``10m``, ``2h``, ``1d``) or an ISO 8601 time,
    given to the API as an RFC 3339 UTC time."""
    now = now or datetime.now(UTC)
    m = _REL.match(value.strip())
    if m:
        t = now - timedelta(seconds=float(m[1]) * _UNITS[m[2]])
    else:
        try:
            t = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError as e:
            raise click.BadParameter(
                f"{value!r}: use an age like 10m, 2h, 1d or a time like 2025-01-31T12:00:00Z"
            ) from e
        if t.tzinfo is None:
            t = t.astimezone()  # a time without zone is local time
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")
