"""Resource groups (SPEC §7.1): API models and their protobuf conversions."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, Field, StringConstraints

from capstan_proto import scheduler_pb2

from .common import (
    FormRegion,
    Page,
    RequestModel,
    Tags,
    dump_json_object,
    from_ms_required,
    load_json_object,
    region_field,
)

ResourceGroupName = Annotated[str, StringConstraints(min_length=1, max_length=60)]


class ResourceGroupCreate(RequestModel):
    name: ResourceGroupName
    tags: Tags = Field(default_factory=dict)
    policy: dict[str, Any] | None = Field(
        default=None, description="scheduling policy (SPEC §7.2); null: the default policy"
    )
    description: Annotated[str, StringConstraints(max_length=500)] = ""
    region: FormRegion = ""

    def to_proto(self, *, idempotency_key: str) -> scheduler_pb2.CreateResourceGroupRequest:
        return scheduler_pb2.CreateResourceGroupRequest(
            name=self.name,
            description=self.description,
            tags=self.tags,
            policy_json=dump_json_object(self.policy, "body.policy"),
            idempotency_key=idempotency_key,
        )


class ResourceGroupUpdate(RequestModel):
    """Fields left out stay as they are; ``tags`` replaces the group's tags whole; ``policy: null``
    resets the scheduling policy to the default."""

    name: ResourceGroupName | None = None
    description: Annotated[str, StringConstraints(max_length=500)] | None = None
    tags: Tags | None = None
    policy: dict[str, Any] | None = Field(default=None, description="scheduling policy (SPEC §7.2)")

    def to_proto(self, rg_id: str) -> scheduler_pb2.UpdateResourceGroupRequest:
        req = scheduler_pb2.UpdateResourceGroupRequest(id=rg_id)
        if self.name is not None:
            req.name = self.name
        if self.description is not None:
            req.description = self.description
        if self.tags is not None:
            req.set_tags = True
            req.tags.update(self.tags)
        if "policy" in self.model_fields_set:
            req.policy_json = dump_json_object(self.policy, "body.policy")
        return req


class ResourceGroup(BaseModel):
    id: str
    name: str
    tags: dict[str, str]
    policy: dict[str, Any]
    description: str
    creator: str
    created_at: datetime
    node_count: int
    tenant: str = Field(description="the main account that owns it")
    shared_with: list[str] = Field(description="other tenants the operator shared it with")
    region: str = region_field()

    @classmethod
    def from_proto(cls, rg: scheduler_pb2.ResourceGroup) -> ResourceGroup:
        return cls(
            id=rg.id,
            name=rg.name,
            tags=dict(rg.tags),
            policy=load_json_object(rg.policy_json),
            description=rg.description,
            creator=rg.creator,
            created_at=from_ms_required(rg.created_at_ms),
            node_count=rg.node_count,
            tenant=rg.tenant,
            shared_with=list(rg.shared_with),
        )


class ResourceGroupList(Page[ResourceGroup]):
    @classmethod
    def from_proto(cls, resp: scheduler_pb2.ListResourceGroupsResponse) -> ResourceGroupList:
        return cls(
            items=[ResourceGroup.from_proto(rg) for rg in resp.items],
            next_page_token=resp.next_page_token,
            total=resp.total,
        )


class ResourceGroupShares(RequestModel):
    tenants: Annotated[list[Annotated[str, StringConstraints(min_length=1, max_length=40)]], Field(max_length=100)] = Field(
        description="the whole list of other tenants (main account ids) that may use the group")
