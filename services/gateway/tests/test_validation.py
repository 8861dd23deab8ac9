"""The REST edge refuses what no store can hold and what no node could run: a 4xx naming the field or
the limit, and nothing appended. Messages name no host path, and a 503 names the service that failed."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client

from capstan_core.contracts.capacity import MAX_CARD_TYPE_LEN, MAX_NODE_CARDS, MAX_NODE_CPU, MAX_NODE_MEMORY_GIB
from capstan_core.natsserver import NatsServer
from capstan_core.numbers import INT64_MAX
from capstan_core.service import Service
from capstan_core.settings import ServiceSettings
from capstan_core.streams import EVENTS_STREAM
from capstan_gateway import GatewaySettings, create_app

from .conftest import closed_addr, serve

RG = "/api/v1/resource-groups"
TASKS = "/api/v1/training-tasks"
JSON = {"content-type": "application/json"}


@pytest.fixture
def last_seq(nc: Client) -> Callable[[], Awaitable[int]]:
    """The event stream's last sequence: a refused request must leave it where it was."""

    async def seq() -> int:
        return int((await nc.jetstream().stream_info(EVENTS_STREAM)).state.last_seq)

    return seq


def task_json(rg_id: str, resources: str = '{"cpu": 1, "memory_gib": 1}', hyperparameters: str = "{}") -> bytes:
    """A submit body as raw JSON text, so tokens json.dumps would never write (NaN, 1e400) can be sent."""
    return (
        f'{{"name": "t", "resource_group_id": "{rg_id}", "command": "true", '
        f'"resources": {resources}, "hyperparameters": {hyperparameters}}}'
    ).encode()


def refused(r: httpx.Response, status: int = 400) -> str:
    assert r.status_code == status, r.text
    message: str = r.json()["error"]["message"]
    return message


@pytest.mark.parametrize("token", ["Infinity", "-Infinity", "NaN", "1e400", "-1e400"])
async def test_non_finite_numbers_are_refused_naming_the_field(
    api: httpx.AsyncClient, rg_id: str, last_seq: Callable[[], Awaitable[int]], token: str
) -> None:
    before = await last_seq()
    for body, field in [
        (task_json(rg_id, resources=f'{{"cpu": {token}, "memory_gib": 1}}'), "body.resources.cpu"),
        (task_json(rg_id, resources=f'{{"cpu": 1, "memory_gib": 1, "gpu_type": "A100", "gpu": {token}}}'),
         "body.resources.gpu"),
        (task_json(rg_id, hyperparameters=f'{{"lr": [0.1, {{"decay": {token}}}]}}'), "body.hyperparameters.lr[1].decay"),
        (f'{{"name": "p2", "policy": {{"ResourceRule": {{"DefaultPriority": {token}}}}}}}'.encode(),
         "body.policy.ResourceRule.DefaultPriority"),
    ]:
        path = RG if field.startswith("body.policy") else TASKS
        message = refused(await api.post(path, content=body, headers=JSON))
        assert message.startswith(f"{field}: must be a finite number"), message
    assert await last_seq() == before
    assert (await api.get(TASKS)).json()["total"] == 0


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        ({"cpu": 1e308}, f"body.resources.cpu: Input should be less than or equal to {MAX_NODE_CPU}"),
        ({"memory_gib": 1e308}, f"body.resources.memory_gib: Input should be less than or equal to {MAX_NODE_MEMORY_GIB}"),
        ({"gpu_type": "A100", "gpu": 9007199254740994}, f"body.resources.gpu: Input should be less than or equal to {MAX_NODE_CARDS}"),
        ({"gpu_type": "A100"}, "resources.gpu_type 'A100' is set but resources.gpu is 0"),
        ({"gpu": 1}, "resources.gpu_type is required when resources.gpu > 0"),
        ({"gpu_type": "x" * (MAX_CARD_TYPE_LEN + 1), "gpu": 1}, "body.resources.gpu_type: String should have at most"),
    ],
)
async def test_a_request_no_node_could_run_is_refused_naming_the_limit(
    api: httpx.AsyncClient, rg_id: str, last_seq: Callable[[], Awaitable[int]], resources: dict[str, Any], message: str
) -> None:
    before = await last_seq()
    body = {"name": "t", "resource_group_id": rg_id, "command": "true", "resources": {"cpu": 1, **resources}}
    assert refused(await api.post(TASKS, json=body)).startswith(message)
    assert await last_seq() == before


async def test_the_largest_request_a_node_may_hold_is_accepted(api: httpx.AsyncClient, rg_id: str) -> None:
    resources = {"cpu": MAX_NODE_CPU, "memory_gib": MAX_NODE_MEMORY_GIB, "gpu_type": "A100", "gpu": MAX_NODE_CARDS}
    r = await api.post(TASKS, json={"name": "t", "resource_group_id": rg_id, "command": "true", "resources": resources})
    assert r.status_code == 201, r.text
    assert r.json()["resources"] == resources


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('{"name": "p", "description": "a\\u0000b"}', "body.description: text must not contain the NUL character"),
        ('{"name": "p", "tags": {"k": "\\ud800"}}', "body.tags.k: text must be valid Unicode"),
        ('{"name": "p", "policy": {"x": 99999999999999999999999}}', "body.policy.x: integers must fit in 64 bits"),
        ('{"name": "p", "policy": ' + "[" * 40 + "]" * 40 + "}", "body.policy[0]"),
        ('{"name": "p", "policy": ' + "[" * 100_000 + "]" * 100_000 + "}", "body: nested deeper than 32 levels"),
    ],
)
async def test_text_and_integers_no_store_can_hold_are_refused(
    api: httpx.AsyncClient, last_seq: Callable[[], Awaitable[int]], body: str, message: str
) -> None:
    before = await last_seq()
    assert refused(await api.post(RG, content=body.encode(), headers=JSON)).startswith(message)
    assert await last_seq() == before


async def test_nul_in_a_query_or_a_path_is_refused(api: httpx.AsyncClient) -> None:
    assert refused(await api.get(TASKS, params={"resource_group_id": "rsg-\x00"})).startswith(
        "query.resource_group_id: text must not contain the NUL character"
    )
    assert refused(await api.get(f"{RG}/rsg-%00")).startswith("path.id: text must not contain the NUL character")


async def test_integers_beyond_64_bits_in_queries_are_refused(api: httpx.AsyncClient, rg_id: str) -> None:
    task = (await api.post(TASKS, json={"name": "t", "resource_group_id": rg_id, "command": "true"})).json()
    logs = f"{TASKS}/{task['id']}/logs"
    message = refused(await api.get(logs, params={"after_seq": "99999999999999999999999"}))
    assert message == f"query.after_seq: Input should be less than or equal to {INT64_MAX}"
    assert (await api.get(logs, params={"after_seq": str(INT64_MAX)})).status_code == 200
    for start in ("99999999999999999999", "0001-01-01T00:00:00Z", "1969-12-31T23:59:59Z"):
        message = refused(await api.get(logs, params={"start": start}))
        assert message == "query.start: must be from 1970-01-01T00:00:00Z to 9999-12-31T23:59:59.999Z"


@pytest.mark.parametrize("path", [RG, "/api/v1/nodes", "/api/v1/nodes/health-checks", TASKS])
@pytest.mark.parametrize("offset", [10**30, INT64_MAX + 1])
async def test_a_forged_page_token_is_refused(api: httpx.AsyncClient, path: str, offset: int) -> None:
    token = base64.urlsafe_b64encode(str(offset).encode()).decode()
    assert refused(await api.get(path, params={"page_token": token})) == "page_token is not one this service issued"


async def test_two_groups_cannot_share_a_name(
    api: httpx.AsyncClient, rg_id: str, last_seq: Callable[[], Awaitable[int]]
) -> None:
    other = (await api.post(RG, json={"name": "other"})).json()["id"]
    before = await last_seq()
    expected = f"a resource group named 'pool' already exists ({rg_id}); choose another name"
    r = await api.post(RG, json={"name": "pool"})
    assert refused(r, 409) == expected and r.json()["error"]["code"] == "already_exists"
    assert refused(await api.patch(f"{RG}/{other}", json={"name": "pool"}), 409) == expected
    assert await last_seq() == before
    assert (await api.patch(f"{RG}/{rg_id}", json={"name": "pool", "description": "same name"})).status_code == 200


async def test_an_id_that_names_nothing_is_refused_before_the_store(
    api: httpx.AsyncClient, last_seq: Callable[[], Awaitable[int]]
) -> None:
    before = await last_seq()
    for path in (f"{TASKS}/%3E/stop", "/api/v1/nodes/%2A/release", f"{TASKS}/a%20b/stop"):
        assert refused(await api.post(path)).endswith("is not a valid id")
    assert refused(await api.post("/api/v1/nodes/release", json={"node_ids": ["n-1.>"]})) == "'n-1.>' is not a valid id"
    assert await last_seq() == before


async def test_405_allows_every_method_of_the_path(client: httpx.AsyncClient) -> None:
    r = await client.options(f"{RG}/rsg-12345678")
    assert r.status_code == 405
    assert r.headers["allow"] == "DELETE, GET, HEAD, PATCH"
    assert r.json()["error"]["message"] == (
        "OPTIONS is not allowed on /api/v1/resource-groups/rsg-12345678 (allowed: DELETE, GET, HEAD, PATCH)"
    )
    assert (await client.put(RG)).headers["allow"] == "GET, HEAD, POST"
    # A concrete path is matched before a templated one (/nodes/release is not /nodes/{id}).
    assert (await client.options("/api/v1/nodes/release")).headers["allow"] == "POST"


async def test_the_401_names_no_host_path(client: httpx.AsyncClient, settings: GatewaySettings) -> None:
    message = refused(await client.get(RG), 401)
    assert "the operator's first key is in the data dir's `admin-token` file on the gateway host" in message
    assert str(settings.data_dir) not in message and "/" not in message.replace("Authorization", "")


async def test_every_operation_documents_every_error_status_and_the_limits(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    for path, item in spec["paths"].items():
        if not path.startswith("/api/v1"):
            continue
        for method, op in item.items():
            for status in ("400", "401", "403", "404", "409", "413", "503"):
                ref = op["responses"][status]["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/ErrorBody"), (method, path, status)
    request = spec["components"]["schemas"]["ResourceRequest"]["properties"]
    assert (request["cpu"]["maximum"], request["memory_gib"]["maximum"], request["gpu"]["maximum"]) == (
        MAX_NODE_CPU, MAX_NODE_MEMORY_GIB, MAX_NODE_CARDS
    )
    logs = spec["paths"]["/api/v1/training-tasks/{id}/logs"]["get"]["parameters"]
    assert next(p for p in logs if p["name"] == "after_seq")["schema"]["maximum"] == INT64_MAX


@pytest.fixture
async def scheduler_down(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The real trainer behind the gateway, and no scheduler where both expect it."""
    from capstan_trainer.service import DEFINITION as TRAINER

    scheduler_addr = closed_addr()
    trainer = Service(TRAINER, ServiceSettings(data_dir=tmp_path / "t", nats_url=nats_server.url,
                                               scheduler_addr=scheduler_addr))
    await trainer.start()
    settings = GatewaySettings(data_dir=tmp_path / "gw", scheduler_addr=scheduler_addr, trainer_addr=trainer.address)
    try:
        async with serve(create_app(settings)) as c:
            c.headers["Authorization"] = f"Bearer {(settings.data_dir / 'admin-token').read_text()}"
            yield c
    finally:
        await trainer.stop()


async def test_with_the_scheduler_down_a_submit_says_the_scheduler_is_unreachable(
    scheduler_down: httpx.AsyncClient, last_seq: Callable[[], Awaitable[int]]
) -> None:
    before = await last_seq()
    body = {"name": "t", "resource_group_id": "rsg-12345678", "command": "true"}
    r = await scheduler_down.post(TASKS, json=body)
    assert refused(r, 503) == "the scheduler service is not reachable; retry shortly"
    assert r.json()["error"]["code"] == "unavailable"
    assert await last_seq() == before
    # The trainer itself answers its own routes.
    assert (await scheduler_down.get(TASKS)).json()["total"] == 0


def test_json_module_really_accepts_what_the_gateway_refuses() -> None:
    """Why the gateway walks parsed bodies: Python's json takes these without complaint."""
    parsed = json.loads('{"a": NaN, "b": Infinity, "c": 1e400, "d": 99999999999999999999999}')
    assert parsed["b"] == parsed["c"] == float("inf") and parsed["d"] > INT64_MAX
