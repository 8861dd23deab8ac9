"""What the services set aside from the event log, and their counters (issue #7): API models."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from capstan_proto import admin_pb2

from .common import from_ms_required


class QuarantinedCommit(BaseModel):
    service: str
    seq: int = Field(description="the message's stream sequence")
    subject: str
    projection: str = Field(description="the projection runner that set it aside")
    kind: str = Field(description="oversized, undecodable, newer_version, invalid or apply_failed")
    error: str
    stored_at: datetime = Field(description="when the event stream stored the message")

    @classmethod
    def from_proto(cls, service: str, c: admin_pb2.QuarantinedCommit) -> QuarantinedCommit:
        return cls(service=service, seq=c.seq, subject=c.subject, projection=c.projection, kind=c.kind, error=c.error,
                   stored_at=from_ms_required(c.stored_at_ms))


class ServiceCounter(BaseModel):
    service: str
    name: str
    labels: dict[str, str]
    value: int


class ServiceReport(BaseModel):
    service: str
    reachable: bool
    error: str = Field(description="why the service could not be asked; empty when reachable")
    quarantined: int = Field(description="commits this service has set aside in all")


class QuarantineReport(BaseModel):
    items: list[QuarantinedCommit] = Field(description="per service, in stream order (up to `limit` each)")
    counters: list[ServiceCounter] = Field(description="each service's counters since it started")
    services: list[ServiceReport]
