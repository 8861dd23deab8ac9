"""NATS users and what each may publish and subscribe to.

No anonymous access: nats-server is started with one user per component (bcrypt
password hashes in its config). A service may append only to the subjects of the
aggregates it owns; an agent may only publish log lines and hear wake-ups; no one
but ``admin`` (the operator's tools, the tests) may delete or purge a stream.
Replies (JetStream acks, direct gets, consumer deliveries) go to a per-user inbox
prefix that only that user may subscribe to, so no one can read another's replies.
"""

from __future__ import annotations

import json

from .streams import EVENTS_SUBJECTS, LOGS_SUBJECTS, WAKE_SUBJECTS

# Aggregate kinds each service owns (subjects capstan.evt.<kind>.<id>).
OWNED_AGGREGATES: dict[str, tuple[str, ...]] = {
    "scheduler": ("rsg", "node", "workload", "jointoken"),
    "trainer": ("train",),
    "registry": ("model",),
    "inference": ("service",),
}
SERVICE_USERS = tuple(OWNED_AGGREGATES)
AGENT_USER = "agent"
ADMIN_USER = "admin"
# The gateway reads no event: it keeps limit counters, call-monitoring samples and replica load in
# these JetStream KV buckets (capstan_gateway.invoke), shared by every gateway process; and it appends
# the identity store's changes (accounts, keys: #8) on their own aggregates' subjects.
GATEWAY_USER = "gateway"
GATEWAY_AGGREGATES = ("account", "key", "policy")
GATEWAY_BUCKETS = ("capstan_limits", "capstan_limits_day", "capstan_serving_metrics", "capstan_serving_load")
USERS = (*SERVICE_USERS, AGENT_USER, GATEWAY_USER, ADMIN_USER)

# JetStream API calls no service needs and no one but admin may make.
_JS_DESTRUCTIVE = (
    "$JS.API.STREAM.DELETE.>",
    "$JS.API.STREAM.PURGE.>",
    "$JS.API.STREAM.MSG.DELETE.>",
    "$JS.API.STREAM.SNAPSHOT.>",
    "$JS.API.STREAM.RESTORE.>",
    "$JS.API.ACCOUNT.PURGE.>",
    "$JS.API.SERVER.>",
    "$JS.API.META.>",
)


def inbox_prefix(user: str) -> str:
    return f"_INBOX.{user}"


def permissions(user: str) -> dict[str, object]:
    inbox = inbox_prefix(user) + ".>"
    if user == ADMIN_USER:
        return {"publish": {"allow": [">"]}, "subscribe": {"allow": [">"]}}
    if user == AGENT_USER:
        return {
            "publish": {"allow": [LOGS_SUBJECTS]},
            "subscribe": {"allow": [inbox, WAKE_SUBJECTS]},
        }
    if user == GATEWAY_USER:
        owned = [f"{EVENTS_SUBJECTS[:-1]}{kind}.>" for kind in GATEWAY_AGGREGATES]
        return {"publish": {"allow": [*owned, *_kv_only(GATEWAY_BUCKETS)]}, "subscribe": {"allow": [inbox]}}
    if user not in OWNED_AGGREGATES:
        raise ValueError(f"unknown NATS user {user!r}")
    owned = [f"{EVENTS_SUBJECTS[:-1]}{kind}.>" for kind in OWNED_AGGREGATES[user]]
    return {
        "publish": {
            "allow": [*owned, WAKE_SUBJECTS, "$JS.API.>", "$JS.ACK.>", "$JS.FC.>"],
            "deny": list(_JS_DESTRUCTIVE),
        },
        "subscribe": {"allow": [inbox, WAKE_SUBJECTS]},
    }


def _kv_only(buckets: tuple[str, ...]) -> list[str]:
    """What KV use of ``buckets`` needs (create, get, put, compare-and-set, list keys), nothing else."""
    allow = ["$JS.API.INFO"]
    for bucket in buckets:
        stream = f"KV_{bucket}"
        allow += [
            f"$KV.{bucket}.>",
            f"$JS.API.STREAM.INFO.{stream}",
            f"$JS.API.STREAM.CREATE.{stream}",
            f"$JS.API.STREAM.MSG.GET.{stream}",
            f"$JS.API.DIRECT.GET.{stream}",
            f"$JS.API.DIRECT.GET.{stream}.>",
            f"$JS.API.CONSUMER.CREATE.{stream}",
            f"$JS.API.CONSUMER.CREATE.{stream}.>",
            f"$JS.API.CONSUMER.DELETE.{stream}.>",
            f"$JS.API.CONSUMER.INFO.{stream}.>",
        ]
    return [*allow, "$JS.FC.>", "$JS.ACK.>"]


def authorization_block(password_hashes: dict[str, str]) -> str:
    """The ``authorization { users = [...] }`` block of nats.conf (JSON is valid NATS config syntax)."""
    users = [
        {"user": user, "password": password_hashes[user], "permissions": permissions(user)}
        for user in USERS
    ]
    return "authorization " + json.dumps({"users": users}, indent=2) + "\n"
