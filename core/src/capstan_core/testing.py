"""Helpers for tests: a real nats-server and a real PostgreSQL, started on free ports in temp dirs."""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nats.js import JetStreamContext

from . import credentials, grpcutil
from .eventstore import EventStore
from .natsserver import NatsServer, free_port, start_nats
from .streams import EVENTS_STREAM, MAX_COMMIT_BYTES, ensure_streams

__all__ = [
    "NatsServer",
    "Poison",
    "PostgresServer",
    "platform_poison",
    "poison_messages",
    "publish_poison",
    "admin_channel",
    "admin_store",
    "make_secrets",
    "start_nats",
    "start_secure_nats",
    "postgres_server",
]


def make_secrets(directory: Path) -> Path:
    """The platform's secrets for a test run (bcrypt at its cheapest: these are throw-away)."""
    return credentials.ensure_platform_secrets(directory, bcrypt_rounds=4)


def start_secure_nats(directory: Path, secrets_dir: Path) -> NatsServer:
    """A nats-server with the platform's users and permissions, as ``capstan up`` runs it."""
    return start_nats(directory, authorization=(secrets_dir / credentials.NATS_AUTH).read_text())


def admin_channel(address: str, service: str, secrets_dir: Path) -> Any:
    """A gRPC channel to ``service`` as the operator (``admin``)."""
    return grpcutil.channel(address, service, credentials.load(secrets_dir, "admin").tls)


@asynccontextmanager
async def admin_store(nats_url: str, secrets_dir: Path) -> AsyncIterator[EventStore]:
    """An event store on an ``admin`` NATS connection: a test acting as the owner of any aggregate."""
    from .service import connect_nats

    nc = await connect_nats(nats_url, "test-admin", credentials.load_nats(secrets_dir, "admin"))
    try:
        yield EventStore(nc.jetstream(timeout=10))
    finally:
        await nc.close()


def _pg_bin(name: str) -> str:
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    if candidates:
        return candidates[0]
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"PostgreSQL's {name} not found: run scripts/install.sh")
    return found


class PostgresServer:
    """A throw-away PostgreSQL cluster (initdb in a temp dir, trust auth, a free port)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = free_port()
        self.data = base / "data"
        self.sock = base / "sock"
        self._as_user: list[str] = []

    def start(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.sock.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            # initdb refuses to run as root: run the cluster as the postgres system user.
            pw = pwd.getpwnam("postgres")
            for p in (self.base, self.sock):
                os.chown(p, pw.pw_uid, pw.pw_gid)
            self._as_user = ["runuser", "-u", "postgres", "--"]
        subprocess.run(
            [*self._as_user, _pg_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8"],
            check=True,
            capture_output=True,
        )
        opts = f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(
            [*self._as_user, _pg_bin("pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.base / "pg.log"), "-w", "start"],
            check=True,
            capture_output=True,
        )

    def stop(self) -> None:
        subprocess.run(
            [*self._as_user, _pg_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
            capture_output=True,
        )

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    base = Path(tempfile.mkdtemp(prefix="capstan-pg-"))
    os.chmod(base, 0o755)  # noqa: S103 - the postgres user must reach its cluster dir
    server = PostgresServer(base / "pg")
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


# -- poison: messages no reader of the event log may choke on (issue #7) ------------------------------


@dataclass(frozen=True)
class Poison:
    """A message to publish into the event stream, and the kind of quarantine it must end in."""

    name: str
    kind: str
    payload: bytes


def poison_messages(newer: tuple[str, dict[str, Any]], invalid: tuple[str, dict[str, Any]]) -> list[Poison]:
    """Plain text, JSON of the wrong shape, a known type at a newer version, a valid-looking event with a
    field of the wrong type, and a message over the commit size limit. ``newer``: a registered type and
    data; ``invalid``: a registered type and data that fails its validation."""

    def commit(name: str, version: int, data: dict[str, Any]) -> bytes:
        return json.dumps({"t": 1, "events": [{"type": name, "version": version, "data": data}]}).encode()

    filler = "x" * (MAX_COMMIT_BYTES + 1024)
    return [
        Poison("plain text", "undecodable", b"this is not an event, just text"),
        Poison("wrong shape", "undecodable", json.dumps({"t": 1, "events": {"not": "a list"}}).encode()),
        Poison("newer version", "newer_version", commit(newer[0], 99, newer[1])),
        Poison("wrong-type field", "invalid", commit(invalid[0], 1, invalid[1])),
        Poison("oversized", "oversized", commit("Padding", 1, {"filler": filler})),
    ]


def platform_poison() -> list[Poison]:
    """The poison for the platform's own readers: the event types every service registers."""
    newer: tuple[str, dict[str, Any]] = ("ResourceGroupCreated", {"rg_id": "rsg-future", "name": "future"})
    invalid: tuple[str, dict[str, Any]] = ("TrainingTaskSubmitted", {
        "task_id": "train-poison", "name": "poison", "resource_group_id": "rsg-x", "command": "true",
        "hyperparameters": {}, "resources": None, "instance_count": 1, "tags": {}, "creator": "x",
        "stop_grace_seconds": 30, "at_ms": 1,
    })
    return poison_messages(newer, invalid)


async def publish_poison(js: JetStreamContext, subject: str, poison: Poison) -> int:
    """Publish one poison message on ``subject``; returns its stream sequence. An oversized one is
    published as a stream from before the size limit would have taken it (the limit is lifted for it,
    then restored)."""
    if len(poison.payload) <= MAX_COMMIT_BYTES:
        return int((await js.publish(subject, poison.payload, stream=EVENTS_STREAM)).seq)
    info = await js.stream_info(EVENTS_STREAM)
    await js.update_stream(dataclasses.replace(info.config, max_msg_size=-1))
    try:
        return int((await js.publish(subject, poison.payload, stream=EVENTS_STREAM)).seq)
    finally:
        await ensure_streams(js)
