"""The generic runtime's routes: POST /v1/models/m:predict (a JSON body in, the model's JSON out) and
GET /health. Bad JSON is the caller's 400; the model's own code failing is the one 500."""

from __future__ import annotations

import asyncio
import logging

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..errors import ApiError
from ..http import guarded, install_error_handlers, read_json
from .service import ModelFailed, ModelService

log = logging.getLogger("capstan_engines.generic")


def build_app(service: ModelService) -> Starlette:
    async def health(_: Request) -> Response:
        return JSONResponse({"status": "ok", "model_class": service.name})

    async def predict(request: Request) -> Response:
        body = await read_json(request)
        try:
            result = await asyncio.to_thread(service, body)
        except ModelFailed as e:
            log.exception("the model's code failed")
            raise ApiError(500, f"the model's code failed: {e}", code="model_error", type_="model_error") from None
        return JSONResponse(result)

    app = Starlette(routes=[
        Route("/health", health, methods=["GET"]),
        Route("/v1/models/m:predict", guarded(predict), methods=["POST"]),
    ])
    install_error_handlers(app)
    return app
