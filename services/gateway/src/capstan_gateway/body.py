"""Request bodies hold only what the platform can store.

Python's ``json`` accepts the non-standard ``NaN`` / ``Infinity`` tokens and turns ``1e400`` into
``inf``; it also accepts integers of any size, lone surrogates and NUL characters. None of these
can be stored, so the body is refused here, as it is parsed, with a 400 naming the field
(``body.resources.cpu: must be a finite number ...``), before any model or service sees it. Path and
query parameters are held to the same rule (NUL is what they can carry).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute

from capstan_core.numbers import TOO_DEEP, unstorable


class StorableJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            try:
                value = json.loads(await self.body())
            except RecursionError as e:
                raise HTTPException(status_code=400, detail=f"body: {TOO_DEEP}") from e
            found = unstorable(value, "body")
            if found:
                raise HTTPException(status_code=400, detail=f"{found[0]}: {found[1]}")
            self._json = value
        return self._json


def _refuse_unstorable_parameters(request: Request) -> None:
    """Path and query text goes into SQL filters: PostgreSQL refuses NUL in text, so refuse it here."""
    for where, params in (("path", request.path_params), ("query", dict(request.query_params.multi_items()))):
        found = unstorable(params, where)
        if found:
            raise HTTPException(status_code=400, detail=f"{found[0]}: {found[1]}")


class GatewayRoute(APIRoute):
    """Every /api/v1 route: its JSON body is parsed by ``StorableJsonRequest``; path and query text
    holds no NUL."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            _refuse_unstorable_parameters(request)
            return await handler(StorableJsonRequest(request.scope, request.receive))

        return route
