"""Poison in the event log with the real processes (``capstan up``, issue #7 part 3).

Before the fix, one message of plain text in ``capstan.evt.>`` crash-looped every service, and
``capstan up`` could not start the platform until the message was deleted by hand. Here every kind of
poison goes into a running platform's stream; the platform keeps working (a resource group created
after it is visible, a task runs to success), the operator sees each message through the REST API and
``capstan events quarantine``, and ``capstan down`` + ``capstan up`` brings the platform back with the
same quarantine.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path
from typing import Any

import nats
import nats.aio.client
import pytest

from capstan_core import credentials
from capstan_core.streams import EVENTS_STREAM, MAX_COMMIT_BYTES
from capstan_core.testing import platform_poison, publish_poison

from .platform_harness import SERVICES, Platform, cli

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")


async def _admin(url: str, secrets: Path) -> nats.aio.client.Client:
    """Only the operator's NATS user may publish anywhere: the poison stands for a buggy or compromised writer."""
    admin = credentials.load_nats(secrets, "admin")
    return await nats.connect(url, user=admin.user, password=admin.password, inbox_prefix=admin.inbox_prefix)


# Each kind of poison on a model's subject and on a service group's: the trainer and the scheduler read
# both, the registry only the first, the inference service only the second.
POISON_SUBJECTS = ("capstan.evt.model.poison-{i}", "capstan.evt.service.ms-poison{i}")
READS = {"scheduler": POISON_SUBJECTS, "trainer": POISON_SUBJECTS, "registry": POISON_SUBJECTS[:1],
         "inference": POISON_SUBJECTS[1:]}


async def _publish_poison(url: str, secrets: Path) -> list[tuple[int, str, str]]:
    """(sequence, kind, subject pattern) of each message published."""
    nc = await _admin(url, secrets)
    try:
        js = nc.jetstream()
        return [(await publish_poison(js, pattern.format(i=i), p), p.kind, pattern)
                for i, p in enumerate(platform_poison()) for pattern in POISON_SUBJECTS]
    finally:
        await nc.close()


async def _max_msg_size(url: str, secrets: Path) -> int:
    nc = await _admin(url, secrets)
    try:
        return int((await nc.jetstream().stream_info(EVENTS_STREAM)).config.max_msg_size or 0)
    finally:
        await nc.close()


def _quarantine(p: Platform, want: dict[str, int], timeout: float = 60) -> dict[str, Any]:
    """The admin report once every service lists as many messages as ``want`` says."""
    deadline = time.monotonic() + timeout
    while True:
        with p.client() as c:
            r = c.get("/api/v1/admin/quarantine")
        assert r.status_code == 200, r.text
        report: dict[str, Any] = r.json()
        if [(s["service"], s["quarantined"]) for s in report["services"]] == [(s, want[s]) for s in SERVICES]:
            return report
        assert time.monotonic() < deadline, report["services"]
        time.sleep(0.2)


def test_poison_stops_nothing_and_the_platform_restarts(tmp_path: Path) -> None:
    data = tmp_path / "data"
    p = Platform.up(data)
    try:
        poison = asyncio.run(_publish_poison(p.nats_url, p.data_dir / "secrets"))
        with p.client() as c:
            r = c.post("/api/v1/resource-groups", json={"name": "after-poison"})
            assert r.status_code == 201, r.text
            assert c.get(f"/api/v1/resource-groups/{r.json()['id']}").json()["name"] == "after-poison"
        task = p.submit("echo still-running", name="after-poison")
        assert p.wait_status(task["id"], ("Succeeded", "Failed", "Stopped"))["status"] == "Succeeded"

        expected = {s: [(seq, kind) for seq, kind, pattern in poison if pattern in READS[s]] for s in SERVICES}
        report = _quarantine(p, {s: len(e) for s, e in expected.items()})
        for service in SERVICES:
            assert [(i["seq"], i["kind"]) for i in report["items"] if i["service"] == service] == expected[service]
        counted = {(c["service"], c["labels"]["kind"]): c["value"] for c in report["counters"]
                   if c["name"] == "quarantined_commits"}
        assert counted[("scheduler", "undecodable")] == 4 and counted[("inference", "oversized")] == 1
        assert counted[("registry", "undecodable")] == 2

        listed = json.loads(cli("--json", "events", "quarantine", data_dir=data).stdout)
        assert [(i["service"], i["seq"]) for i in listed["items"]] == [(i["service"], i["seq"]) for i in report["items"]]
        table = cli("events", "quarantine", data_dir=data).stdout
        assert "not JSON" in table and "newer than this service reads" in table

        p.down()
        p = Platform.up(data)  # starts: nothing in the log stops a service at start either
        assert [(i["service"], i["seq"], i["kind"]) for i in _quarantine(p, {s: len(e) for s, e in expected.items()})["items"]] == [
            (i["service"], i["seq"], i["kind"]) for i in report["items"]]
        assert asyncio.run(_max_msg_size(p.nats_url, p.data_dir / "secrets")) == MAX_COMMIT_BYTES
        again = p.submit("echo after-restart", name="after-restart")
        assert p.wait_status(again["id"], ("Succeeded", "Failed", "Stopped"))["status"] == "Succeeded"
    finally:
        p.down()
