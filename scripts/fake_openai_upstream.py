"""A FAKE OpenAI-compatible engine for the gateway's tests and benchmark (no model: canned tokens).

``python scripts/fake_openai_upstream.py --port 0 --ready-file F [--tokens-per-second 50]
[--served-model-name NAME]`` serves /v1/chat/completions, /v1/completions (streaming too, with
``usage`` and ``stream_options.include_usage``), /v1/models, /v1/models/m:predict (``{"hold_ms": N}``
answers after N ms) and /health, as an engine would, and answers ``GET /_fake/stats`` with what it saw
(arrival times, models, cancelled streams, the most calls it held at once) so tests can check what the
gateway sent. Completion length: ``max_tokens`` (default 16).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web

STATS: dict[str, Any] = {"arrivals": [], "models": [], "stream_options": [], "cancelled": 0, "completed": 0,
                         "headers": [], "request_starts": [], "tokens": 0, "in_flight": 0, "max_in_flight": 0}


def _prompt_tokens(doc: dict[str, Any]) -> int:
    if "messages" in doc:
        text = " ".join(str(m.get("content", "")) for m in doc["messages"] if isinstance(m, dict))
    else:
        text = str(doc.get("prompt", ""))
    return max(1, len(text.split()))


def _record(request: web.Request, doc: Any) -> None:
    STATS["arrivals"].append(time.time())
    start = request.headers.get("x-request-start", "")
    if start.startswith("t="):  # when the gateway let the call through, microseconds
        STATS["request_starts"].append(int(start[2:]) / 1e6)
    if not isinstance(doc, dict):
        return
    STATS["models"].append(doc.get("model"))
    STATS["stream_options"].append(doc.get("stream_options"))
    if len(STATS["headers"]) < 50:
        STATS["headers"].append({k.lower(): v for k, v in request.headers.items()})


def make_app(served: str, tokens_per_second: float) -> web.Application:
    async def completions(request: web.Request) -> web.StreamResponse:
        chat = request.path.endswith("/chat/completions")
        doc = await request.json()
        _record(request, doc)
        n_out = int(doc.get("max_tokens") or doc.get("max_completion_tokens") or 16)
        usage = {"prompt_tokens": _prompt_tokens(doc), "completion_tokens": n_out,
                 "total_tokens": _prompt_tokens(doc) + n_out}
        cid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:12]
        created = int(time.time())
        model = doc.get("model") or served
        if not doc.get("stream"):
            if tokens_per_second > 0:
                await asyncio.sleep(n_out / tokens_per_second)  # generating, as a paced engine would
            text = "tok " * n_out
            if chat:
                choice = {"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                          "finish_reason": "length", "logprobs": None}
                obj = "chat.completion"
            else:
                choice = {"index": 0, "text": text, "finish_reason": "length", "logprobs": None}
                obj = "text_completion"
            STATS["completed"] += 1
            STATS["tokens"] += usage["total_tokens"]
            return web.json_response({"id": cid, "object": obj, "created": created, "model": model,
                                      "choices": [choice], "usage": usage})
        resp = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache"})
        await resp.prepare(request)
        obj = "chat.completion.chunk" if chat else "text_completion"

        def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            body = {"id": cid, "object": obj, "created": created, "model": model, "choices": choices, **extra}
            return b"data: " + json.dumps(body).encode() + b"\n\n"

        def delta(content: str | None, finish: str | None = None, role: bool = False) -> dict[str, Any]:
            if not chat:
                return {"index": 0, "text": content or "", "finish_reason": finish, "logprobs": None}
            d: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
            if content is not None:
                d["content"] = content
            return {"index": 0, "delta": d, "finish_reason": finish, "logprobs": None}

        interval = 1.0 / tokens_per_second if tokens_per_second > 0 else 0.0
        try:
            if chat:
                await resp.write(event([delta(None, role=True)]))
            start = time.perf_counter()
            for i in range(n_out):
                if interval:
                    await asyncio.sleep(max(0.0, start + (i + 1) * interval - time.perf_counter()))
                await resp.write(event([delta("tok ")]))
            await resp.write(event([delta(None if chat else "", "length")]))
            if (doc.get("stream_options") or {}).get("include_usage"):
                await resp.write(event([], usage=usage))
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            STATS["completed"] += 1
            STATS["tokens"] += usage["total_tokens"]
        except (asyncio.CancelledError, ConnectionResetError):
            STATS["cancelled"] += 1
            raise
        return resp

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": served, "object": "model", "created": 0, "owned_by": "capstan"}]})

    async def predict(request: web.Request) -> web.Response:
        doc = await request.json()
        _record(request, doc)
        if isinstance(doc, dict) and isinstance(doc.get("hold_ms"), int):  # a slow model, on request
            STATS["in_flight"] += 1
            STATS["max_in_flight"] = max(STATS["max_in_flight"], STATS["in_flight"])
            try:
                await asyncio.sleep(doc["hold_ms"] / 1000)
            finally:
                STATS["in_flight"] -= 1
        if isinstance(doc, dict) and isinstance(doc.get("answer_bytes"), int):  # a large answer, on request
            return web.json_response({"predictions": "x" * doc["answer_bytes"]})
        return web.json_response({"predictions": doc})

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(STATS)

    async def reset(request: web.Request) -> web.Response:
        for k, v in STATS.items():
            STATS[k] = [] if isinstance(v, list) else 0
        return web.json_response({})

    app = web.Application(client_max_size=4 * 1024 * 1024, handler_args={"tcp_keepalive": True})
    app.router.add_post("/v1/chat/completions", completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/models/m:predict", predict)
    app.router.add_get("/health", health)
    app.router.add_get("/_fake/stats", stats)
    app.router.add_post("/_fake/reset", reset)
    return app


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--served-model-name", default="fake-model")
    p.add_argument("--tokens-per-second", type=float, default=0.0)
    p.add_argument("--ready-file")
    args = p.parse_args()
    runner = web.AppRunner(make_app(args.served_model_name, args.tokens_per_second), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port, backlog=4096)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    if args.ready_file:
        tmp = Path(args.ready_file + ".tmp")
        tmp.write_text(f"127.0.0.1:{port}")
        tmp.replace(args.ready_file)
    await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
