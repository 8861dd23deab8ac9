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
    caller_from_certificate,
)

P = "x-capstan-principal"


def test_identities_from_common_names() -> None:
    assert caller_from_certificate(None, {}).kind == "anonymous"
    assert caller_from_certificate("admin", {P: "mallory"}).acting == "admin"
    node = caller_from_certificate("node:node-abc", {P: "alice"})
    assert (node.kind, node.node_id, node.acting) == ("node", "node-abc", "node:node-abc")  # a node claims nothing
    trainer = caller_from_certificate("svc:trainer", {P: "alice"})
    assert trainer.acting == "svc:trainer"  # only the gateway is believed about whom it acts for
    gw = caller_from_certificate("svc:gateway", {P: "alice"})
    assert (gw.role, gw.acting) == (GATEWAY, "alice")
    assert caller_from_certificate("svc:gateway", {}).acting == "svc:gateway"
    with pytest.raises(Unauthenticated):
        caller_from_certificate("svc:gateway", {P: "bad name with spaces"})
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
