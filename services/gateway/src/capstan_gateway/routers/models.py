"""/api/v1/models: the model registry (owned by the registry service)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Path, Query
from fastapi.responses import StreamingResponse

from capstan_proto import registry_pb2

from ..deps import CurrentPrincipal, IdempotencyKey, PageRequest, Registry
from ..schemas.models import Model, ModelCreate, ModelList, ModelVersion, ModelVersionList, VersionPublish
from . import api_router

router = api_router("models")

ModelRef = Annotated[str, Path(min_length=1, max_length=128, description="the model's id or name")]
Version = Annotated[int, Path(ge=1, le=2**31 - 1)]
FilePath = Annotated[str, Path(min_length=1, max_length=1024, description="a file's path inside the version")]


@router.post("", status_code=201, summary="Create a model")
async def create_model(body: ModelCreate, registry: Registry, idempotency_key: IdempotencyKey = "") -> Model:
    return Model.from_proto(await registry.create_model(body.to_proto(idempotency_key=idempotency_key)))


@router.get("", summary="List or search models")
async def list_models(
    principal: CurrentPrincipal,
    registry: Registry,
    page: PageRequest,
    query: Annotated[str, Query(max_length=128, description="case-insensitive substring of name, description, tags")] = "",
    only_mine: bool = False,
) -> ModelList:
    req = registry_pb2.ListModelsRequest(page=page, query=query, creator=principal.name if only_mine else "")
    return ModelList.from_proto(await registry.list_models(req))


@router.get("/{id}", summary="Get a model")
async def get_model(id: ModelRef, registry: Registry) -> Model:
    return Model.from_proto(await registry.get_model(registry_pb2.GetModelRequest(id=id)))


@router.delete("/{id}", summary="Delete a model and every version it has")
async def delete_model(id: ModelRef, registry: Registry) -> Model:
    return Model.from_proto(await registry.delete_model(registry_pb2.DeleteModelRequest(id=id)))


@router.post("/{id}/versions", status_code=201, summary="Publish a finished training task's /opt/ml/model as a version")
async def publish_version(id: ModelRef, body: VersionPublish, registry: Registry,
                          idempotency_key: IdempotencyKey = "") -> ModelVersion:
    return ModelVersion.from_proto(await registry.publish_version(body.to_proto(id, idempotency_key=idempotency_key)))


@router.get("/{id}/versions", summary="List a model's versions")
async def list_versions(id: ModelRef, registry: Registry, page: PageRequest) -> ModelVersionList:
    return ModelVersionList.from_proto(await registry.list_versions(registry_pb2.ListVersionsRequest(model_id=id, page=page)))


@router.get("/{id}/versions/{version}", summary="Get a version: files, metadata, lineage")
async def get_version(id: ModelRef, version: Version, registry: Registry) -> ModelVersion:
    return ModelVersion.from_proto(await registry.get_version(registry_pb2.GetVersionRequest(model_id=id, version=version)))


@router.delete("/{id}/versions/{version}", summary="Delete a version")
async def delete_version(id: ModelRef, version: Version, registry: Registry) -> ModelVersion:
    return ModelVersion.from_proto(
        await registry.delete_version(registry_pb2.DeleteVersionRequest(model_id=id, version=version)))


@router.get(
    "/{id}/versions/{version}/files/{path:path}",
    summary="Download one file of a version",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "the file's bytes"}},
)
async def download_file(id: ModelRef, version: Version, path: FilePath, registry: Registry) -> StreamingResponse:
    def req(offset: int) -> registry_pb2.ReadVersionFileRequest:
        return registry_pb2.ReadVersionFileRequest(model_id=id, version=version, path=path, offset=offset)

    first = await registry.read_version_file(req(0))  # errors (404, 503) surface before the response starts

    async def chunks() -> AsyncIterator[bytes]:
        chunk, offset = first, 0
        while True:
            yield chunk.data
            offset += len(chunk.data)
            if chunk.eof or not chunk.data:
                return
            chunk = await registry.read_version_file(req(offset))

    return StreamingResponse(chunks(), media_type="application/octet-stream",
                             headers={"Content-Length": str(first.size)})
