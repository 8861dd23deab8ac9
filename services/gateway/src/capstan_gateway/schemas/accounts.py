"""Shapes of accounts, API keys, sessions, policies and audit records (never a stored secret)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StringConstraints

from .common import RequestModel, from_ms, from_ms_required

AccountName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,59}$")]
Password = Annotated[str, StringConstraints(min_length=12, max_length=256)]
PolicyName = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Description = Annotated[str, StringConstraints(max_length=500)]


class LoginRequest(RequestModel):
    name: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    password: Annotated[str, StringConstraints(min_length=1, max_length=256)]


class Session(BaseModel):
    token: str = Field(description="send as 'Authorization: Bearer <token>'; shown once")
    expires_at: datetime
    account: Account


class AccountCreate(RequestModel):
    name: AccountName
    kind: Literal["main", "sub", "collaborator"] = "sub"
    password: Password | None = None
    policies: Annotated[list[PolicyName], Field(max_length=20)] = []
    description: Description = ""


class AccountUpdate(RequestModel):
    enabled: bool | None = None
    description: Description | None = None


class PasswordSet(RequestModel):
    password: Password


class PoliciesSet(RequestModel):
    policies: Annotated[list[PolicyName], Field(max_length=20)]


class Account(BaseModel):
    id: str
    name: str
    kind: str
    tenant: str
    enabled: bool
    is_operator: bool
    policies: list[str]
    description: str
    has_password: bool
    created_by: str
    created_at: datetime

    @classmethod
    def of(cls, d: dict[str, Any]) -> Account:
        return cls(**{k: v for k, v in d.items() if k != "created_at_ms"},
                   created_at=from_ms_required(d["created_at_ms"]))


class WhoAmI(BaseModel):
    account: Account
    key_id: str
    source: str
    operator_tenant: bool


class KeyCreate(RequestModel):
    description: Description = ""
    expires_at: datetime | None = None


class KeyUpdate(RequestModel):
    enabled: bool | None = None
    description: Description | None = None


class Key(BaseModel):
    id: str
    account_id: str
    enabled: bool
    expires_at: datetime | None
    description: str
    created_at: datetime

    @classmethod
    def of(cls, d: dict[str, Any]) -> Key:
        return cls(id=d["id"], account_id=d["account_id"], enabled=d["enabled"],
                   expires_at=from_ms(d["expires_at_ms"] or 0), description=d["description"],
                   created_at=from_ms_required(d["created_at_ms"]))


class NewKey(Key):
    token: str = Field(description="the key's token (ck.<id>.<secret>): shown this once, stored only hashed")


class Statement(RequestModel):
    effect: Literal["allow", "deny"]
    actions: Annotated[list[Annotated[str, StringConstraints(min_length=1, max_length=200)]],
                       Field(min_length=1, max_length=100)]
    resources: Annotated[list[Annotated[str, StringConstraints(min_length=1, max_length=200)]],
                         Field(min_length=1, max_length=100)] = ["*"]
    tags: Annotated[dict[Annotated[str, StringConstraints(min_length=1, max_length=128)],
                         Annotated[str, StringConstraints(max_length=256)]], Field(max_length=20)] = {}


class PolicyCreate(RequestModel):
    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,59}$")]
    statements: Annotated[list[Statement], Field(min_length=1, max_length=50)]
    description: Description = ""


class Policy(BaseModel):
    id: str
    tenant: str
    name: str
    statements: list[dict[str, Any]]
    description: str
    preset: bool
    created_by: str
    created_at: datetime | None


class AuditEntry(BaseModel):
    seq: int
    at: datetime
    account: str
    tenant: str
    key_id: str
    source: str
    action: str
    object: str
    allowed: bool
    detail: str


class AuditPage(BaseModel):
    items: list[AuditEntry]
    next_after_seq: int = Field(description="pass as after_seq for the next page; 0 on the last page")


class LoggedCommit(BaseModel):
    seq: int
    subject: str
    at: datetime
    by: dict[str, Any] = Field(description="who acted: account, tenant, key_id, source (or the platform's caller)")
    event_types: list[str]


class CommitPage(BaseModel):
    items: list[LoggedCommit]
    next_after_seq: int = Field(description="pass as after_seq to read on; 0 once the end of the log is reached")


Session.model_rebuild()
