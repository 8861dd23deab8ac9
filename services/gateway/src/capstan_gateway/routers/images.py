"""/api/v1/images: training images (SPEC §3.6), answered by the trainer service."""

from __future__ import annotations

from pydantic import BaseModel, Field

from capstan_proto import trainer_pb2

from ..deps import Trainer
from . import api_router

router = api_router("images")


class Image(BaseModel):
    name: str = Field(description="capstan/python-ml (built-in), or sha256:<digest> of an imported image")
    kind: str = Field(description="builtin | imported")
    description: str
    frameworks: list[str]
    modes: list[str] = Field(description="the training modes it supports")
    libraries: dict[str, str]
    size_bytes: int


class ImageList(BaseModel):
    items: list[Image]


@router.get("", summary="Built-in images and those imported on this install (capstan image import)")
async def list_images(trainer: Trainer) -> ImageList:
    resp = await trainer.list_images(trainer_pb2.ListImagesRequest())
    return ImageList(items=[Image(name=i.name, kind=i.kind, description=i.description, frameworks=list(i.frameworks),
                                  modes=list(i.modes), libraries=dict(i.libraries), size_bytes=i.size_bytes)
                            for i in resp.items])
