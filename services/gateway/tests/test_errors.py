"""Every failure is JSON {"error": {code, message}} with the right status; never a traceback."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import httpx
import pytest
from fastapi import FastAPI

from capstan_gateway import GatewaySettings, create_app

GatewayFactory = Callable[[GatewaySettings | FastAPI], AbstractAsyncContextManager[httpx.AsyncClient]]

RG = "/api/v1/resource-groups"
TASKS = "/api/v1/training-tasks"


def task_body(**over: object) -> dict[str, object]:
    body: dict[str, object] = {
        "name": "t1",
        "resource_group_id": "rsg-12345678",
        "command": "python train.py",
        "resources": {"cpu": 1, "memory_gib": 2},
    }
    body.update(over)
    return body


def error(r: httpx.Response, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    message: str = body["error"]["message"]
    assert "Traceback" not in message
    return message


async def test_bad_json_is_400(admin: httpx.AsyncClient) -> None:
    r = await admin.post(RG, content=b'{"name": ', headers={"content-type": "application/json"})
    assert error(r, 400, "invalid_argument").startswith("body: the request body is not valid JSON")


async def test_missing_body_is_400(admin: httpx.AsyncClient) -> None:
    assert error(await admin.post(RG), 400, "invalid_argument") == "body: Field required"


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        (RG, {"name": "x" * 61}, "body.name: String should have at most 60 characters"),
        (RG, {"name": ""}, "body.name: String should have at least 1 character"),
        (RG, {"name": "ok", "policy": "strict"}, "body.policy: Input should be a valid dictionary"),
        (RG, {"name": "ok", "colour": "red"}, "body.colour: Extra inputs are not permitted"),
        (RG, {"name": "ok", "description": "d" * 501}, "body.description: String should have at most 500"),
        (TASKS, task_body(name="n" * 257), "body.name: String should have at most 256 characters"),
        (TASKS, task_body(command="c" * 8193), "body.command: String should have at most 8192 characters"),
        (TASKS, task_body(instance_count=65), "body.instance_count: Input should be less than or equal to 64"),
        (TASKS, task_body(instance_count=0), "body.instance_count: Input should be greater than or equal to 1"),
        (TASKS, task_body(resources={"cpu": -1, "memory_gib": 1}), "body.resources.cpu: Input should be greater"),
        (TASKS, task_body(hyperparameters=[1]), "body.hyperparameters: Input should be a valid dictionary"),
    ],
)
async def test_shape_errors_name_the_field(
    admin: httpx.AsyncClient, path: str, body: dict[str, object], expected: str
) -> None:
    assert error(await admin.post(path, json=body), 400, "invalid_argument").startswith(expected)


async def test_several_errors_are_all_named(admin: httpx.AsyncClient) -> None:
    message = error(await admin.post(TASKS, json={"name": ""}), 400, "invalid_argument")
    for field in ("body.name", "body.resource_group_id", "body.command"):
        assert field in message


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (f"{RG}?page_size=0", "query.page_size: Input should be greater than or equal to 1"),
        (f"{RG}?page_size=501", "query.page_size: Input should be less than or equal to 500"),
        (f"{TASKS}?status=Sleeping", "query.status: Input should be 'Submitting'"),
        (f"{TASKS}/train-1/logs?start=yesterday", "query.start: expected an ISO-8601 time"),
        (f"{TASKS}/train-1/logs?limit=0", "query.limit: Input should be greater than or equal to 1"),
    ],
)
async def test_query_errors_name_the_parameter(admin: httpx.AsyncClient, path: str, expected: str) -> None:
    assert error(await admin.get(path), 400, "invalid_argument").startswith(expected)


async def test_oversized_idempotency_key_is_400(admin: httpx.AsyncClient) -> None:
    r = await admin.post(RG, json={"name": "ok"}, headers={"Idempotency-Key": "k" * 129})
    assert error(r, 400, "invalid_argument").startswith("header.Idempotency-Key: String should have at most 128")


async def test_oversized_body_is_413(admin: httpx.AsyncClient) -> None:
    r = await admin.post(TASKS, json=task_body(hyperparameters={"blob": "x" * 2_000_000}))
    assert "1024 KiB" in error(r, 413, "payload_too_large")


async def test_oversized_hyperparameters_are_400(admin: httpx.AsyncClient) -> None:
    r = await admin.post(TASKS, json=task_body(hyperparameters={"blob": "x" * 70_000}))
    assert error(r, 400, "invalid_argument") == "body.hyperparameters: at most 64 KiB of JSON"


async def test_unknown_route_is_json_404(admin: httpx.AsyncClient, client: httpx.AsyncClient) -> None:
    assert "GET /api/v1/nope" in error(await admin.get("/api/v1/nope"), 404, "not_found")
    assert "/openapi.json" in error(await client.get("/nope"), 404, "not_found")


async def test_wrong_method_is_json_405(admin: httpx.AsyncClient) -> None:
    error(await admin.delete(RG), 405, "method_not_allowed")


@pytest.mark.parametrize(
    ("method", "path", "body", "service"),
    [
        ("GET", RG, None, "scheduler"),
        ("POST", RG, {"name": "ok"}, "scheduler"),
        ("GET", f"{RG}/rsg-1", None, "scheduler"),
        ("GET", "/api/v1/nodes", None, "scheduler"),
        ("GET", TASKS, None, "trainer"),
        ("POST", TASKS, task_body(), "trainer"),
        ("POST", f"{TASKS}/train-1/stop", None, "trainer"),
        ("GET", f"{TASKS}/train-1/logs?start=2024-05-01T00:00:00Z&end=1714600000000", None, "trainer"),
    ],
)
async def test_unreachable_service_is_503(
    admin: httpx.AsyncClient, method: str, path: str, body: object, service: str
) -> None:
    r = await admin.request(method, path, json=body)
    assert error(r, 503, "unavailable") == f"the {service} service is not reachable; retry shortly"


async def test_unexpected_exception_is_500_without_traceback(
    settings: GatewaySettings, gateway_for: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    app: FastAPI = create_app(settings)

    @app.get("/boom")
    async def boom() -> dict[str, str]:
        raise RuntimeError("kaboom secret detail")

    async with gateway_for(app) as c:
        r = await c.get("/boom")
    assert error(r, 500, "internal") == "internal error"
    assert "kaboom" not in r.text
    assert "Traceback" in caplog.text and "kaboom secret detail" in caplog.text


async def test_openapi_lists_every_route(client: httpx.AsyncClient) -> None:
    r = await client.get("/openapi.json")
    assert r.status_code == 200
    spec = r.json()
    routes = {(m.upper(), p) for p, item in spec["paths"].items() for m in item}
    assert routes == {
        ("GET", "/healthz"),
        ("POST", RG),
        ("GET", RG),
        ("GET", f"{RG}/{{id}}"),
        ("PATCH", f"{RG}/{{id}}"),
        ("DELETE", f"{RG}/{{id}}"),
        ("GET", f"{RG}/{{id}}/queue"),
        ("PUT", f"{RG}/{{id}}/shares"),
        ("GET", "/api/v1/nodes"),
        ("POST", "/api/v1/nodes/release"),
        ("POST", "/api/v1/nodes/{id}/release"),
        ("DELETE", "/api/v1/nodes/{id}"),
        ("GET", "/api/v1/nodes/health-checks"),
        ("POST", "/api/v1/join-tokens"),
        ("GET", "/api/v1/join-tokens"),
        ("DELETE", "/api/v1/join-tokens/{id}"),
        ("POST", TASKS),
        ("POST", f"{TASKS}/batch"),
        ("GET", TASKS),
        ("GET", f"{TASKS}/{{id}}"),
        ("POST", f"{TASKS}/{{id}}/stop"),
        ("GET", f"{TASKS}/{{id}}/logs"),
        ("POST", f"{TASKS}/price"),
        ("GET", "/api/v1/images"),
        ("POST", f"{TASKS}/{{id}}/tensorboard"),
        ("GET", f"{TASKS}/{{id}}/tensorboard/{{path}}"),
        ("PATCH", f"{TASKS}/{{id}}"),
        ("DELETE", f"{TASKS}/{{id}}"),
        ("POST", f"{TASKS}/{{id}}/start"),
        ("GET", f"{TASKS}/{{id}}/copy"),
        ("GET", f"{TASKS}/{{id}}/outputs"),
        ("GET", f"{TASKS}/{{id}}/outputs/{{path}}"),
        ("GET", f"{TASKS}/{{id}}/events"),
        ("GET", f"{TASKS}/{{id}}/metrics"),
        ("GET", f"{TASKS}/{{id}}/checkpoints"),
        ("GET", f"{TASKS}/{{id}}/evaluation"),
        ("GET", "/api/v1/admin/quarantine"),
        ("POST", "/api/v1/models"),
        ("GET", "/api/v1/models"),
        ("GET", "/api/v1/models/{id}"),
        ("DELETE", "/api/v1/models/{id}"),
        ("POST", "/api/v1/models/{id}/versions"),
        ("GET", "/api/v1/models/{id}/versions"),
        ("GET", "/api/v1/models/{id}/versions/{version}"),
        ("DELETE", "/api/v1/models/{id}/versions/{version}"),
        ("GET", "/api/v1/models/{id}/versions/{version}/files/{path}"),
        # online services (issue #9)
        ("POST", "/api/v1/services"),
        ("GET", "/api/v1/services"),
        ("GET", "/api/v1/services/{id}"),
        ("PATCH", "/api/v1/services/{id}"),
        ("DELETE", "/api/v1/services/{id}"),
        ("POST", "/api/v1/services/{id}/stop"),
        ("POST", "/api/v1/services/{id}/start"),
        ("POST", "/api/v1/services/{id}/versions"),
        ("PATCH", "/api/v1/services/{id}/versions/{version_id}"),
        ("DELETE", "/api/v1/services/{id}/versions/{version_id}"),
        ("POST", "/api/v1/services/{id}/scale"),
        ("PUT", "/api/v1/services/{id}/autoscaling"),
        ("PUT", "/api/v1/services/{id}/weights"),
        ("POST", "/api/v1/services/{id}/instances/{instance_id}/isolate"),
        ("POST", "/api/v1/services/{id}/instances/{instance_id}/unisolate"),
        ("POST", "/api/v1/services/{id}/instances/{instance_id}/rebuild"),
        ("GET", "/api/v1/services/{id}/keys"),
        ("POST", "/api/v1/services/{id}/keys"),
        ("PATCH", "/api/v1/services/{id}/keys/{key_id}"),
        ("DELETE", "/api/v1/services/{id}/keys/{key_id}"),
        ("GET", "/api/v1/services/{id}/records"),
        ("GET", "/api/v1/services/{id}/events"),
        ("GET", "/api/v1/services/{id}/logs"),
        ("GET", "/api/v1/services/{id}/metrics"),
        ("GET", "/metrics"),
        # #8: accounts, keys, policies, audit
        ("POST", "/api/v1/login"),
        ("GET", "/api/v1/whoami"),
        ("POST", "/api/v1/accounts"),
        ("GET", "/api/v1/accounts"),
        ("GET", "/api/v1/accounts/{id}"),
        ("PATCH", "/api/v1/accounts/{id}"),
        ("DELETE", "/api/v1/accounts/{id}"),
        ("PUT", "/api/v1/accounts/{id}/password"),
        ("PUT", "/api/v1/accounts/{id}/policies"),
        ("POST", "/api/v1/accounts/{id}/keys"),
        ("GET", "/api/v1/accounts/{id}/keys"),
        ("PATCH", "/api/v1/keys/{id}"),
        ("DELETE", "/api/v1/keys/{id}"),
        ("POST", "/api/v1/policies"),
        ("GET", "/api/v1/policies"),
        ("GET", "/api/v1/policies/{id}"),
        ("DELETE", "/api/v1/policies/{id}"),
        ("GET", "/api/v1/audit"),
        ("GET", "/api/v1/audit/events"),
        ("GET", "/api/v1/access"),
    }
    for path, item in spec["paths"].items():
        for op in item.values():
            assert "422" not in op["responses"]
            if path.startswith("/api/v1"):
                assert op["x-capstan-action"], path  # the action policies speak of (capstan_core.actions)
            if path.startswith("/api/v1") and path != "/api/v1/login":
                assert op["security"] == [{"HTTPBearer": []}]
                assert op["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith("ErrorBody")
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    schemas = spec["components"]["schemas"]
    assert {"ResourceGroup", "TrainingTask", "Node", "LogPage", "ErrorBody"} <= set(schemas)
