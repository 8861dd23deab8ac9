"""Helpers for tests: a real nats-server and a real PostgreSQL, started on free ports in temp dirs."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .natsserver import NatsServer, free_port, start_nats

__all__ = ["NatsServer", "PostgresServer", "start_nats", "postgres_server"]


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
