"""Identity changes reach the event log through the store's outbox (#8): written in the change's
transaction, appended in order once NATS acknowledges, kept while it does not, never twice."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from capstan_core import identity
from capstan_core.eventstore import HDR_MSG_ID, decode_commit
from capstan_gateway.identity.events import IdentityEventPublisher
from capstan_gateway.identity.store import IdentityStore


class FlakyJetStream:
    """Refuses the first ``fail`` publishes (NATS away), then keeps what it is given."""

    def __init__(self, fail: int) -> None:
        self.fail = fail
        self.published: list[tuple[str, bytes, dict[str, str]]] = []

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str]) -> Any:
        if self.fail:
            self.fail -= 1
            raise TimeoutError("nats: timeout")
        self.published.append((subject, payload, headers))


async def test_changes_wait_in_the_outbox_until_appended_in_order(tmp_path: Path) -> None:
    store = IdentityStore.open(tmp_path, record_events=True)
    alice = identity.Principal(account="acct-op", tenant="acct-op", key_id="key-1")
    identity.set_acting_principal(alice)
    try:
        acct = store.create_account(name="bob", kind="sub", tenant="acct-op", password="a long enough password")
        key, secret = store.create_key(acct.id)
        store.update_key(key.id, description="only described: no event")
        store.update_key(key.id, enabled=False)
    finally:
        identity.set_acting_principal(None)
    store.delete_account(acct.id)  # no principal: the gateway itself acted
    assert len(store.pending_events()) == 5
    js = FlakyJetStream(fail=1)
    publisher = IdentityEventPublisher(store, js)  # type: ignore[arg-type]
    with pytest.raises(TimeoutError):  # the first publish fails
        await publisher.flush()
    assert len(store.pending_events()) == 5 and js.published == []  # nothing lost, nothing appended
    assert await publisher.flush() == 5 and store.pending_events() == []
    subjects = [s for s, _, _ in js.published]
    assert subjects == [f"capstan.evt.account.{acct.id}", f"capstan.evt.key.{key.id}", f"capstan.evt.key.{key.id}",
                        f"capstan.evt.key.{key.id}", f"capstan.evt.account.{acct.id}"]
    decoded = [decode_commit(i + 1, s, p, None) for i, (s, p, _) in enumerate(js.published)]
    assert [[type(r.event).__name__ for r in c] for c in decoded] == [
        ["AccountCreated"], ["KeyCreated"], ["KeyDisabled"], ["KeyDeleted"], ["AccountDeleted"]]
    assert decoded[0][0].by == json.loads(alice.to_json()) and decoded[-1][0].by == {"caller": "svc:gateway"}
    assert len({h[HDR_MSG_ID] for _, _, h in js.published}) == 5  # each its own id: a retry lands once
    text = b"\n".join(p for _, p, _ in js.published).decode()
    assert secret.split(".", 2)[2] not in text and "argon2" not in text and "a long enough password" not in text
    store.close()


async def test_without_nats_nothing_is_kept(tmp_path: Path) -> None:
    store = IdentityStore.open(tmp_path)
    store.create_account(name="carol", kind="sub", tenant="acct-op")
    assert store.pending_events() == []
    store.close()
