"""Autoscaling (SPEC §6.4): validation of a version's rules, time rules and the HPA decision. Pure.

- ``manual``: the version's replica count is what the user set.
- ``time``: rules "at HH:MM set replicas to N" in priority order (the earlier wins when two fire at the
  same minute), each with optional exception dates (``cron``). The rule that fired last (looking back
  up to 8 days, skipping a rule on its exception dates) sets the count; none: ``default``.
- ``hpa``: ``min``..``max`` replicas keeping one metric per replica at ``target``: ``qps`` (requests/s),
  ``concurrency`` ((in flight + its share of the calls waiting in the version's queue) / max concurrency,
  %; over 100 when calls wait), ``cpu`` (% of the requested cores), ``memory`` (% of the requested memory),
  ``gpu`` (mean utilisation % of the cards the replica holds, as ``nvidia-smi`` reports it; only for a
  version that asks for cards). Within 10% of the target nothing changes; otherwise the count becomes
  ceil(total / target), bounded; a change waits ``cooldown_s`` after the previous one (a bound violated
  by a new min/max is fixed at once).
"""

from __future__ import annotations

import datetime as dt
import math
import re
import zoneinfo
from collections.abc import Sequence
from typing import Any

from capstan_core.errors import InvalidArgument

from . import cron
from .spec import MAX_REPLICAS

MODES = ("manual", "time", "hpa")
METRICS = ("qps", "concurrency", "cpu", "memory", "gpu")
MAX_RULES = 32
TOLERANCE = 0.1
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


def _int(raw: Any, field: str, lo: int, hi: int) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise InvalidArgument(f"{field} must be a whole number {lo}..{hi}", field=field)
    if not lo <= raw <= hi:
        raise InvalidArgument(f"{field} must be {lo}..{hi} (got {raw})", field=field)
    return raw


def normalize(raw: Any, *, rate_limit_kind: str, gpu: float = 0.0) -> dict[str, Any]:
    """The complete rules of ``raw``; ``rate_limit_kind`` and ``gpu`` (cards) are the version's."""
    if not isinstance(raw, dict):
        raise InvalidArgument("autoscaling must be an object with a mode (manual, time or hpa)", field="autoscaling")
    mode = raw.get("mode")
    if mode not in MODES:
        raise InvalidArgument("autoscaling.mode must be manual, time or hpa", field="autoscaling.mode")
    if mode == "manual":
        return {"mode": "manual"}
    if mode == "time":
        rules = raw.get("rules")
        if not isinstance(rules, list) or not 1 <= len(rules) <= MAX_RULES:
            raise InvalidArgument(f"autoscaling.rules must hold 1..{MAX_RULES} rules "
                                  '{"at": "HH:MM", "replicas": N, "except": [cron...]}', field="autoscaling.rules")
        out = []
        for i, r in enumerate(rules):
            f = f"autoscaling.rules[{i}]"
            if not isinstance(r, dict) or set(r) - {"at", "replicas", "except"}:
                raise InvalidArgument(f'{f} must be {{"at": "HH:MM", "replicas": N, "except": [cron...]}}', field=f)
            at = r.get("at")
            if not isinstance(at, str) or not _HHMM.match(at):
                raise InvalidArgument(f"{f}.at must be HH:MM (00:00..23:59)", field=f"{f}.at")
            exc = r.get("except", [])
            if not isinstance(exc, list) or len(exc) > 16:
                raise InvalidArgument(f"{f}.except must be a list of at most 16 cron expressions", field=f"{f}.except")
            for e in exc:
                cron.parse(e)
            out.append({"at": at, "replicas": _int(r.get("replicas"), f"{f}.replicas", 0, MAX_REPLICAS),
                        "except": list(exc)})
        tz = raw.get("timezone", "UTC")
        try:
            zoneinfo.ZoneInfo(tz)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
            raise InvalidArgument(f"autoscaling.timezone {str(tz)[:64]!r} is not a known time zone (e.g. UTC, "
                                  "Asia/Shanghai)", field="autoscaling.timezone") from None
        default = _int(raw.get("default", 1), "autoscaling.default", 0, MAX_REPLICAS)
        return {"mode": "time", "rules": out, "timezone": tz, "default": default}
    metric = raw.get("metric")
    if metric not in METRICS:
        raise InvalidArgument("autoscaling.metric must be qps, concurrency, cpu, memory or gpu", field="autoscaling.metric")
    if metric == "gpu" and gpu <= 0:
        raise InvalidArgument("autoscaling on GPU utilisation needs a version that asks for cards (resources.gpu > 0)",
                              field="autoscaling.metric")
    if metric == "concurrency" and rate_limit_kind != "concurrency":
        raise InvalidArgument("autoscaling on concurrency utilisation needs the per-replica max concurrency limit "
                              '(rate_limit {"kind": "concurrency", "value": N})', field="autoscaling.metric")
    lo = _int(raw.get("min", 1), "autoscaling.min", 1, MAX_REPLICAS)
    hi = _int(raw.get("max", lo), "autoscaling.max", 1, MAX_REPLICAS)
    if hi < lo:
        raise InvalidArgument(f"autoscaling.max ({hi}) must be at least autoscaling.min ({lo})", field="autoscaling.max")
    target = raw.get("target")
    if isinstance(target, bool) or not isinstance(target, int | float) or not math.isfinite(target) or not (
            0 < target <= (100 if metric != "qps" else 500)):
        raise InvalidArgument(f"autoscaling.target must be > 0 and at most {100 if metric != 'qps' else 500} "
                              f"({'requests/s per replica' if metric == 'qps' else 'percent'})",
                              field="autoscaling.target")
    cooldown = _int(raw.get("cooldown_s", 60), "autoscaling.cooldown_s", 0, 86400)
    return {"mode": "hpa", "metric": metric, "target": float(target), "min": lo, "max": hi, "cooldown_s": cooldown}


def time_replicas(cfg: dict[str, Any], now_ms: int) -> int:
    """The count the time rules set at ``now_ms``."""
    tz = zoneinfo.ZoneInfo(cfg.get("timezone", "UTC"))
    now = dt.datetime.fromtimestamp(now_ms / 1000, tz)
    best: tuple[dt.datetime, int] | None = None
    for back in range(8):
        day = now.date() - dt.timedelta(days=back)
        for prio, r in enumerate(cfg["rules"]):
            hh, mm = (int(x) for x in r["at"].split(":"))
            fired = dt.datetime.combine(day, dt.time(hh, mm), tz)
            if fired > now or any(cron.matches(e, day) for e in r["except"]):
                continue
            # latest firing wins; at the same minute, the earlier rule (priority)
            if best is None or fired > best[0]:
                best = (fired, prio)
        if best is not None:
            break
    return cfg["rules"][best[1]]["replicas"] if best is not None else cfg["default"]


def hpa_replicas(cfg: dict[str, Any], current: int, values: Sequence[float], *, last_change_ms: int,
                 now_ms: int) -> int:
    """The count HPA wants given one metric value per serving replica (``values``)."""
    lo, hi = cfg["min"], cfg["max"]
    bounded = min(max(current, lo), hi)
    if bounded != current:
        return bounded  # the bounds themselves changed
    if not values:
        return current
    total = sum(values)
    ratio = total / len(values) / cfg["target"]
    if abs(ratio - 1) <= TOLERANCE:
        return current
    wanted = min(max(math.ceil(total / cfg["target"] - 1e-9), lo), hi)
    if wanted != current and now_ms - last_change_ms < cfg["cooldown_s"] * 1000:
        return current
    return wanted
