"""Node credentials: join tokens (create, list, revoke) and the bootstrap that signs a node's
certificate, plus the rule that a node acts only for itself.

The scheduler is the only service holding the platform CA's key: it signs certificates whose
common name is ``node:<node-id>``, the id being the one ``JoinNode`` derives from the token's
resource group and the node's name. What the node asked for in its CSR is ignored.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import secrets
from functools import singledispatchmethod
from typing import Any

from sqlalchemy import Connection, select, update

from capstan_core import credentials, pki
from capstan_core.clock import Clock
from capstan_core.command import execute
from capstan_core.contracts.scheduling import JOIN_TOKEN, JoinTokenCreated, JoinTokenRevoked, JoinTokenUsed
from capstan_core.errors import InvalidArgument, NotFound, PermissionDenied
from capstan_core.events import Event
from capstan_core.eventstore import RecordedEvent
from capstan_core.identity import Caller, current_caller
from capstan_core.ids import new_id, stable_id
from capstan_core.projection import Projection
from capstan_core.service import ServiceContext
from capstan_core.streams import event_subject

from .domain import join_tokens as jt
from .domain.names import check_name
from .tables import join_tokens, resource_groups

NODE_NAME_MAX = 60
AGENT_KINDS = ("trainer", "inference")


def node_id_for(rg_id: str, name: str) -> str:
    """The id a node of ``name`` in group ``rg_id`` has, whoever asks (join and bootstrap agree)."""
    return stable_id("node", rg_id, name)


def require_own_node(node_id: str, caller: Caller | None = None) -> None:
    """A node's certificate lets it act for itself only; the operator may act for any node."""
    caller = caller or current_caller()
    if caller.kind == "node" and caller.node_id != node_id:
        raise PermissionDenied(f"{caller.name} may act only for itself, not for node {node_id or '(none)'}")


class JoinTokenProjection(Projection):
    """The join-token list (never a secret: only the public id and its bookkeeping)."""

    def apply(self, conn: Connection, rec: RecordedEvent) -> None:
        self._apply(rec.event, conn)

    @singledispatchmethod
    def _apply(self, event: Event, conn: Connection) -> None:
        """Other events are not about join tokens."""

    @_apply.register
    def _(self, e: JoinTokenCreated, conn: Connection) -> None:
        conn.execute(join_tokens.insert().values(
            id=e.token_id, resource_group_id=e.resource_group_id, description=e.description,
            created_by=e.created_by, created_at_ms=e.at_ms, expires_at_ms=e.expires_at_ms, revoked=False, uses=0,
            last_used_at_ms=0,
        ))

    @_apply.register
    def _(self, e: JoinTokenRevoked, conn: Connection) -> None:
        conn.execute(update(join_tokens).where(join_tokens.c.id == e.token_id).values(revoked=True))

    @_apply.register
    def _(self, e: JoinTokenUsed, conn: Connection) -> None:
        conn.execute(
            update(join_tokens).where(join_tokens.c.id == e.token_id)
            .values(uses=join_tokens.c.uses + 1, last_used_at_ms=e.at_ms)
        )


class NodeAuth:
    def __init__(self, ctx: ServiceContext, clock: Clock) -> None:
        self.ctx = ctx
        self.clock = clock
        self._ca: pki.KeyPair | None = None

    def _subject(self, token_id: str) -> str:
        return event_subject(JOIN_TOKEN, token_id)

    def _live_group(self, rg_id: str) -> None:
        with self.ctx.engine.connect() as conn:
            found = conn.execute(select(resource_groups.c.id).where(resource_groups.c.id == rg_id)).first()
        if found is None:
            raise NotFound(f"resource group {rg_id} does not exist")

    async def create(self, *, rg_id: str, description: str, ttl_s: int, idempotency_key: str) -> dict[str, Any]:
        """A new token; the answer is the only place its secret ever appears."""
        self._live_group(rg_id)
        by = current_caller().acting
        token_id = stable_id("jt", by, idempotency_key) if idempotency_key else new_id("jt")
        secret = secrets.token_urlsafe(24)
        now = self.clock.now_ms()
        outcome = await execute(
            self.ctx.store, self._subject(token_id), jt.fold,
            functools.partial(jt.decide_create, token_id=token_id, secret=secret, rg_id=rg_id,
                              description=description, ttl_s=ttl_s, created_by=by, now_ms=now),
            msg_id=f"create-jt:{token_id}",
        )
        if outcome.seq:
            await self.ctx.await_projection(outcome.seq)
        view = self.get(token_id)
        if outcome.new_events:  # a retried create gets the record, but the secret was shown once only
            view["token"] = jt.format_token(token_id, secret)
        return view

    async def revoke(self, token_id: str) -> dict[str, Any]:
        now = self.clock.now_ms()
        outcome = await execute(
            self.ctx.store, self._subject(token_id), jt.fold,
            functools.partial(jt.decide_revoke, token_id=token_id, by=current_caller().acting, now_ms=now),
        )
        if outcome.seq:
            await self.ctx.await_projection(outcome.seq)
        return self.get(token_id)

    def get(self, token_id: str) -> dict[str, Any]:
        with self.ctx.engine.connect() as conn:
            row = conn.execute(select(join_tokens).where(join_tokens.c.id == token_id)).mappings().first()
        if row is None:
            raise NotFound(f"join token {token_id} does not exist")
        return {**dict(row), "token": ""}

    def list(self, rg_id: str) -> list[dict[str, Any]]:
        q = select(join_tokens).order_by(join_tokens.c.created_at_ms.desc(), join_tokens.c.id)
        if rg_id:
            q = q.where(join_tokens.c.resource_group_id == rg_id)
        with self.ctx.engine.connect() as conn:
            return [{**dict(r), "token": ""} for r in conn.execute(q).mappings()]

    def _ca_pair(self) -> pki.KeyPair:
        if self._ca is None:
            self._ca = credentials.load_ca(self.ctx.settings.secrets_path)
        return self._ca

    async def bootstrap(self, *, join_token: str, node_name: str, agent_kind: str, csr_pem: bytes) -> dict[str, Any]:
        """Trade a join token for a node certificate, the CA and the agents' NATS credentials."""
        token_id, secret = jt.parse_token(join_token)
        check_name(node_name, field="node_name", max_len=NODE_NAME_MAX)
        if agent_kind not in AGENT_KINDS:
            raise InvalidArgument(f"agent_kind must be one of {', '.join(AGENT_KINDS)}", field="agent_kind")
        if not csr_pem or len(csr_pem) > jt.MAX_CSR_BYTES:
            raise InvalidArgument(f"csr_pem must be a PEM CSR of at most {jt.MAX_CSR_BYTES} bytes", field="csr_pem")
        now = self.clock.now_ms()
        recorded, _ = await self.ctx.store.load(self._subject(token_id))
        token = jt.check_usable(jt.fold([r.event for r in recorded]), secret=secret, now_ms=now)
        self._live_group(token.resource_group_id)
        node_id = node_id_for(token.resource_group_id, node_name)
        try:
            cert = await asyncio.to_thread(pki.sign_csr, self._ca_pair(), csr_pem, f"node:{node_id}")
        except ValueError as e:
            raise InvalidArgument(str(e), field="csr_pem") from e
        digest = hashlib.sha256(cert).hexdigest()
        outcome = await execute(
            self.ctx.store, self._subject(token_id), jt.fold,
            functools.partial(jt.decide_use, token_id=token_id, node_id=node_id, node_name=node_name,
                              certificate_sha256=digest, now_ms=now),
        )
        await self.ctx.await_projection(outcome.seq)
        nats = credentials.load_nats(self.ctx.settings.secrets_path, "agent")
        return {
            "node_id": node_id, "resource_group_id": token.resource_group_id, "certificate_pem": cert,
            "ca_pem": self._ca_pair().cert_pem, "nats_user": nats.user, "nats_password": nats.password,
        }
