"""Detached processes: start them, record their pids, tell whether a pid is still ours, stop them."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path

from .platform import Component, Paths, PlatformError, read_text, write_atomic


def cmdline(pid: int) -> bytes | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X")


def _reap(pid: int) -> None:
    """Collect the exit status when the process is our own child (only when started in-process)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def alive(pid: int, match: str | None = None) -> bool:
    """Whether ``pid`` runs and, if ``match`` is given, its command line still contains it."""
    _reap(pid)
    line = cmdline(pid)
    # Just after exec the kernel shows an empty command line for a moment; kernel threads
    # always do. Look again briefly before deciding it is not ours.
    for _ in range(40):
        if line != b"":
            break
        time.sleep(0.005)
        line = cmdline(pid)
    if line is None or _zombie(pid):
        return False
    return match is None or match.encode() in line


def read_pid(path: Path) -> int | None:
    text = read_text(path)
    try:
        return int(text) if text else None
    except ValueError:
        return None


def running_pid(paths: Paths, comp: Component) -> int | None:
    pid = read_pid(paths.pid_file(comp.name))
    return pid if pid is not None and alive(pid, comp.match) else None


def spawn(comp: Component, env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    """Start ``comp`` detached from the terminal, its output appended to its log file."""
    comp.log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(comp.log_file, "ab") as log:
        log.write(f"--- {datetime.now().isoformat(timespec='seconds')} capstan starts {comp.name}\n".encode())
        log.flush()
        try:
            return subprocess.Popen(
                comp.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        except FileNotFoundError as e:
            raise PlatformError(f"{comp.argv[0]} not found: run scripts/install.sh") from e


def record_pid(paths: Paths, name: str, pid: int) -> None:
    write_atomic(paths.pid_file(name), f"{pid}\n")


def terminate(pids: Iterable[tuple[int, str | None]], timeout: float = 10.0) -> list[tuple[int, bool]]:
    """SIGTERM each pid, wait up to ``timeout`` for them all, SIGKILL what is left.

    Returns (pid, killed) for each signalled pid; ``killed`` means it needed SIGKILL.
    """
    signalled: list[tuple[int, str | None]] = []
    for pid, match in pids:
        if alive(pid, match) and _signal(pid, signal.SIGTERM):
            signalled.append((pid, match))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p, m) for p, m in signalled):
        time.sleep(0.1)
    result = []
    for pid, match in signalled:
        killed = alive(pid, match) and _signal(pid, signal.SIGKILL)
        result.append((pid, killed))
    for pid, match in signalled:
        end = time.monotonic() + 5
        while alive(pid, match) and time.monotonic() < end:
            time.sleep(0.05)
    return result


def _signal(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return False


def port_problem(host: str, port: int) -> str | None:
    """Why a server could not listen on host:port now, or None (binds with SO_REUSEADDR, as servers do)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return f"port {port} on {host} is already in use by another process"
            return f"cannot listen on {host}:{port}: {e.strerror or e}"
    return None


def tail(path: Path, lines: int = 30) -> str:
    try:
        data = path.read_bytes()[-64 * 1024 :]
    except FileNotFoundError:
        return f"(no log at {path})"
    text = data.decode(errors="replace").splitlines()[-lines:]
    return "\n".join(text)


@contextlib.contextmanager
def exclusive(paths: Paths, say: Callable[[str], None]) -> Iterator[None]:
    """One up/down/restart/agent command at a time per data dir (a second one waits its turn).
    What these commands and the processes they start create is the platform's alone (0600/0700)."""
    os.umask(0o077)
    if not paths.run.is_dir():
        yield
        return
    with open(paths.run / "lock", "w") as f:  # not inherited by what we start (O_CLOEXEC)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another capstan command working on {paths.root} ...")
            fcntl.flock(f, fcntl.LOCK_EX)
        yield
