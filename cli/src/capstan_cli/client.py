"""The REST API client: where the API is, the token, requests, error bodies, pagination."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from .platform import Paths, read_text

API_PREFIX = "/api/v1"


class ApiError(Exception):
    """A failed call, carrying the message from the error body ``{"error": {"code", "message"}}``."""

    def __init__(self, message: str, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status


def error_from_response(resp: httpx.Response) -> ApiError:
    """The API's own message when the body is an error body; otherwise the status and text."""
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        message = str(err.get("message") or err.get("code") or f"HTTP {resp.status_code}")
        return ApiError(message, code=err.get("code"), status=resp.status_code)
    if isinstance(body, dict) and "detail" in body:  # a framework-level error (e.g. an unknown route)
        detail = body["detail"]
        text = detail if isinstance(detail, str) else json.dumps(detail)
        return ApiError(f"HTTP {resp.status_code}: {text}", status=resp.status_code)
    text = resp.text.strip()[:500] or resp.reason_phrase
    return ApiError(f"HTTP {resp.status_code}: {text}", status=resp.status_code)


class ApiClient:
    def __init__(self, base_url: str, token: str | None = None, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        params = {k: _param(v) for k, v in (params or {}).items() if v is not None}
        try:
            resp = self._http.request(method, API_PREFIX + path, params=params, json=body, headers=headers)
        except httpx.ConnectError as e:
            raise ApiError(
                f"cannot reach the Capstan API at {self.base_url} ({e}); is the platform up? (capstan up)",
                code="unreachable",
            ) from e
        except httpx.TimeoutException as e:
            raise ApiError(f"the Capstan API at {self.base_url} did not answer in time", code="timeout") from e
        except httpx.HTTPError as e:
            raise ApiError(f"request to {self.base_url} failed: {e}", code="transport") from e
        if resp.status_code >= 400:
            raise error_from_response(resp)
        if not resp.content:
            return None
        try:
            return resp.json()
        except ValueError as e:
            raise ApiError(f"the API answered {method} {path} with something that is not JSON") from e

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        return self.request("POST", path, body=body, headers=headers)

    def patch(self, path: str, body: Any = None) -> Any:
        return self.request("PATCH", path, body=body)

    def put(self, path: str, body: Any = None) -> Any:
        return self.request("PUT", path, body=body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def download(self, path: str, dest: Path, **params: Any) -> int:
        """Stream ``path`` into the file ``dest`` (written whole or not at all); bytes written."""
        tmp = dest.with_name(f".{dest.name}.part")
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._http.stream("GET", API_PREFIX + path, params=params) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise error_from_response(resp)
                n = 0
                with open(tmp, "wb") as f:
                    for chunk in resp.iter_bytes():
                        f.write(chunk)
                        n += len(chunk)
        except httpx.HTTPError as e:
            tmp.unlink(missing_ok=True)
            raise ApiError(f"download from {self.base_url} failed: {e}", code="transport") from e
        tmp.replace(dest)
        return n

    def paginate(self, path: str, page_size: int = 100, **params: Any) -> Iterator[dict[str, Any]]:
        """Every item of a paginated list (``{items, next_page_token, total}``)."""
        token: str | None = None
        while True:
            page = self.get(path, page_size=page_size, page_token=token, **params) or {}
            yield from page.get("items") or []
            token = page.get("next_page_token") or None
            if not token:
                return


def _param(v: Any) -> Any:
    if isinstance(v, bool):
        return "true" if v else "false"
    return v


@dataclass
class ClientConfig:
    """Where the client finds the API and the token: flags, then the environment, then the data dir."""

    data_dir: str | None = None
    api: str | None = None
    json_output: bool = False

    @property
    def paths(self) -> Paths:
        return Paths.of(self.data_dir or os.environ.get("CAPSTAN_DATA_DIR") or ".capstan")

    def api_url(self) -> str:
        url = self.api or os.environ.get("CAPSTAN_API") or read_text(self.paths.api_url)
        if not url:
            raise ApiError(
                f"no API address: pass --api URL, set CAPSTAN_API, or start the platform with "
                f"capstan up --data-dir {self.paths.root} (it writes {self.paths.api_url})"
            )
        return url

    def token(self) -> str | None:
        """CAPSTAN_TOKEN, else the session of ``capstan login``, else the operator's first key."""
        return os.environ.get("CAPSTAN_TOKEN") or read_text(self.paths.session) or read_text(self.paths.admin_token)

    def client(self) -> ApiClient:
        return ApiClient(self.api_url(), self.token())

    def default_resource_group(self) -> str:
        rg = read_text(self.paths.default_rg)
        if not rg:
            raise ApiError(
                f"no --resource-group given and no default resource group in {self.paths.default_rg}; "
                "pass --resource-group ID (see capstan rg list)"
            )
        return rg


def wait_until(fn: Any, timeout: float, interval: float = 0.5, retry_on: tuple[int, ...] = (502, 503, 504)) -> Any:
    """Call ``fn`` until it stops failing with a transient error (unreachable, 5xx) or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except ApiError as e:
            transient = e.code in ("unreachable", "timeout", "unavailable") or e.status in retry_on
            if not transient or time.monotonic() > deadline:
                raise
            time.sleep(interval)


def read_token_file(path: Path, timeout: float) -> str | None:
    deadline = time.monotonic() + timeout
    while True:
        token = read_text(path)
        if token or time.monotonic() > deadline:
            return token
        time.sleep(0.1)
