"""The identity store: accounts (main = tenant, sub-accounts, collaborators), API keys, custom policies,
and the audit records of what each principal asked for.

Secrets: passwords are kept as argon2id hashes, API key secrets as SHA-256 digests; a secret is returned
once, by the call that makes it, and never logged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, and_, delete, func, insert, select, update

from capstan_core import authz, identity
from capstan_core.contracts import identity as facts
from capstan_core.db import make_engine, upgrade
from capstan_core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from capstan_core.events import Event
from capstan_core.eventstore import encode_commit
from capstan_core.ids import new_id
from capstan_core.streams import event_subject

from . import credentials as cred
from .tables import accounts, api_keys, audit, outbox, policies

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent.parent / "migrations"
KINDS = ("main", "sub", "collaborator")
OPERATOR_NAME = "admin"
MAX_KEYS_PER_ACCOUNT = 20


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Account:
    id: str
    name: str
    kind: str
    tenant: str
    enabled: bool
    is_operator: bool
    session_epoch: int
    policies: tuple[str, ...]
    description: str
    created_by: str
    created_at_ms: int
    has_password: bool = False

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "kind": self.kind, "tenant": self.tenant, "enabled": self.enabled,
            "is_operator": self.is_operator, "policies": list(self.policies), "description": self.description,
            "has_password": self.has_password, "created_by": self.created_by, "created_at_ms": self.created_at_ms,
        }


def _account(row: Any) -> Account:
    return Account(
        id=row["id"], name=row["name"], kind=row["kind"], tenant=row["tenant"], enabled=bool(row["enabled"]),
        is_operator=bool(row["is_operator"]), session_epoch=row["session_epoch"],
        policies=tuple(json.loads(row["policies"])), description=row["description"], created_by=row["created_by"],
        created_at_ms=row["created_at_ms"], has_password=row["password_hash"] is not None,
    )


@dataclass(frozen=True)
class Key:
    id: str
    account_id: str
    enabled: bool
    expires_at_ms: int | None
    description: str
    created_at_ms: int

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "account_id": self.account_id, "enabled": self.enabled,
                "expires_at_ms": self.expires_at_ms, "description": self.description,
                "created_at_ms": self.created_at_ms}


def _key(row: Any) -> Key:
    return Key(id=row["id"], account_id=row["account_id"], enabled=bool(row["enabled"]),
               expires_at_ms=row["expires_at_ms"], description=row["description"], created_at_ms=row["created_at_ms"])


@dataclass(frozen=True)
class CustomPolicy:
    id: str
    tenant: str
    name: str
    statements: tuple[authz.Statement, ...]
    description: str
    created_by: str
    created_at_ms: int

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "tenant": self.tenant, "name": self.name,
                "statements": authz.statements_json(self.statements), "description": self.description,
                "created_by": self.created_by, "created_at_ms": self.created_at_ms}


@dataclass(frozen=True)
class AuditRecord:
    account: str
    tenant: str
    key_id: str
    source: str
    action: str
    object: str
    allowed: bool
    detail: str = ""
    at_ms: int = field(default_factory=now_ms)


def _actor() -> bytes:
    """Who acts, for a commit's ``by``: the request's principal, else the gateway itself (first start)."""
    p = identity.acting_principal()
    return p.to_json().encode() if p is not None else json.dumps({"caller": identity.GATEWAY}).encode()


class IdentityStore:
    """``record_events``: each change also writes its facts (``capstan_core.contracts.identity``) to the
    outbox, in the same transaction, for the gateway to append to the event log (``on_recorded`` is
    called after such a change commits)."""

    def __init__(self, engine: Engine, *, record_events: bool = False) -> None:
        self.engine = engine
        upgrade(MIGRATIONS, engine)  # the gateway's own Alembic migrations, applied at every start
        self._operator_tenant = ""
        self.version = 0  # grows with every change of an account, key or policy (caches compare it)
        self.record_events = record_events
        self.on_recorded: Callable[[], None] | None = None

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        with self.engine.begin() as c:
            yield c
        self.version += 1
        if self.record_events and self.on_recorded is not None:
            self.on_recorded()

    def _note(self, c: Connection, kind: str, object_id: str, *events: Event) -> None:
        """The facts of a change, on the object's subject, in the change's transaction."""
        if not self.record_events:
            return
        at = now_ms()
        c.execute(insert(outbox).values(msg_id=new_id("idevt", 16), subject=event_subject(kind, object_id),
                                        commit=encode_commit(events, at, by=_actor()).decode(), at_ms=at))

    def pending_events(self, limit: int = 100) -> list[tuple[int, str, str, bytes]]:
        """The oldest facts not yet in the log: (seq, msg id, subject, encoded commit)."""
        with self.engine.connect() as c:
            rows = c.execute(select(outbox.c.seq, outbox.c.msg_id, outbox.c.subject, outbox.c.commit)
                             .order_by(outbox.c.seq).limit(limit)).all()
        return [(int(seq), str(msg_id), str(subject), str(commit).encode()) for seq, msg_id, subject, commit in rows]

    def events_appended(self, up_to_seq: int) -> None:
        with self.engine.begin() as c:
            c.execute(delete(outbox).where(outbox.c.seq <= up_to_seq))

    @classmethod
    def open(cls, data_dir: Path, url: str = "", *, record_events: bool = False) -> IdentityStore:
        return cls(make_engine(url or f"sqlite:///{data_dir / 'identity.db'}"), record_events=record_events)

    def close(self) -> None:
        self.engine.dispose()

    # --- accounts
    def operator_tenant(self) -> str:
        if not self._operator_tenant:
            with self.engine.connect() as c:
                row = c.execute(select(accounts.c.tenant).where(accounts.c.is_operator.is_(True))).first()
            self._operator_tenant = row[0] if row else ""
        return self._operator_tenant

    def has_accounts(self) -> bool:
        with self.engine.connect() as c:
            return bool(c.execute(select(func.count()).select_from(accounts)).scalar())

    def create_account(
        self, *, name: str, kind: str, tenant: str = "", password: str | None = None, policies: Sequence[str] = (),
        description: str = "", created_by: str = "", is_operator: bool = False,
    ) -> Account:
        if kind not in KINDS:
            raise InvalidArgument(f"kind: one of {', '.join(KINDS)}")
        account_id = new_id("acct")
        tenant = account_id if kind == "main" else tenant
        if not tenant:
            raise InvalidArgument("a sub-account or collaborator belongs to a main account")
        self.check_policies(tenant, policies)
        created_at = now_ms()
        row = {
            "id": account_id, "name": name, "kind": kind, "tenant": tenant, "enabled": True,
            "is_operator": is_operator, "password_hash": cred.hash_password(password) if password else None,
            "session_epoch": 0, "policies": json.dumps(list(policies)), "description": description,
            "created_by": created_by or account_id, "created_at_ms": created_at,
        }
        with self._write() as c:
            if c.execute(select(accounts.c.id).where(accounts.c.name == name)).first():
                raise AlreadyExists(f"an account named {name!r} exists")
            c.execute(insert(accounts).values(**row))
            self._note(c, facts.ACCOUNT, account_id, facts.AccountCreated(
                account_id=account_id, name=name, kind=kind, tenant=tenant, policies=list(policies),
                at_ms=created_at))
        return self.get_account(account_id)

    def get_account(self, account_id: str) -> Account:
        with self.engine.connect() as c:
            row = c.execute(select(accounts).where(accounts.c.id == account_id)).mappings().first()
        if row is None:
            raise NotFound(f"account {account_id} not found")
        return _account(row)

    def find_account(self, account_id: str) -> Account | None:
        try:
            return self.get_account(account_id)
        except NotFound:
            return None

    def account_by_name(self, name: str) -> tuple[Account, str | None] | None:
        with self.engine.connect() as c:
            row = c.execute(select(accounts).where(accounts.c.name == name)).mappings().first()
        return (_account(row), row["password_hash"]) if row else None

    def list_accounts(self, tenant: str = "") -> list[Account]:
        q = select(accounts).order_by(accounts.c.created_at_ms, accounts.c.id)
        if tenant:
            q = q.where(accounts.c.tenant == tenant)
        with self.engine.connect() as c:
            return [_account(r) for r in c.execute(q).mappings()]

    def update_account(
        self, account_id: str, *, enabled: bool | None = None, description: str | None = None,
        policies: Sequence[str] | None = None,
    ) -> Account:
        acct = self.get_account(account_id)
        values: dict[str, Any] = {}
        if enabled is not None:
            values["enabled"] = enabled
        if description is not None:
            values["description"] = description
        if policies is not None:
            if acct.kind == "main":
                raise FailedPrecondition("a main account holds every right on its tenant; policies attach to sub-accounts")
            self.check_policies(acct.tenant, policies)
            values["policies"] = json.dumps(list(policies))
        if values:
            with self._write() as c:
                c.execute(update(accounts).where(accounts.c.id == account_id).values(**values))
                at, t = now_ms(), acct.tenant
                if enabled is not None and enabled != acct.enabled:
                    change = facts.AccountEnabled if enabled else facts.AccountDisabled
                    self._note(c, facts.ACCOUNT, account_id, change(account_id=account_id, tenant=t, at_ms=at))
                if policies is not None and list(policies) != list(acct.policies):
                    self._note(c, facts.ACCOUNT, account_id, facts.AccountPoliciesChanged(
                        account_id=account_id, tenant=t, attached=[p for p in policies if p not in acct.policies],
                        detached=[p for p in acct.policies if p not in policies], policies=list(policies), at_ms=at))
        return self.get_account(account_id)

    def set_password(self, account_id: str, password: str) -> None:
        acct = self.get_account(account_id)
        with self._write() as c:
            c.execute(update(accounts).where(accounts.c.id == account_id).values(
                password_hash=cred.hash_password(password), session_epoch=accounts.c.session_epoch + 1))
            self._note(c, facts.ACCOUNT, account_id,
                       facts.PasswordChanged(account_id=account_id, tenant=acct.tenant, at_ms=now_ms()))

    def end_sessions(self, account_id: str) -> None:
        with self._write() as c:
            c.execute(update(accounts).where(accounts.c.id == account_id).values(
                session_epoch=accounts.c.session_epoch + 1))

    def delete_account(self, account_id: str) -> Account:
        acct = self.get_account(account_id)
        if acct.is_operator:
            raise FailedPrecondition("the operator's account cannot be deleted")
        with self._write() as c:
            if acct.kind == "main" and c.execute(
                select(func.count()).select_from(accounts).where(and_(accounts.c.tenant == acct.tenant,
                                                                       accounts.c.id != acct.id))
            ).scalar():
                raise FailedPrecondition("delete the main account's sub-accounts and collaborators first")
            ids = select(accounts.c.id).where(accounts.c.id == account_id)
            keys = c.execute(select(api_keys.c.id).where(api_keys.c.account_id.in_(ids))).scalars().all()
            c.execute(delete(api_keys).where(api_keys.c.account_id.in_(ids)))
            c.execute(delete(accounts).where(accounts.c.id == account_id))
            at = now_ms()
            for key_id in keys:
                self._note(c, facts.KEY, key_id,
                           facts.KeyDeleted(key_id=key_id, account_id=account_id, tenant=acct.tenant, at_ms=at))
            self._note(c, facts.ACCOUNT, account_id,
                       facts.AccountDeleted(account_id=account_id, tenant=acct.tenant, at_ms=at))
        return acct

    # --- API keys
    def create_key(self, account_id: str, *, description: str = "", expires_at_ms: int | None = None) -> tuple[Key, str]:
        """A new key and its token (``ck.<id>.<secret>``): the only time the secret exists outside a hash."""
        acct = self.get_account(account_id)
        if expires_at_ms is not None and expires_at_ms <= now_ms():
            raise InvalidArgument("expires_at is in the past")
        key_id, secret = new_id("key", 12), cred.new_key_secret()
        with self._write() as c:
            n = c.execute(select(func.count()).select_from(api_keys).where(api_keys.c.account_id == account_id)).scalar()
            if (n or 0) >= MAX_KEYS_PER_ACCOUNT:
                raise FailedPrecondition(f"an account holds at most {MAX_KEYS_PER_ACCOUNT} keys; delete one first")
            c.execute(insert(api_keys).values(
                id=key_id, account_id=account_id, secret_sha256=cred.secret_digest(secret), enabled=True,
                expires_at_ms=expires_at_ms, description=description, created_at_ms=now_ms()))
            self._note(c, facts.KEY, key_id, facts.KeyCreated(
                key_id=key_id, account_id=account_id, tenant=acct.tenant, expires_at_ms=expires_at_ms or 0,
                at_ms=now_ms()))
        return self.get_key(key_id), cred.key_token(key_id, secret)

    def get_key(self, key_id: str) -> Key:
        with self.engine.connect() as c:
            row = c.execute(select(api_keys).where(api_keys.c.id == key_id)).mappings().first()
        if row is None:
            raise NotFound(f"key {key_id} not found")
        return _key(row)

    def key_secret_digest(self, key_id: str) -> tuple[Key, str] | None:
        with self.engine.connect() as c:
            row = c.execute(select(api_keys).where(api_keys.c.id == key_id)).mappings().first()
        return (_key(row), row["secret_sha256"]) if row else None

    def list_keys(self, account_id: str) -> list[Key]:
        with self.engine.connect() as c:
            rows = c.execute(select(api_keys).where(api_keys.c.account_id == account_id)
                             .order_by(api_keys.c.created_at_ms, api_keys.c.id)).mappings()
            return [_key(r) for r in rows]

    def update_key(self, key_id: str, *, enabled: bool | None = None, description: str | None = None) -> Key:
        key = self.get_key(key_id)
        values: dict[str, Any] = {}
        if enabled is not None:
            values["enabled"] = enabled
        if description is not None:
            values["description"] = description
        if values:
            with self._write() as c:
                c.execute(update(api_keys).where(api_keys.c.id == key_id).values(**values))
                if enabled is not None and enabled != key.enabled:
                    change = facts.KeyEnabled if enabled else facts.KeyDisabled
                    self._note(c, facts.KEY, key_id, change(key_id=key_id, account_id=key.account_id,
                                                            tenant=self._tenant_of(c, key.account_id), at_ms=now_ms()))
        return self.get_key(key_id)

    def delete_key(self, key_id: str) -> Key:
        key = self.get_key(key_id)
        with self._write() as c:
            tenant = self._tenant_of(c, key.account_id)
            c.execute(delete(api_keys).where(api_keys.c.id == key_id))
            self._note(c, facts.KEY, key_id,
                       facts.KeyDeleted(key_id=key_id, account_id=key.account_id, tenant=tenant, at_ms=now_ms()))
        return key

    @staticmethod
    def _tenant_of(c: Connection, account_id: str) -> str:
        return str(c.execute(select(accounts.c.tenant).where(accounts.c.id == account_id)).scalar() or "")

    # --- policies
    def check_policies(self, tenant: str, names: Sequence[str]) -> None:
        if len(names) > 20:
            raise InvalidArgument("policies: at most 20")
        for name in names:
            if name not in authz.PRESETS and self._policy_row(name, tenant) is None:
                raise InvalidArgument(f"policies: {name!r} is neither a preset ({', '.join(authz.PRESETS)}) "
                                      "nor a custom policy of this tenant")

    def create_policy(self, *, tenant: str, name: str, statements: Any, description: str, created_by: str) -> CustomPolicy:
        if name in authz.PRESETS:
            raise AlreadyExists(f"{name} is a preset policy")
        try:
            parsed = authz.parse_statements(statements)
        except ValueError as e:
            raise InvalidArgument(str(e)) from None
        policy_id = new_id("pol")
        with self._write() as c:
            if c.execute(select(policies.c.id).where(and_(policies.c.tenant == tenant, policies.c.name == name))).first():
                raise AlreadyExists(f"a policy named {name!r} exists")
            c.execute(insert(policies).values(
                id=policy_id, tenant=tenant, name=name, statements=json.dumps(authz.statements_json(parsed)),
                description=description, created_by=created_by, created_at_ms=now_ms()))
            self._note(c, facts.POLICY, policy_id, facts.PolicyCreated(
                policy_id=policy_id, tenant=tenant, name=name, statements=authz.statements_json(parsed), at_ms=now_ms()))
        return self.get_policy(policy_id)

    def _policy_row(self, policy_id: str, tenant: str = "") -> Any:
        q = select(policies).where(policies.c.id == policy_id)
        if tenant:
            q = q.where(policies.c.tenant == tenant)
        with self.engine.connect() as c:
            return c.execute(q).mappings().first()

    def get_policy(self, policy_id: str) -> CustomPolicy:
        row = self._policy_row(policy_id)
        if row is None:
            raise NotFound(f"policy {policy_id} not found")
        return CustomPolicy(
            id=row["id"], tenant=row["tenant"], name=row["name"],
            statements=authz.parse_statements(json.loads(row["statements"])), description=row["description"],
            created_by=row["created_by"], created_at_ms=row["created_at_ms"])

    def list_policies(self, tenant: str = "") -> list[CustomPolicy]:
        q = select(policies.c.id).order_by(policies.c.created_at_ms, policies.c.id)
        if tenant:
            q = q.where(policies.c.tenant == tenant)
        with self.engine.connect() as c:
            ids = [r[0] for r in c.execute(q)]
        return [self.get_policy(i) for i in ids]

    def delete_policy(self, policy_id: str) -> CustomPolicy:
        p = self.get_policy(policy_id)
        users = [a.id for a in self.list_accounts(p.tenant) if policy_id in a.policies]
        if users:
            raise FailedPrecondition(f"policy {policy_id} is attached to {', '.join(users)}; detach it first")
        with self._write() as c:
            c.execute(delete(policies).where(policies.c.id == policy_id))
            self._note(c, facts.POLICY, policy_id,
                       facts.PolicyDeleted(policy_id=policy_id, tenant=p.tenant, name=p.name, at_ms=now_ms()))
        return p

    def policies_of(self, acct: Account) -> list[authz.Policy]:
        """The policies an account acts under: a main account holds FullAccess on its tenant."""
        if acct.kind == "main":
            return [authz.FULL_ACCESS]
        out = []
        for name in acct.policies:
            if name in authz.PRESETS:
                out.append(authz.PRESETS[name])
            else:
                row = self._policy_row(name, acct.tenant)
                if row is not None:
                    out.append(authz.Policy(name, authz.parse_statements(json.loads(row["statements"]))))
        return out

    # --- audit
    def record(self, rec: AuditRecord) -> None:
        with self.engine.begin() as c:
            c.execute(insert(audit).values(
                at_ms=rec.at_ms, account=rec.account, tenant=rec.tenant, key_id=rec.key_id, source=rec.source,
                action=rec.action, object=rec.object[:300], allowed=rec.allowed, detail=rec.detail[:300]))

    def query_audit(
        self, *, tenant: str = "", account: str = "", action: str = "", obj: str = "", since_ms: int = 0,
        until_ms: int = 0, after_seq: int = 0, limit: int = 100,
    ) -> list[dict[str, Any]]:
        conds = [audit.c.seq > after_seq]
        if tenant:
            conds.append(audit.c.tenant == tenant)
        if account:
            conds.append(audit.c.account == account)
        if action:
            conds.append(audit.c.action == action)
        if obj:
            conds.append(audit.c.object == obj)
        if since_ms:
            conds.append(audit.c.at_ms >= since_ms)
        if until_ms:
            conds.append(audit.c.at_ms < until_ms)
        q = select(audit).where(and_(*conds)).order_by(audit.c.seq).limit(limit)
        with self.engine.connect() as c:
            return [dict(r) for r in c.execute(q).mappings()]
