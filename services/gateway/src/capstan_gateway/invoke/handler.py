"""The invocation routes (SPEC §6.3) as plain ASGI, beside FastAPI: parse, authenticate the service
key, apply limits, pick a replica, relay the answer (SSE chunk by chunk) and record the outcome.

Paths: ``/{ms-id}/v1/chat/completions``, ``/{ms-id}/v1/completions``, ``/{ms-id}/v1/models``,
``/{ms-id}/v1/models/m:predict``, and ``/v1/chat/completions`` / ``/v1/completions`` with
``"model": "<ms-id>"``. Everything else passes to the management app.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from capstan_core import tracing
from capstan_proto import inference_pb2

from . import oai_errors as err
from .limits import Budgets, estimate_tokens
from .metrics import Outcome, ServingMetrics
from .routes import Replica, RouteCache, Service
from .sse import SseRelay

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 600 * 1024
SERVICE_ID = re.compile(r"^ms-[0-9a-z]{1,32}$")
TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
_USAGE_TAIL = 16 * 1024  # the end of a non-streaming answer kept to read its usage from
RETRIES = 3  # replicas tried when a connection fails before any byte of the answer
MINUTE, DAY, SECOND = 60, 86400, 1

# (method, upstream path, kind): kind "chat"/"completion" are OpenAI bodies, "models"/"predict" pass through
SUFFIXES: dict[str, tuple[str, str]] = {
    "/v1/chat/completions": ("POST", "chat"),
    "/v1/completions": ("POST", "completion"),
    "/v1/models": ("GET", "models"),
    "/v1/models/m:predict": ("POST", "predict"),
}


@dataclass
class Call:
    """One invocation as it goes through the gateway."""

    service_id: str
    suffix: str
    kind: str
    body: bytes = b""
    doc: dict[str, Any] | None = None
    strip_usage: bool = False
    key_id: str = ""
    version_id: str = ""
    started: float = field(default_factory=time.perf_counter)
    reservations: list[tuple[str, int, int, int]] = field(default_factory=list)  # scope, window_s, window, n
    rate_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    traceparent: str | None = None  # set when no span is recorded: passed to the instance as is
    admitted_at: float = 0.0  # wall clock when the replica's limits let the call through
    recorded: bool = False  # its outcome is in the metrics


class InvokeApp:
    """ASGI middleware: invocation paths are served here, every other request by ``app``."""

    def __init__(
        self, app: ASGIApp, cache: Callable[[], RouteCache | None], budgets: Callable[[], Budgets | None],
        metrics: Callable[[], ServingMetrics | None], session: Callable[[], aiohttp.ClientSession | None],
    ) -> None:
        self.app = app
        self._cache, self._budgets, self._metrics, self._session = cache, budgets, metrics, session
        self.tracer = tracing.tracer("gateway")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        matched = self._match(scope["path"])
        if matched is None:
            await self.app(scope, receive, send)
            return
        service_id, suffix = matched
        headers = _headers(scope)
        method = scope["method"]
        if not _spans_recorded():
            # No span processor: a recorded span would be thrown away, and costs more than the rest of
            # the gateway's work on a call. The trace still continues: the caller's traceparent (or a
            # new one) goes to the instance, and its trace id back in x-trace-id.
            traceparent = headers.get("traceparent", "")
            if not TRACEPARENT.match(traceparent):
                traceparent = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-00"
            await self._traced(scope, receive, send, service_id, suffix, headers, None, traceparent)
            return
        with (
            tracing.attached(tracing.extract(headers)),
            self.tracer.start_as_current_span(
                f"{method} /{{ms-id}}{suffix}" if service_id else f"{method} {suffix}", kind=SpanKind.SERVER,
                attributes={"http.request.method": method, "url.path": scope["path"]},
            ) as span,
        ):
            await self._traced(scope, receive, send, service_id, suffix, headers, span, None)

    async def _traced(
        self, scope: Scope, receive: Receive, send: Send, service_id: str, suffix: str, headers: dict[str, str],
        span: Span | None, traceparent: str | None,
    ) -> None:
        method = scope["method"]
        if span is not None:
            trace_id = format(span.get_span_context().trace_id, "032x")
        else:
            parts = (traceparent or "").split("-")
            trace_id = parts[1] if len(parts) == 4 and len(parts[1]) == 32 else ""
        trace_header = (b"x-trace-id", trace_id.encode())
        started = False

        async def send_traced(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", ()), trace_header]
                if span is not None:
                    span.set_attribute("http.response.status_code", message["status"])
            await send(message)

        try:
            await self._serve(scope, receive, send_traced, service_id, suffix, headers, traceparent)
        except _ClientGone:
            pass
        except err.InvokeError as e:
            if not started:
                await e.send(send_traced)
        except Exception as e:  # the last resort: a JSON 500 in OpenAI's shape, the traceback in the log
            log.exception("unhandled error in %s %s", method, scope["path"])
            if span is not None:
                span.record_exception(e)
            if not started:
                await err.InvokeError(500, "internal error", "internal_error", type_="server_error").send(
                    send_traced)

    @staticmethod
    def _match(path: str) -> tuple[str, str] | None:
        if path in ("/v1/chat/completions", "/v1/completions"):
            return "", path
        if not path.startswith("/ms-"):
            return None
        service_id, slash, rest = path[1:].partition("/")
        if not slash:
            return service_id, ""
        return service_id, "/" + rest

    async def _serve(
        self, scope: Scope, receive: Receive, send: Send, service_id: str, suffix: str, headers: dict[str, str],
        traceparent: str | None,
    ) -> None:
        route = SUFFIXES.get(suffix)
        if route is None:
            raise err.InvokeError(404, f"Unknown route {scope['path']}; a service answers "
                                  f"{', '.join(SUFFIXES)} under /{service_id or '<ms-id>'}", "unknown_url")
        method, kind = route
        if scope["method"] != method:
            raise err.InvokeError(405, f"{scope['path']} takes {method}", "method_not_allowed",
                                  headers=[(b"allow", method.encode())])
        cache, budgets, metrics, session = self._cache(), self._budgets(), self._metrics(), self._session()
        if cache is None or budgets is None or metrics is None or session is None:
            raise err.unavailable("the gateway is not serving services (no inference service configured)")
        call = Call(service_id=service_id, suffix=suffix, kind=kind, traceparent=traceparent)
        if method == "POST":
            call.body = await _read_body(receive, headers)
        if kind in ("chat", "completion"):
            self._parse(call)
        if not SERVICE_ID.match(call.service_id):
            raise err.not_found(call.service_id[:64])
        svc = await cache.get(call.service_id)
        if svc is None:
            raise err.not_found(call.service_id)
        key = self._authenticate(svc, headers)
        call.key_id = key.key_id if key else ""
        try:
            await self._invoke(scope, receive, send, cache, svc, key, call, budgets, metrics, session)
        except err.InvokeError as e:
            if not call.recorded:  # refused before the call went out (limits at admission)
                status = "throttled" if e.status == 429 else "failed"
                metrics.ended((svc.service_id, call.version_id, call.key_id),
                              Outcome(status, latency_ms=(time.perf_counter() - call.started) * 1000))
            e.headers = [*e.headers, *call.rate_headers]
            raise

    def _parse(self, call: Call) -> None:
        try:
            doc = json.loads(call.body)
        except (ValueError, UnicodeDecodeError) as e:
            raise err.InvokeError(400, f"The request body is not valid JSON: {e}", "invalid_json") from e
        if not isinstance(doc, dict):
            raise err.InvokeError(400, "The request body must be a JSON object", "invalid_json")
        model = doc.get("model")
        if not call.service_id:
            if not isinstance(model, str) or not model:
                raise err.InvokeError(400, "`model` must name the service (ms-...)", "missing_model", param="model")
            call.service_id = model
        if doc.get("stream") is True:
            opts = doc.get("stream_options")
            if not isinstance(opts, dict) or opts.get("include_usage") is not True:
                # Ask for the usage chunk (token limits and metrics count it); the client did not, so drop it.
                doc["stream_options"] = {**(opts if isinstance(opts, dict) else {}), "include_usage": True}
                call.strip_usage = True
        call.doc = doc

    @staticmethod
    def _authenticate(svc: Service, headers: dict[str, str]) -> inference_pb2.RouteKey | None:
        raw = headers.get("authorization", "").strip()
        secret = raw[7:].strip() if raw[:7].lower() == "bearer " else raw
        key = svc.key_for(secret) if secret else None
        if not svc.route.auth_enabled:
            return key if key is not None and key.enabled else None  # counted by key when one is sent
        if not secret:
            raise err.unauthorized("You didn't provide an API key: send 'Authorization: Bearer <key>' with a key "
                                   "of this service.")
        if key is None:
            raise err.unauthorized("Incorrect API key provided for this service.")
        if not key.enabled:
            raise err.unauthorized("This API key is disabled.")
        return key

    async def _admit(self, svc: Service, key: inference_pb2.RouteKey | None, call: Call, budgets: Budgets) -> None:
        group_qps = svc.route.group_qps_limit
        if group_qps > 0:
            if not await budgets.take(f"q.g.{svc.service_id}", SECOND, group_qps, 1):
                raise err.rate_limited(f"Service {svc.service_id} is over its limit of {group_qps} requests per "
                                       "second; retry later.")
            call.rate_headers = _rate_headers(group_qps, budgets.remaining(f"q.g.{svc.service_id}", SECOND, group_qps))
        if key is None or call.doc is None:
            return
        estimate = estimate_tokens(call.doc, len(call.body))
        for limit, window_s, words in ((key.tokens_per_minute, MINUTE, "minute"), (key.tokens_per_day, DAY, "day")):
            if limit <= 0:
                continue
            scope = f"t.{svc.service_id}.{key.key_id}.{window_s}"
            want = min(estimate, limit)
            taken = await budgets.take(scope, window_s, limit, want)
            if window_s == MINUTE:
                call.rate_headers = _rate_headers(limit, budgets.remaining(scope, window_s, limit))
            if not taken:
                await asyncio.gather(*self._release(budgets, call))
                raise err.rate_limited(f"Rate limit reached for key {key.key_id} on tokens per {words}: limit "
                                       f"{limit}. Retry later or ask for a higher limit.", type_="tokens")
            call.reservations.append((scope, window_s, budgets.window(window_s), want))

    @staticmethod
    def _release(budgets: Budgets, call: Call, used: int = 0) -> list[Awaitable[None]]:
        settles: list[Awaitable[None]] = [budgets.settle(scope, w, win, n, used) for scope, w, win, n in call.reservations]
        call.reservations = []
        return settles

    async def _pick(
        self, cache: RouteCache, svc: Service, call: Call, exclude: set[str], budgets: Budgets,
        metrics: ServingMetrics,
    ) -> Replica:
        """A replica under its QPS and concurrency limits, waiting in the version's queue if it allows.
        After a wait the choice is made on the routing table as it is then: replicas added meanwhile (a
        scale-up) are candidates, and a woken call that finds every slot taken keeps its place in line
        for what is left of its queue timeout."""
        deadline = 0.0
        while True:
            replica = svc.choose(frozenset(exclude))
            if replica is None:
                if exclude:
                    raise err.bad_gateway(f"no replica of {svc.service_id} could be reached")
                raise err.unavailable(f"Service {svc.service_id} has no ready instance; retry later.")
            version = svc.versions[replica.version_id].route
            limit = version.max_concurrency_per_replica  # per replica, split between the gateways calling it
            if limit > 0 and replica.in_flight >= budgets.slots(replica.replica_id, limit):
                free = [r for r in svc.versions[replica.version_id].replicas
                        if r.in_flight < budgets.slots(r.replica_id, limit) and r.replica_id not in exclude]
                if free:
                    replica = min(free, key=lambda r: r.in_flight)
                else:
                    gauge = (svc.service_id, version.version_id)
                    again = deadline > 0
                    if not again:
                        deadline = time.monotonic() + version.queue_timeout_ms / 1000
                    metrics.queued[gauge] += 1
                    try:
                        ok = version.queue_size > 0 and await cache.gate.wait(
                            version.version_id, version.queue_size, deadline - time.monotonic(), again=again)
                    finally:
                        metrics.queued[gauge] -= 1
                    if not ok:
                        raise err.rate_limited(f"Service {svc.service_id} is at its concurrency limit ({limit} per "
                                               "instance); retry later.")
                    svc = cache.services.get(svc.service_id) or svc
                    continue
            qps = version.max_qps_per_replica
            call.admitted_at = budgets.clock()
            if qps > 0 and not await budgets.take(f"q.r.{replica.replica_id}", SECOND, qps, 1):
                exclude.add(replica.replica_id)
                if svc.choose(frozenset(exclude)) is None:
                    raise err.rate_limited(f"Service {svc.service_id} is over its limit of {qps} requests per "
                                           "second per instance; retry later.")
                continue
            return replica

    async def _invoke(
        self, scope: Scope, receive: Receive, send: Send, cache: RouteCache, svc: Service, key: inference_pb2.RouteKey | None,
        call: Call, budgets: Budgets, metrics: ServingMetrics, session: aiohttp.ClientSession,
    ) -> None:
        await self._admit(svc, key, call, budgets)
        task = asyncio.current_task()
        disconnected = asyncio.Event()
        finished = False

        async def watch() -> None:  # a client that goes away cancels the upstream request
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    disconnected.set()
                    if task is not None and not finished:
                        task.cancel()
                    return

        watcher = asyncio.create_task(watch())
        relay = SseRelay(call.strip_usage)
        outcome = Outcome("failed")
        tried: set[str] = set()
        try:
            await self._attempts(cache, svc, call, budgets, metrics, session, send, relay, tried, outcome)
        except err.InvokeError as e:
            outcome.status = "throttled" if e.status == 429 else "failed"
            raise
        except asyncio.CancelledError:
            if not disconnected.is_set():
                raise
            outcome.status = "failed"
            log.info("client left %s %s: upstream request cancelled", scope["method"], scope["path"])
        finally:
            finished = True
            watcher.cancel()
            used = relay.usage_total
            settles = self._release(budgets, call, used)
            if settles:
                await asyncio.gather(*settles, return_exceptions=True)
            outcome.latency_ms = (time.perf_counter() - call.started) * 1000
            outcome.tokens_in, outcome.tokens_out = relay.prompt_tokens, relay.completion_tokens
            outcome.ttft_ms, outcome.tpot_ms = relay.ttft_ms(call.started), relay.tpot_ms()
            metrics.ended((svc.service_id, call.version_id, call.key_id), outcome)
            call.recorded = True

    async def _attempts(
        self, cache: RouteCache, svc: Service, call: Call, budgets: Budgets, metrics: ServingMetrics, session: aiohttp.ClientSession,
        send: Send, relay: SseRelay, tried: set[str], outcome: Outcome,
    ) -> None:
        last: Exception | None = None
        for _ in range(RETRIES):
            try:
                replica = await self._pick(cache, svc, call, tried, budgets, metrics)
            except err.InvokeError:
                if last is None:
                    raise
                break
            tried.add(replica.replica_id)
            version = svc.versions[replica.version_id].route
            call.version_id = version.version_id
            body = self._upstream_body(call, version)
            gauge = (svc.service_id, version.version_id)
            replica.in_flight += 1
            replica.started += 1
            metrics.in_flight[gauge] += 1
            try:
                status = await self._forward(session, replica, call, body, send, relay)
                outcome.status = "succeeded" if status < 400 else "failed"
                return
            except _NotConnected as e:
                last = e.cause
                log.warning("%s: replica %s at %s not reachable (%s); trying another",
                            svc.service_id, replica.replica_id, replica.address, e.cause)
            finally:
                replica.in_flight -= 1
                metrics.in_flight[gauge] -= 1
                if version.max_concurrency_per_replica > 0:
                    cache.gate.release(version.version_id)
        raise err.bad_gateway(f"the service's instances could not be reached: {last}")

    @staticmethod
    def _upstream_body(call: Call, version: inference_pb2.RouteVersion) -> bytes:
        if call.doc is None:
            return call.body
        doc = call.doc
        if version.served_model_name:
            doc = {**doc, "model": version.served_model_name}
        elif not call.strip_usage:
            return call.body
        return json.dumps(doc, separators=(",", ":")).encode()

    async def _forward(
        self, session: aiohttp.ClientSession, replica: Replica, call: Call, body: bytes, send: Send,
        relay: SseRelay,
    ) -> int:
        headers = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
        # When the gateway let the call through (the convention proxies use; an engine can tell its queue time).
        headers["x-request-start"] = f"t={int(call.admitted_at * 1_000_000)}"
        if call.traceparent:
            headers["traceparent"] = call.traceparent
        else:
            tracing.inject(headers)
        url = f"http://{replica.address}{call.suffix}"
        method = "POST" if call.kind != "models" else "GET"
        try:
            resp = await session.request(method, url, data=body if method == "POST" else None, headers=headers)
        except (aiohttp.ClientConnectionError, OSError) as e:
            raise _NotConnected(e) from e
        async with resp:
            ctype = resp.headers.get("content-type", "application/json")
            out_headers = [(b"content-type", ctype.encode()), *call.rate_headers]
            if ctype.startswith("text/event-stream"):
                await send({"type": "http.response.start", "status": resp.status,
                            "headers": [*out_headers, (b"cache-control", b"no-cache")]})
                try:
                    async for chunk in resp.content.iter_any():
                        out = relay.feed(chunk)
                        if out:
                            await send({"type": "http.response.body", "body": out, "more_body": True})
                except aiohttp.ClientError as e:  # the replica went away mid-stream: end the stream
                    log.warning("stream from %s broke: %s", replica.address, e)
                    await send({"type": "http.response.body", "body": relay.flush(), "more_body": False})
                    return 502
                await send({"type": "http.response.body", "body": relay.flush(), "more_body": False})
                return resp.status
            # Relayed as it arrives, never held whole (an instance runs user code: its answer may be any
            # size); the usage object is read from the answer's last bytes, where engines put it.
            length = resp.headers.get("content-length", "")
            if length.isdigit():
                out_headers.append((b"content-length", length.encode()))
            await send({"type": "http.response.start", "status": resp.status, "headers": out_headers})
            tail = b""
            status = resp.status
            try:
                async for chunk in resp.content.iter_any():
                    tail = (tail + chunk)[-_USAGE_TAIL:] if len(chunk) < _USAGE_TAIL else chunk[-_USAGE_TAIL:]
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except aiohttp.ClientError as e:  # the head is out: end the answer short, count a failure
                log.warning("answer from %s broke off: %s", replica.address, e)
                status = 502
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            if status < 400 and call.doc is not None:
                relay.read_usage(tail)
            return status


class _ClientGone(Exception):
    """The client hung up before its request was read."""


class _NotConnected(Exception):
    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _spans_recorded() -> bool:
    """Whether the process's tracer provider sends spans anywhere (an exporter is configured)."""
    active = getattr(trace.get_tracer_provider(), "_active_span_processor", None)
    return bool(getattr(active, "_span_processors", ()))


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", ())}


def _rate_headers(limit: int, remaining: int) -> list[tuple[bytes, bytes]]:
    return [(b"x-ratelimit-limit", str(limit).encode()), (b"x-ratelimit-remaining", str(remaining).encode())]


async def _read_body(receive: Receive, headers: dict[str, str]) -> bytes:
    too_large = err.InvokeError(413, f"The request body exceeds {MAX_BODY_BYTES // 1024} KB.", "request_too_large")
    try:
        declared = int(headers.get("content-length") or 0)
    except ValueError:
        declared = 0
    if declared > MAX_BODY_BYTES:
        raise too_large
    parts: list[bytes] = []
    size = 0
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise too_large
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)
