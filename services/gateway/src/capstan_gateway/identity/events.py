"""Identity changes into the event log (issue #8): the gateway appends what its store's outbox holds.

The identity store is the source of truth: each change writes its facts (``capstan_core.contracts.identity``,
encoded with the acting principal as ``by``) to the outbox in the change's own transaction. This loop
appends them in order to ``capstan.evt.account.<id>`` / ``capstan.evt.key.<id>`` (``Nats-Msg-Id``: the
row's id, so a retry after a lost acknowledgement appends nothing twice) and removes each once
acknowledged; while NATS is away they wait in the outbox. ``GET /api/v1/audit/events`` then shows them
like every other commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from capstan_core import credentials
from capstan_core.eventstore import HDR_MSG_ID
from capstan_core.service import connect_nats

from ..settings import GatewaySettings
from .store import IdentityStore

log = logging.getLogger(__name__)

RETRY_S = 1.0


class IdentityEventPublisher:
    def __init__(self, store: IdentityStore, js: JetStreamContext, nc: NatsClient | None = None) -> None:
        self.store = store
        self.js = js
        self.nc = nc
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, store: IdentityStore, settings: GatewaySettings) -> IdentityEventPublisher:
        creds = credentials.load(settings.secrets_path, "gateway").nats
        nc = await connect_nats(settings.nats_url, "gateway-identity", creds)
        publisher = cls(store, nc.jetstream(), nc)
        store.on_recorded = publisher.wake
        publisher._task = asyncio.create_task(publisher._run(), name="identity-events")
        return publisher

    def wake(self) -> None:
        """A change was recorded (called from whichever thread made it)."""
        self._loop.call_soon_threadsafe(self._wake.set)

    async def flush(self) -> int:
        """Append what the outbox holds, in order; how many were appended. Stops at the first failure
        (the rest waits, in order, for the next round)."""
        done = 0
        while True:
            rows = await asyncio.to_thread(self.store.pending_events)
            if not rows:
                return done
            for seq, msg_id, subject, commit in rows:
                await self.js.publish(subject, commit, headers={HDR_MSG_ID: msg_id})
                await asyncio.to_thread(self.store.events_appended, seq)
                done += 1

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), RETRY_S)
            self._wake.clear()
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # NATS away for a while: the facts wait in the outbox
                log.warning("identity changes not yet appended to the event log: %s", e)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            await asyncio.wait_for(self.flush(), 5)
        except Exception as e:
            log.warning("identity changes left in the outbox at stop (appended at the next start): %s", e)
        if self.nc is not None:
            await self.nc.close()
        self.store.on_recorded = None
