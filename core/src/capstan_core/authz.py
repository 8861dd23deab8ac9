"""Policies: which actions (``actions``) an account may perform on which objects (SPEC §1).

A policy is a list of statements ``{"effect": "allow"|"deny", "actions": [...], "resources": [...],
"tags": {k: v}}``. Actions and resources are patterns with ``*`` wildcards (``trainer:*``,
``train:train-1a2b*``, ``*``); a resource is ``<type>:<id>`` (``train:train-1a2b3c4d``) or, for an action
on no one object (list, create), ``<type>:*``. ``tags``: the statement applies only to objects carrying
every one of those tags (authorization by tag), so it never applies to an action on no object.
Deny wins; nothing allowed is denied. Pure: no I/O.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .actions import ACTION_NAMES, READ_ACTIONS

Effect = Literal["allow", "deny"]
MAX_STATEMENTS = 50
MAX_PATTERNS = 100
MAX_PATTERN_LEN = 200


@dataclass(frozen=True)
class Statement:
    effect: Effect
    actions: tuple[str, ...]
    resources: tuple[str, ...] = ("*",)
    tags: Mapping[str, str] = field(default_factory=dict)

    def matches(self, action: str, resource: str, tags: Mapping[str, str] | None) -> bool:
        if not any(_match(action, p) for p in self.actions):
            return False
        if not any(_match(resource, p) for p in self.resources):
            return False
        if self.tags:
            if tags is None:
                return False
            return all(tags.get(k) == v for k, v in self.tags.items())
        return True


def _match(value: str, pattern: str) -> bool:
    # fnmatchcase: '*' and '?' only matter; '[' is taken literally by escaping it.
    return fnmatch.fnmatchcase(value, pattern.replace("[", "[[]"))


@dataclass(frozen=True)
class Policy:
    name: str
    statements: tuple[Statement, ...]


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str


def _preset(name: str, *statements: Statement) -> Policy:
    return Policy(name, statements)


FULL_ACCESS = _preset("FullAccess", Statement("allow", ("*",)))
READ_ONLY_ACCESS = _preset("ReadOnlyAccess", Statement("allow", tuple(sorted(READ_ACTIONS))))
RESOURCE_GROUP_FULL_ACCESS = _preset(
    "ResourceGroupFullAccess", Statement("allow", ("scheduler:*",)), Statement("allow", tuple(sorted(READ_ACTIONS)))
)
PRESETS: dict[str, Policy] = {p.name: p for p in (FULL_ACCESS, READ_ONLY_ACCESS, RESOURCE_GROUP_FULL_ACCESS)}


def decide(policies: Sequence[Policy], action: str, resource: str, tags: Mapping[str, str] | None = None) -> Decision:
    """May an account holding ``policies`` perform ``action`` on ``resource`` (whose tags are ``tags``)?"""
    allowed_by = ""
    for policy in policies:
        for st in policy.statements:
            if not st.matches(action, resource, tags):
                continue
            if st.effect == "deny":
                return Decision(False, f"{action} on {resource} is denied by policy {policy.name}")
            allowed_by = allowed_by or policy.name
    if allowed_by:
        return Decision(True, f"allowed by {allowed_by}")
    return Decision(False, f"no policy of this account allows {action} on {resource}")


def parse_statements(raw: Any) -> tuple[Statement, ...]:
    """A custom policy's statements from JSON; raises ValueError with a usable message."""
    if not isinstance(raw, list) or not raw:
        raise ValueError("statements: a non-empty list of {effect, actions, resources, tags}")
    if len(raw) > MAX_STATEMENTS:
        raise ValueError(f"statements: at most {MAX_STATEMENTS}")
    out = []
    for i, st in enumerate(raw):
        if not isinstance(st, dict):
            raise ValueError(f"statements[{i}]: an object")
        unknown = set(st) - {"effect", "actions", "resources", "tags"}
        if unknown:
            raise ValueError(f"statements[{i}]: unknown field(s) {sorted(unknown)}")
        effect = st.get("effect")
        if effect not in ("allow", "deny"):
            raise ValueError(f"statements[{i}].effect: 'allow' or 'deny'")
        actions = _patterns(st.get("actions"), f"statements[{i}].actions")
        for a in actions:
            if "*" not in a and "?" not in a and a not in ACTION_NAMES:
                raise ValueError(f"statements[{i}].actions: unknown action {a!r} (see GET /openapi.json, x-capstan-action)")
        resources = _patterns(st.get("resources", ["*"]), f"statements[{i}].resources")
        tags = st.get("tags", {})
        if not isinstance(tags, dict) or len(tags) > 20 or not all(
            isinstance(k, str) and isinstance(v, str) and 0 < len(k) <= 128 and len(v) <= 256 for k, v in tags.items()
        ):
            raise ValueError(f"statements[{i}].tags: up to 20 string key=value pairs")
        out.append(Statement(effect, actions, resources, dict(tags)))
    return tuple(out)


def _patterns(raw: Any, where: str) -> tuple[str, ...]:
    if not isinstance(raw, list) or not raw or len(raw) > MAX_PATTERNS:
        raise ValueError(f"{where}: a non-empty list of up to {MAX_PATTERNS} patterns")
    for p in raw:
        if not isinstance(p, str) or not p or len(p) > MAX_PATTERN_LEN:
            raise ValueError(f"{where}: patterns are non-empty strings of up to {MAX_PATTERN_LEN} characters")
    return tuple(raw)


def statements_json(statements: Sequence[Statement]) -> list[dict[str, Any]]:
    return [
        {"effect": s.effect, "actions": list(s.actions), "resources": list(s.resources), "tags": dict(s.tags)}
        for s in statements
    ]
