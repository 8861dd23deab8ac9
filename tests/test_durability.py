"""Durability proofs on a real platform (separate processes started by ``capstan up``).

(a) kill -9 each component in turn while a task is in flight and restart it: the task still
    finishes, no event is lost or applied twice, and every read model equals a fresh replay;
(b) rebuild every read model from zero with the ``rebuild`` command: the same rows;
(c) restart nats-server (kill -9): nothing acknowledged is lost.
"""

from __future__ import annotations

import asyncio
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import nats
import nats.aio.client
import pytest

import capstan_core.contracts.scheduling  # noqa: F401 - registers the event types read below
import capstan_core.contracts.training  # noqa: F401
from capstan_core import credentials
from capstan_core.eventstore import decode_commit
from capstan_core.streams import EVENTS_STREAM

from .platform_harness import SERVICES, Platform

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")

# Every component of `capstan up`, nats-server included; the task runs ~2 s after the kill.
KILL_ORDER = ("scheduler", "trainer", "gateway", "registry", "inference", "trainer-agent", "inference-agent", "nats")


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    p = Platform.up(tmp_path_factory.mktemp("platform"))
    try:
        yield p
    finally:
        p.down()


async def _admin(url: str, secrets: Path) -> nats.aio.client.Client:
    admin = credentials.load_nats(secrets, "admin")
    return await nats.connect(url, user=admin.user, password=admin.password, inbox_prefix=admin.inbox_prefix)


async def _all_commits(url: str, secrets: Path) -> list[tuple[int, str, list[str], str]]:
    nc = await _admin(url, secrets)
    js = nc.jetstream()
    last = (await js.stream_info(EVENTS_STREAM)).state.last_seq
    out = []
    sub = await js.subscribe("capstan.evt.>", ordered_consumer=True)
    seq = 0
    while seq < last:
        m = await sub.next_msg(timeout=5)
        seq = m.metadata.sequence.stream
        recs = decode_commit(seq, m.subject, m.data, m.headers)
        out.append((seq, m.subject, [r.event.TYPE for r in recs], (m.headers or {}).get("Nats-Msg-Id", "")))
    await nc.close()
    return out


def test_kill9_each_component_mid_task_then_everything_consistent(platform: Platform) -> None:
    task_ids = []
    for component in KILL_ORDER:
        task = platform.submit("echo start; sleep 2.5; echo end", name=f"survive-{component}")
        platform.wait_status(task["id"], ("Running",))
        before = asyncio.run(_all_commits(platform.nats_url, platform.data_dir / "secrets")) if component == "nats" else None
        platform.kill9(component)
        platform.restart(component)
        done = platform.wait_status(task["id"], ("Succeeded", "Failed", "Stopped"))
        assert done["status"] == "Succeeded", (component, done)
        lines = platform.logs(task["id"])
        assert lines.count("start") == 1 and lines.count("end") == 1, (component, lines)
        if before is not None:  # (c) nothing acknowledged before the nats-server kill is lost
            after = asyncio.run(_all_commits(platform.nats_url, platform.data_dir / "secrets"))
            assert after[: len(before)] == before
        task_ids.append(task["id"])

    # Let releases and the last projections land.
    platform.wait_status(task_ids[-1], ("Succeeded",))
    commits = asyncio.run(_all_commits(platform.nats_url, platform.data_dir / "secrets"))
    for tid in task_ids:
        task_events = [t for _, subj, types, _ in commits if subj == f"capstan.evt.train.{tid}" for t in types]
        assert task_events == [  # the trainer's events; a submit and an end carry the scheduler's contract beside them
            "TrainingTaskSubmitted", "WorkloadSubmitted", "TrainingInstanceStarted", "TrainingInstanceExited",
            "TrainingTaskEnded", "WorkloadWithdrawn",
        ], (tid, task_events)
    _wait_released(platform, task_ids)
    commits = asyncio.run(_all_commits(platform.nats_url, platform.data_dir / "secrets"))
    for tid in task_ids:
        wl = [t for _, subj, types, _ in commits if subj == f"capstan.evt.workload.{tid}" for t in types]
        assert wl == ["WorkloadQueued", "WorkloadPlaced", "WorkloadReleased"], (tid, wl)
    ids = Counter(mid for *_, mid in commits if mid)
    assert [m for m, n in ids.items() if n > 1] == []

    # Each live read model equals a replay of the log into an empty database.
    for svc in SERVICES:
        live, live_pos = platform.digest(svc)
        url = f"sqlite:///{platform.data_dir / f'{svc}-replayed.db'}"
        platform.rebuild(svc, database_url=url)
        replayed, replay_pos = platform.digest(svc, url)
        assert (live, live_pos) == (replayed, replay_pos), svc


def test_rebuild_command_drops_and_replays_every_read_model(platform: Platform) -> None:
    task = platform.submit("echo rebuilt", name="before-rebuild")
    platform.wait_status(task["id"], ("Succeeded",))
    _wait_released(platform, [task["id"]])
    for svc in SERVICES:
        platform.terminate(svc)
        before = platform.digest(svc)
        out = platform.rebuild(svc)
        assert "rebuilt" in out
        assert platform.digest(svc) == before, svc
        platform.restart(svc)
    again = platform.submit("echo after", name="after-rebuild")
    assert platform.wait_status(again["id"], ("Succeeded", "Failed"))["status"] == "Succeeded"


def _wait_released(platform: Platform, task_ids: list[str], timeout: float = 30) -> None:
    import time

    deadline = time.monotonic() + timeout
    while True:
        commits = asyncio.run(_all_commits(platform.nats_url, platform.data_dir / "secrets"))
        released = {subj.rsplit(".", 1)[-1] for _, subj, types, _ in commits if "WorkloadReleased" in types}
        if set(task_ids) <= released:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not released: {set(task_ids) - released}")
        time.sleep(0.2)


def test_nats_restart_loses_nothing_acknowledged(tmp_path: Path, secrets_dir: Path) -> None:
    """(c) at the store level: every acknowledged append survives kill -9 of nats-server."""
    from capstan_core.contracts.scheduling import NodeStateChanged
    from capstan_core.eventstore import EventStore
    from capstan_core.streams import ensure_streams, event_subject
    from capstan_core.testing import start_secure_nats

    server = start_secure_nats(tmp_path / "nats", secrets_dir)

    async def append_many() -> list[int]:
        nc = await _admin(server.url, secrets_dir)
        js = nc.jetstream()
        await ensure_streams(js)
        store = EventStore(js)
        acked = []
        for i in range(300):
            r = await store.append(event_subject("node", f"n{i % 7}"),
                                   [NodeStateChanged(node_id=f"n{i % 7}", state="Running", at_ms=i)], expected_seq=None)
            acked.append(r.seq)
        await nc.close()
        return acked

    async def read_back() -> int:
        nc = await _admin(server.url, secrets_dir)
        info = await nc.jetstream().stream_info(EVENTS_STREAM)
        await nc.close()
        return int(info.state.messages)

    try:
        acked = asyncio.run(append_many())
        server.stop(kill=True)
        server.start()
        assert asyncio.run(read_back()) == len(acked) == 300
        assert server.sync_always  # fsync on every write (see capstan_core.natsserver)
    finally:
        server.stop()
