"""Route dependencies as named types: the caller, the service clients, paging and idempotency."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Query, Request

from capstan_core.errors import Unavailable
from capstan_proto import common_pb2

from .auth import CurrentPrincipal, Principal
from .clients import Clients, RegistryClient, SchedulerClient, TrainerClient
from .schemas.common import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE

__all__ = ["CurrentPrincipal", "IdempotencyKey", "PageRequest", "Principal", "Registry", "Scheduler", "Trainer"]


def _clients(request: Request) -> Clients:
    clients: Clients = request.app.state.clients
    return clients


def _scheduler(request: Request) -> SchedulerClient:
    return _clients(request).scheduler


def _trainer(request: Request) -> TrainerClient:
    return _clients(request).trainer


def _registry(request: Request) -> RegistryClient:
    registry = _clients(request).registry
    if registry is None:
        raise Unavailable("the gateway is not configured with the registry service's address (CAPSTAN_REGISTRY_ADDR)")
    return registry


def _page(
    page_size: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
    page_token: Annotated[str, Query(max_length=1024, description="next_page_token of the previous page")] = "",
) -> common_pb2.PageRequest:
    return common_pb2.PageRequest(page_size=page_size, page_token=page_token)


Scheduler = Annotated[SchedulerClient, Depends(_scheduler)]
Trainer = Annotated[TrainerClient, Depends(_trainer)]
Registry = Annotated[RegistryClient, Depends(_registry)]
PageRequest = Annotated[common_pb2.PageRequest, Depends(_page)]
IdempotencyKey = Annotated[
    str,
    Header(
        alias="Idempotency-Key",
        max_length=128,
        description="a retried request with the same key creates nothing more",
    ),
]
