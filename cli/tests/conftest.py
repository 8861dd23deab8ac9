"""Fixtures of the CLI tests: a scripted stand-in for the REST API (for client unit tests that
need nothing running), a CliRunner, and a clean environment."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from click.testing import CliRunner


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    headers: dict[str, str]


Handler = Callable[[Request], tuple[int, Any]]


@dataclass
class FakeApi:
    """Answers each (method, path) with a scripted handler and records every request."""

    url: str = ""
    routes: dict[tuple[str, str], Handler] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)

    def on(self, method: str, path: str, handler: Handler | tuple[int, Any]) -> None:
        self.routes[(method, path)] = handler if callable(handler) else (lambda _r, h=handler: h)

    def handle(self, req: Request) -> tuple[int, Any]:
        self.requests.append(req)
        handler = self.routes.get((req.method, req.path))
        if handler is None:
            return 404, {"error": {"code": "not_found", "message": f"no such route: {req.method} {req.path}"}}
        return handler(req)


@pytest.fixture
def fake_api() -> Iterator[FakeApi]:
    api = FakeApi()

    class H(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            req = Request(
                method=self.command,
                path=parts.path,
                query={k: v[-1] for k, v in parse_qs(parts.query).items()},
                body=json.loads(raw) if raw else None,
                headers={k.lower(): v for k, v in self.headers.items()},
            )
            status, body = api.handle(req)
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve  # noqa: N815

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), H)
    api.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield api
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller's CAPSTAN_* settings must not leak into what the tests check."""
    import os

    for key in list(os.environ):
        if key.startswith("CAPSTAN_"):
            monkeypatch.delenv(key)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A data dir as `capstan up` leaves it for the client commands."""
    d = tmp_path / "capstan"
    (d / "run").mkdir(parents=True)
    (d / "admin-token").write_text("secret-token\n")
    (d / "run" / "default-rg").write_text("rsg-default\n")
    return d
