"""Online services (SPEC §6): request bodies of /api/v1/services. A version's form (``spec``) and the
autoscaling rules are JSON objects the inference service validates field by field (it names the field
that is wrong); answers are the service group as the inference service describes it."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints

from .common import RequestModel, Tags

Name = Annotated[str, StringConstraints(min_length=1, max_length=60)]
Description = Annotated[str, StringConstraints(max_length=500)]
Remark = Annotated[str, StringConstraints(max_length=200)]
VersionId = Annotated[str, StringConstraints(max_length=64)]
Limit = Annotated[int, Field(ge=0, le=10**12, description="0: no limit")]


class ServiceCreate(RequestModel):
    name: Name = Field(description="letters (CJK too), digits, '_' or '-', starting with a letter or a digit")
    description: Description = ""
    tags: Tags = Field(default_factory=dict)
    deployment_mode: Literal["standard", "multi-instance"] = "standard"
    auth_enabled: bool = False
    generate_key: bool = Field(False, description="create the first key (its secret is in this answer only)")
    auto_stop_at_ms: Annotated[int, Field(ge=0, le=2**62)] = 0
    spec: dict[str, Any] = Field(description="the first version's form (SPEC §6.2): runtime, model, port, "
                                             "resources, env, probes, grace_period_s, pre_stop, sidecar, replicas, ...")


class ServiceUpdate(RequestModel):
    description: Description | None = None
    tags: Tags | None = None
    auth_enabled: bool | None = Field(None, description="switch auth on or off without touching the replicas")
    group_qps_limit: Annotated[int, Field(ge=1, le=500)] | None = None
    auto_stop_at_ms: Annotated[int, Field(ge=0, le=2**62)] | None = None

    def changes(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class VersionCreate(RequestModel):
    spec: dict[str, Any]
    weight: Annotated[int, Field(ge=0, le=100)] = 0


class VersionUpdate(RequestModel):
    spec: dict[str, Any] = Field(description="the fields to change; the version's replicas are rolled to it")


class Scale(RequestModel):
    replicas: Annotated[int, Field(ge=0, le=100)]
    version_id: VersionId = Field("", description="empty: the only version")


class Autoscaling(RequestModel):
    version_id: VersionId = ""
    autoscaling: dict[str, Any] = Field(description='{"mode": "manual"} | {"mode": "time", "rules": [...]} | '
                                                    '{"mode": "hpa", "metric": ..., "target": ..., "min": .., "max": ..}')


class Weights(RequestModel):
    weights: Annotated[dict[VersionId, Annotated[int, Field(ge=0, le=100)]], Field(min_length=1, max_length=10)]


class KeyCreate(RequestModel):
    remark: Remark = ""
    tokens_per_minute: Limit = 0
    tokens_per_day: Limit = 0


class KeyUpdate(RequestModel):
    enabled: bool | None = None
    remark: Remark | None = None
    tokens_per_minute: Limit | None = None
    tokens_per_day: Limit | None = None

    def changes(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)
