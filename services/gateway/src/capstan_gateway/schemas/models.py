"""Models and versions of the model registry: API models and their protobuf conversions."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, Field, StringConstraints

from capstan_core.numbers import INT64_MAX
from capstan_proto import registry_pb2

from .common import Id, Page, RequestModel, Tags, from_ms_required, load_json_object

ModelName = Annotated[str, StringConstraints(min_length=1, max_length=128)]
Description = Annotated[str, StringConstraints(max_length=500)]
Text = Annotated[str, StringConstraints(max_length=256)]


class ModelCreate(RequestModel):
    name: ModelName = Field(description="letters, digits, '.', '_' or '-', starting with a letter or digit")
    description: Description = ""
    tags: Tags = Field(default_factory=dict)

    def to_proto(self, *, idempotency_key: str) -> registry_pb2.CreateModelRequest:
        return registry_pb2.CreateModelRequest(name=self.name, description=self.description, tags=self.tags,
                                               idempotency_key=idempotency_key)


class Model(BaseModel):
    id: str
    name: str
    description: str
    tags: dict[str, str]
    creator: str
    tenant: str = ""  # the main account that owns it
    created_at: datetime
    version_count: int
    latest_version: int | None = Field(description="null until a version is published")

    @classmethod
    def from_proto(cls, m: registry_pb2.Model) -> Model:
        return cls(id=m.id, name=m.name, description=m.description, tags=dict(m.tags), creator=m.creator, tenant=m.tenant,
                   created_at=from_ms_required(m.created_at_ms), version_count=m.version_count,
                   latest_version=m.latest_version or None)


class ModelList(Page[Model]):
    @classmethod
    def from_proto(cls, r: registry_pb2.ListModelsResponse) -> ModelList:
        return cls(items=[Model.from_proto(m) for m in r.items], next_page_token=r.next_page_token, total=r.total)


class ModelMetadata(RequestModel):
    framework: Text = ""
    task_type: Text = Field(default="", description='e.g. "text-generation"')
    base_model: Text = ""
    chat_template: Text = ""
    parameter_count: int = Field(default=0, ge=0, le=INT64_MAX)

    @classmethod
    def from_proto(cls, m: registry_pb2.ModelMetadata) -> ModelMetadata:
        return cls(framework=m.framework, task_type=m.task_type, base_model=m.base_model,
                   chat_template=m.chat_template, parameter_count=m.parameter_count)

    def to_proto(self) -> registry_pb2.ModelMetadata:
        return registry_pb2.ModelMetadata(**self.model_dump())


class VersionPublish(RequestModel):
    """Publish a finished (Succeeded) training task's /opt/ml/model as the model's next version."""

    task_id: Id
    instance_index: int = Field(default=0, ge=0, le=63, description="whose /opt/ml/model; 0: the master's")
    description: Description = ""
    metadata: ModelMetadata = Field(
        default_factory=ModelMetadata,
        description="non-empty fields override what the model directory's capstan_model.json says",
    )

    def to_proto(self, model_id: str, *, idempotency_key: str) -> registry_pb2.PublishVersionRequest:
        return registry_pb2.PublishVersionRequest(
            model_id=model_id, task_id=self.task_id, instance_index=self.instance_index, description=self.description,
            metadata=self.metadata.to_proto(), idempotency_key=idempotency_key)


class ModelFile(BaseModel):
    path: str
    sha256: str
    size: int


class Lineage(BaseModel):
    task_id: str
    instance_index: int
    task_name: str
    hyperparameters: dict[str, Any]
    data: dict[str, str] = Field(description="training data file -> sha256")
    image: str
    command: str


class ModelVersion(BaseModel):
    model_id: str
    model_name: str
    version: int
    description: str
    metadata: ModelMetadata
    lineage: Lineage
    files: list[ModelFile]
    size_bytes: int
    creator: str
    created_at: datetime

    @classmethod
    def from_proto(cls, v: registry_pb2.ModelVersion) -> ModelVersion:
        lin = v.lineage
        return cls(
            model_id=v.model_id, model_name=v.model_name, version=v.version, description=v.description,
            metadata=ModelMetadata.from_proto(v.metadata),
            lineage=Lineage(task_id=lin.task_id, instance_index=lin.instance_index, task_name=lin.task_name,
                            hyperparameters=load_json_object(lin.hyperparameters_json), data=dict(lin.data),
                            image=lin.image, command=lin.command),
            files=[ModelFile(path=f.path, sha256=f.sha256, size=f.size) for f in v.files], size_bytes=v.size_bytes,
            creator=v.creator, created_at=from_ms_required(v.created_at_ms),
        )


class ModelVersionList(Page[ModelVersion]):
    @classmethod
    def from_proto(cls, r: registry_pb2.ListVersionsResponse) -> ModelVersionList:
        return cls(items=[ModelVersion.from_proto(v) for v in r.items], next_page_token=r.next_page_token,
                   total=r.total)
