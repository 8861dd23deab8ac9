"""The resource group scheduling policy JSON (SPEC §7.1), validated with errors naming the bad field."""

from __future__ import annotations

from typing import Any

from capstan_core.contracts.scheduling import HOST_NETWORK, SANDBOX_RULE
from capstan_core.errors import InvalidArgument

DEFAULT_POLICY: dict[str, Any] = {
    "Version": "1.0",
    "ResourceRule": {"DefaultPriority": 0, "DefaultQueue": 0, "Preempted": 0},
    "TaskRules": [],
}


def _int_in(value: Any, field: str, allowed: range, words: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:
        raise InvalidArgument(f"{field} must be {words}", field=field)
    return value


def validate_policy(policy: dict[str, Any] | None) -> dict[str, Any]:
    """Return the normalised policy (defaults filled in), or raise InvalidArgument."""
    if policy is None or policy == {}:
        return {**DEFAULT_POLICY, "ResourceRule": dict(DEFAULT_POLICY["ResourceRule"]), "TaskRules": []}
    if not isinstance(policy, dict):
        raise InvalidArgument("policy must be a JSON object", field="policy")
    unknown = set(policy) - {"Version", "ResourceRule", "TaskRules", SANDBOX_RULE}
    if unknown:
        raise InvalidArgument(f"policy has unknown field(s): {', '.join(sorted(unknown))}", field="policy")
    version = policy.get("Version", "1.0")
    if version != "1.0":
        raise InvalidArgument('Version must be "1.0"', field="Version")
    rule = policy.get("ResourceRule", {})
    if not isinstance(rule, dict):
        raise InvalidArgument("ResourceRule must be an object", field="ResourceRule")
    unknown = set(rule) - {"DefaultPriority", "DefaultQueue", "Preempted"}
    if unknown:
        raise InvalidArgument(f"ResourceRule has unknown field(s): {', '.join(sorted(unknown))}", field="ResourceRule")
    out_rule = {
        "DefaultPriority": _int_in(rule.get("DefaultPriority", 0), "ResourceRule.DefaultPriority", range(10), "an integer 0..9"),
        "DefaultQueue": _int_in(rule.get("DefaultQueue", 0), "ResourceRule.DefaultQueue", range(3), "0, 1 or 2"),
        "Preempted": _int_in(rule.get("Preempted", 0), "ResourceRule.Preempted", range(2), "0 or 1"),
    }
    rules = policy.get("TaskRules", [])
    if not isinstance(rules, list):
        raise InvalidArgument("TaskRules must be a list", field="TaskRules")
    out_rules = []
    for i, tr in enumerate(rules):
        where = f"TaskRules[{i}]"
        if not isinstance(tr, dict):
            raise InvalidArgument(f"{where} must be an object", field=where)
        attrs = tr.get("AttrRules")
        if not isinstance(attrs, list) or not attrs:
            raise InvalidArgument(f"{where}.AttrRules must be a non-empty list", field=f"{where}.AttrRules")
        for j, a in enumerate(attrs):
            aw = f"{where}.AttrRules[{j}]"
            if not isinstance(a, dict) or a.get("ValueType") != "Tag":
                raise InvalidArgument(f'{aw}.ValueType must be "Tag"', field=f"{aw}.ValueType")
            for key in ("Key", "Value"):
                if not isinstance(a.get(key), str) or not a.get(key):
                    raise InvalidArgument(f"{aw}.{key} must be a non-empty string", field=f"{aw}.{key}")
        sched = tr.get("ScheduleRule")
        if not isinstance(sched, dict):
            raise InvalidArgument(f"{where}.ScheduleRule must be an object", field=f"{where}.ScheduleRule")
        prio = _int_in(sched.get("Priority"), f"{where}.ScheduleRule.Priority", range(10), "an integer 0..9")
        out_rules.append(
            {
                "AttrRules": [{"ValueType": "Tag", "Key": a["Key"], "Value": a["Value"]} for a in attrs],
                "ScheduleRule": {"Priority": prio},
            }
        )
    out: dict[str, Any] = {"Version": "1.0", "ResourceRule": out_rule, "TaskRules": out_rules}
    if SANDBOX_RULE in policy:  # absent: the defaults (no host network), as in groups made before it existed
        out[SANDBOX_RULE] = _sandbox_rule(policy[SANDBOX_RULE])
    return out


def _sandbox_rule(rule: Any) -> dict[str, int]:
    if not isinstance(rule, dict):
        raise InvalidArgument(f"{SANDBOX_RULE} must be an object", field=SANDBOX_RULE)
    unknown = set(rule) - {HOST_NETWORK}
    if unknown:
        raise InvalidArgument(f"{SANDBOX_RULE} has unknown field(s): {', '.join(sorted(unknown))}", field=SANDBOX_RULE)
    field = f"{SANDBOX_RULE}.{HOST_NETWORK}"
    return {HOST_NETWORK: _int_in(rule.get(HOST_NETWORK, 0), field, range(2), "0 or 1 (1: tasks may use the host's network)")}
