"""Who a certificate names, whom it may act for, and the access table's rules (pure)."""

from __future__ import annotations

import pytest

from capstan_core.errors import PermissionDenied, Unauthenticated
from capstan_core.identity import (
    ADMIN,
    ANONYMOUS,
    ANY_AUTHENTICATED,
    GATEWAY,
    NODE,
    Access,
    Principal,
    caller_from_certificate,
)

P = "x-capstan-principal"


ALICE = Principal(account="alice", tenant="acct-a", key_id="key-1", source="key").to_json()


def test_identities_from_common_names() -> None:
    assert caller_from_certificate(None, {}).kind == "anonymous"
    assert caller_from_certificate("admin", {P: ALICE}).acting == "admin"
    node = caller_from_certificate("node:node-abc", {P: ALICE})
    assert (node.kind, node.node_id, node.acting) == ("node", "node-abc", "node:node-abc")  # a node claims nothing
    trainer = caller_from_certificate("svc:trainer", {P: ALICE})
    assert trainer.acting == "svc:trainer" and trainer.principal is None  # only the gateway is believed
    gw = caller_from_certificate("svc:gateway", {P: ALICE})
    assert (gw.role, gw.acting, gw.tenant, gw.owner_tenant) == (GATEWAY, "alice", "acct-a", "acct-a")
    assert gw.principal == Principal(account="alice", tenant="acct-a", key_id="key-1", source="key")
    operator = Principal(account="admin", tenant="acct-o", is_operator=True).to_json()
    op = caller_from_certificate("svc:gateway", {P: operator})
    assert (op.tenant, op.owner_tenant) == ("", "acct-o")  # sees every tenant, owns what it creates
    assert caller_from_certificate("svc:gateway", {}).acting == "svc:gateway"
    bad = ["alice", "{}", '{"account": "bad name", "tenant": "t"}', '{"account": "a", "tenant": "t", "source": "x"}',
           '{"account": "a", "tenant": "t", "is_operator": "yes"}', "[1]", "x" * 5000]
    for claimed in bad:
        with pytest.raises(Unauthenticated):
            caller_from_certificate("svc:gateway", {P: claimed})
    for unknown in ("svc:evil", "root", "node"):
        with pytest.raises(Unauthenticated):
            caller_from_certificate(unknown, {})


def test_access_table_denies_what_it_does_not_allow() -> None:
    access = Access({"/S/Manage": [GATEWAY, ADMIN], "/S/Beat": [NODE], "/S/Boot": [ANONYMOUS], "/S/Health": [ANY_AUTHENTICATED]})
    admin, node, gw = (caller_from_certificate(cn, {}) for cn in ("admin", "node:n-1", "svc:gateway"))
    anon = caller_from_certificate(None, {})
    access.check("/S/Manage", admin)
    access.check("/S/Manage", gw)
    access.check("/S/Beat", node)
    access.check("/S/Boot", anon)
    access.check("/S/Health", node)
    with pytest.raises(PermissionDenied):
        access.check("/S/Manage", node)
    with pytest.raises(PermissionDenied):
        access.check("/S/Beat", admin)  # admin gets only what the table gives it
    with pytest.raises(Unauthenticated):
        access.check("/S/Manage", anon)
    with pytest.raises(Unauthenticated):
        access.check("/S/Health", anon)
    with pytest.raises(PermissionDenied):
        access.check("/S/Unlisted", admin)


def test_every_commit_says_who_acted() -> None:
    """The commit envelope's "by": the principal the gateway named, else the calling component."""
    from capstan_core.contracts.training import TrainingTaskEnded
    from capstan_core.eventstore import decode_commit, encode_commit
    from capstan_core.identity import reset_caller, set_caller

    ev = TrainingTaskEnded(task_id="train-1", status="Succeeded", exit_code=0, at_ms=1)
    token = set_caller(caller_from_certificate("svc:gateway", {P: ALICE}))
    try:
        data = encode_commit([ev], 5)
    finally:
        reset_caller(token)
    by = decode_commit(1, "capstan.evt.train.train-1", data, None)[0].by
    assert by == {"account": "alice", "tenant": "acct-a", "key_id": "key-1", "source": "key", "is_operator": False}
    assert decode_commit(2, "s", encode_commit([ev], 5), None)[0].by == {"caller": "platform"}
    assert decode_commit(3, "s", b'{"t":1,"events":[' + data.split(b'"events":[', 1)[1], None)[0].by == {}
