"""Fixtures shared by every test: a real nats-server per test, a real PostgreSQL per session."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from capstan_core import credentials
from capstan_core.testing import NatsServer, PostgresServer, make_secrets, postgres_server, start_secure_nats

# Instance runners are forked by a warm server per instance root (capstan_agentkit.sandbox.forkserver);
# a test's root is used for moments, so its server goes soon after, not after the production 10 minutes.
os.environ.setdefault("CAPSTAN_RUNNER_SERVER_IDLE_S", "15")


@pytest.fixture(autouse=True)
def _own_umask() -> Iterator[None]:
    """Each test starts with the umask the run started with: code run in-process (``capstan up``'s
    lifecycle) sets 077 for the data dir, which must not make a later test's files unreadable."""
    before = os.umask(0o022)
    os.umask(before)
    yield
    os.umask(before)


@pytest.fixture(scope="session")
def secrets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The platform's secrets (CA, certificates, NATS users), made once per test session."""
    return make_secrets(tmp_path_factory.mktemp("secrets"))


@pytest.fixture
def nats_server(tmp_path: Path, secrets_dir: Path) -> Iterator[NatsServer]:
    """A real nats-server per test, with the platform's users and permissions (no anonymous access)."""
    server = start_secure_nats(tmp_path / "nats", secrets_dir)
    yield server
    server.stop()


@pytest.fixture
async def nc(nats_server: NatsServer, secrets_dir: Path) -> AsyncIterator[Client]:
    """A NATS client as ``admin`` (every permission), for tests that read or write streams directly."""
    admin = credentials.load_nats(secrets_dir, "admin")
    client = await nats.connect(
        nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2, user=admin.user,
        password=admin.password, inbox_prefix=admin.inbox_prefix,
    )
    yield client
    await client.close()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    with postgres_server() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test using this runs twice: on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db.sqlite'}"
    server: PostgresServer = request.getfixturevalue("pg_server")
    return server.create_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_urls(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A factory of fresh, separate databases (one per service), on SQLite and on PostgreSQL."""
    counter = iter(range(1000))

    def make() -> str:
        if request.param == "sqlite":
            return f"sqlite:///{tmp_path / f'db{next(counter)}.sqlite'}"
        server: PostgresServer = request.getfixturevalue("pg_server")
        return server.create_database()

    return make


_EXIT_STATUS: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _EXIT_STATUS.append(int(exitstatus))


@pytest.hookimpl(tryfirst=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Leave at once once the summary is printed. grpc.aio's poller thread can deadlock when a
    gRPC object from an already-closed test event loop is finalised by the garbage collector at
    interpreter teardown (the join in grpc's shutdown_grpc_aio never returns); every test has
    finished and reported by now, so nothing is lost by skipping that teardown."""
    import os
    import sys

    if _EXIT_STATUS and os.environ.get("CAPSTAN_TEST_NORMAL_EXIT") != "1":
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_EXIT_STATUS[0])
