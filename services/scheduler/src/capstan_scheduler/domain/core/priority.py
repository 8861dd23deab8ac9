"""Priority, queue mode and preemption switch from a normalised resource-group policy (see ``domain.policy``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

STRICT_FIFO, BACKFILL_WITHIN_PRIORITY, BACKFILL_ACROSS = 0, 1, 2


def _tags(tags: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, str]:
    return dict(tags.items()) if isinstance(tags, Mapping) else dict(tags)


def priority_for(policy: Mapping[str, Any], tags: Mapping[str, str] | Iterable[tuple[str, str]]) -> int:
    """P0..P9: the first TaskRule whose every tag rule matches, else ResourceRule.DefaultPriority."""
    have = _tags(tags)
    for rule in policy.get("TaskRules", []):
        if all(have.get(a["Key"]) == a["Value"] for a in rule["AttrRules"]):
            return int(rule["ScheduleRule"]["Priority"])
    return int(policy.get("ResourceRule", {}).get("DefaultPriority", 0))


def queue_mode(policy: Mapping[str, Any]) -> int:
    return int(policy.get("ResourceRule", {}).get("DefaultQueue", STRICT_FIFO))


def preemption_on(policy: Mapping[str, Any]) -> bool:
    return bool(policy.get("ResourceRule", {}).get("Preempted", 0))
