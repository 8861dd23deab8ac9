"""The OpenAI-compatible routes over the scheduler: thin handlers that parse at the edge (``protocol``),
submit to the scheduler and answer JSON, an error body, or a stream of SSE chunks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from ..errors import ApiError
from ..http import guarded, install_error_handlers, read_json
from ..protocol import SamplingParams, parse_chat, parse_completion, unknown_model
from .model import LoadedModel
from .responses import DONE, Call, sse
from .scheduler import Emit, Request, Scheduler, snapshot


@dataclass
class Engine:
    model: LoadedModel
    scheduler: Scheduler
    served_name: str
    created: int = 0

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.served_name:
            raise unknown_model(name, self.served_name)

    def check_length(self, prompt: list[int], sampling: SamplingParams, param: str) -> None:
        ctx = self.model.context_length
        if len(prompt) >= ctx:
            raise ApiError(400, f"This model's maximum context length is {ctx} tokens; the prompt has "
                                f"{len(prompt)} tokens", param=param, code="context_length_exceeded")
        if sampling.max_tokens is not None and len(prompt) + sampling.max_tokens > ctx:
            raise ApiError(400, f"This model's maximum context length is {ctx} tokens; you requested "
                                f"{len(prompt) + sampling.max_tokens} tokens ({len(prompt)} in the prompt, "
                                f"{sampling.max_tokens} to generate)", param="max_tokens",
                           code="context_length_exceeded")


def build_app(engine: Engine) -> Starlette:
    engine.created = engine.created or int(time.time())

    async def health(_: HttpRequest) -> Response:
        return JSONResponse({"status": "ok"})

    def model_card() -> dict[str, Any]:
        return {"id": engine.served_name, "object": "model", "created": engine.created, "owned_by": "capstan"}

    async def models(_: HttpRequest) -> Response:
        return JSONResponse({"object": "list", "data": [model_card()]})

    async def one_model(request: HttpRequest) -> Response:
        engine.check_model(request.path_params["model"])
        return JSONResponse(model_card())

    async def metrics(_: HttpRequest) -> Response:
        lines = []
        for name, value in snapshot(engine.scheduler).items():
            kind = "gauge" if name in ("active_sequences", "waiting_requests") else "counter"
            metric = f"capstan_engine_{name}" + ("_total" if kind == "counter" else "")
            lines += [f"# TYPE {metric} {kind}", f"{metric} {value}"]
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    async def chat(request: HttpRequest) -> Response:
        req = parse_chat(await read_json(request))
        engine.check_model(req.model)
        prompt = engine.model.chat_prompt(req.messages, req.tools)
        engine.check_length(prompt, req.sampling, "messages")
        call = Call(chat=True, model=engine.served_name, choices=req.n, prompt_tokens=len(prompt))
        return await answer(request, call, [prompt], req.n, req.sampling, req.stream, req.include_usage,
                            req.continuous_usage)

    async def completions(request: HttpRequest) -> Response:
        req = parse_completion(await read_json(request))
        engine.check_model(req.model)
        prompts = [engine.model.encode(p) if isinstance(p, str) else p for p in req.prompts]
        for p in prompts:
            engine.model.check_ids(p)
            engine.check_length(p, req.sampling, "prompt")
        prompts = [p or [engine.model.pad_id] for p in prompts]
        call = Call(chat=False, model=engine.served_name, choices=req.n * len(prompts),
                    prompt_tokens=sum(len(p) for p in prompts))
        return await answer(request, call, prompts, req.n, req.sampling, req.stream, req.include_usage,
                            req.continuous_usage)

    async def answer(request: HttpRequest, call: Call, prompts: list[list[int]], n: int, sampling: SamplingParams,
                     stream: bool, include_usage: bool, continuous_usage: bool) -> Response:
        if n > engine.scheduler.max_batch:
            raise ApiError(400, f"'n' must be at most {engine.scheduler.max_batch} on this engine", param="n",
                           code="invalid_value")
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Emit] = asyncio.Queue()
        reqs = [Request(p, [sampling] * n, loop, events, first_index=k * n, stream=stream)
                for k, p in enumerate(prompts)]
        for r in reqs:
            if not engine.scheduler.submit(r):
                for submitted in reqs:
                    engine.scheduler.cancel(submitted)
                raise ApiError(503, "the engine is overloaded; retry later", code="overloaded", type_="server_error")
        if stream:
            chunks = _stream(call, events, reqs, include_usage, continuous_usage)
            return StreamingResponse(chunks, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        return await _collect(request, call, events, reqs)

    async def _collect(request: HttpRequest, call: Call, events: asyncio.Queue[Emit], reqs: list[Request]) -> Response:
        async def gather() -> None:
            while not call.done:
                e = await events.get()
                if e.error:
                    raise ApiError(500, e.error, code="engine_error", type_="server_error")
                call.texts[e.index] += e.text
                call.tokens[e.index] = e.tokens
                call.finish[e.index] = e.finish_reason

        work = asyncio.ensure_future(gather())
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not work.done():  # the caller left: stop generating for it
                work.cancel()
                for r in reqs:
                    engine.scheduler.cancel(r)
        if not work.done() or work.cancelled():
            return Response(status_code=499)
        work.result()  # raises the engine's error, if any
        return JSONResponse(call.body())

    async def _stream(call: Call, events: asyncio.Queue[Emit], reqs: list[Request],
                      include_usage: bool, continuous_usage: bool) -> AsyncIterator[bytes]:
        finished = False
        try:
            for chunk in call.role_chunks(include_usage):
                yield chunk
            while not call.done:
                e = await events.get()
                if e.error:
                    yield sse(ApiError(500, e.error, code="engine_error", type_="server_error").body())
                    break
                call.tokens[e.index] = e.tokens
                call.finish[e.index] = e.finish_reason
                yield call.delta_chunk(e.index, e.text, e.finish_reason, include_usage,
                                       call.usage() if continuous_usage else None)
            else:
                if include_usage:
                    yield call.chunk([], usage=call.usage(), with_usage=True)
            yield DONE
            finished = True
        finally:
            if not finished:  # the client disconnected (or the server is going away): stop generating
                for r in reqs:
                    engine.scheduler.cancel(r)

    app = Starlette(routes=[
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model:path}", guarded(one_model), methods=["GET"]),
        Route("/v1/chat/completions", guarded(chat), methods=["POST"]),
        Route("/v1/completions", guarded(completions), methods=["POST"]),
    ])
    install_error_handlers(app)
    return app


async def _disconnected(request: HttpRequest) -> None:
    """Returns when the client goes away (the body has been read; the next message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
