"""The runner fork server: instance runners forked from one warm process instead of a fresh interpreter each.

A fresh ``python -m capstan_agentkit.sandbox.runner`` spends ~100 ms of CPU importing before it does
anything; on a node starting many short instances that is most of an instance's cost. The executor
therefore asks a long-lived server (one per instance root, started on first use, detached in its own
session) to fork a runner: the server has the runner imported already, is single-threaded (forking is
safe), and forks in ~1 ms. The child is the same runner as the ``python -m`` form: its own session, cwd
the instance directory, stdin/stdout ``/dev/null``, stderr ``runner.err``, default signal handlers, then
``runner.main``. The executor recognises it as the instance's runner by its command line (this module)
and its working directory (the instance's), so a reused pid is never taken for it.

The server talks over a unix socket (mode 0600, in a 0700 directory; callers must be its own uid) and
forks only for a directory directly under its root. It holds the environment, umask and code it started
with: a client whose own differ (an upgraded package, a changed setting) gets ``stale``, the server
exits, and the client starts a new one. It exits by itself after a while without requests (``CAPSTAN_RUNNER_SERVER_IDLE_S``, default 600), or when
its socket is removed or replaced, or its root is gone. Whatever goes wrong here, the executor falls back to the ``python -m``
form: the fork server only makes starts cheaper, it is never needed for one. Usage::

    python -m capstan_agentkit.sandbox.forkserver <root> <socket> <token>
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from .config import RUN_ROOT, reachable_dir

FORKSERVER_MODULE = "capstan_agentkit.sandbox.forkserver"


def _idle_exit_s(default: float = 600.0) -> float:
    """``CAPSTAN_RUNNER_SERVER_IDLE_S``: seconds; anything but a finite positive number means the default."""
    try:
        value = float(os.environ.get("CAPSTAN_RUNNER_SERVER_IDLE_S", default))
    except ValueError:
        return default
    return value if math.isfinite(value) and value > 0 else default


IDLE_EXIT_S = _idle_exit_s()
_CHECK_S = 2.0
_MAX_REQUEST = 8192
_IGNORED_ENV = ("PYTEST_CURRENT_TEST",)  # changes between a test's phases, changes nothing for a runner


def token() -> str:
    """What a runner forked by the server would inherit: interpreter, environment, umask and the code of
    the packages it runs. Two processes with the same token fork the same runner."""
    umask = os.umask(0o077)
    os.umask(umask)
    h = hashlib.sha256()
    h.update(f"{sys.executable}\0{umask}\0".encode())
    for k, v in sorted(os.environ.items()):
        if k not in _IGNORED_ENV:
            h.update(f"{k}={v}\0".encode())
    import capstan_agentkit
    import capstan_core

    for pkg in (capstan_agentkit, capstan_core):
        for f in sorted(Path(pkg.__file__).parent.rglob("*.py")):  # type: ignore[arg-type]
            try:
                st = f.stat()
            except OSError:
                continue
            h.update(f"{f}\0{st.st_mtime_ns}\0{st.st_size}\0".encode())
    return h.hexdigest()


def socket_path(root: Path) -> Path:
    """Where the server of instance root ``root`` listens (short: unix socket paths are limited)."""
    base = RUN_ROOT / "runners" if os.geteuid() == 0 else Path(tempfile.gettempdir()) / f"capstan-runners-{os.geteuid()}"
    return base / (hashlib.sha256(str(root).encode()).hexdigest()[:20] + ".sock")


def _recv_line(conn: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n") and len(data) < _MAX_REQUEST:
        chunk = conn.recv(_MAX_REQUEST)
        if not chunk:
            break
        data += chunk
    return data


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


def _child(listener: socket.socket, conn: socket.socket, instance_dir: str) -> None:
    """In the forked child: become a detached runner of ``instance_dir``; never returns."""
    code = 1
    try:
        listener.close()
        conn.close()
        os.setsid()
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.close(null)
        err = os.open(os.path.join(instance_dir, "runner.err"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.dup2(err, 2)
        os.close(err)
        from . import runner

        code = runner.main([instance_dir])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - the traceback goes to runner.err, like the python -m form's
        traceback.print_exc()
    finally:
        try:
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve(root: Path, path: Path, own_token: str) -> int:
    from . import runner  # noqa: F401 - imported once here, so that every fork has it
    from .argv import bwrap_supports

    if bwrap := shutil.which("bwrap"):  # asked once here (cached), not by a `bwrap --help` in every runner
        bwrap_supports(bwrap, "--disable-userns")
    # What is imported now is never collected: a forked runner's collector then leaves these objects'
    # pages alone instead of writing to (and so copying) every one of them.
    gc.collect()
    gc.freeze()

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path.unlink(missing_ok=True)  # a dead server's; a live one notices its socket is gone and exits
    listener.bind(str(path))
    os.chmod(path, 0o600)
    inode = path.stat().st_ino
    listener.listen(64)
    listener.settimeout(_CHECK_S)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # runners are reaped by the kernel, never zombies
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 1)  # the client has read "ready" and closed its end
    os.close(null)
    last = time.monotonic()
    while True:
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            try:
                ours = path.stat().st_ino == inode
            except OSError:
                ours = False
            if not ours or not root.is_dir() or time.monotonic() - last > IDLE_EXIT_S:
                if ours:
                    path.unlink(missing_ok=True)
                return 0
            continue
        last = time.monotonic()
        with conn:
            conn.settimeout(5)
            try:
                if _peer_uid(conn) != os.geteuid():
                    continue
                request = json.loads(_recv_line(conn))
                if not isinstance(request, dict) or not isinstance(request.get("token"), str) \
                        or not isinstance(request.get("dir"), str):
                    conn.sendall(b'{"error": "a request is a JSON object with the strings token and dir"}\n')
                    continue
                if request.get("token") != own_token:
                    conn.sendall(b'{"error": "stale"}\n')
                    path.unlink(missing_ok=True)
                    return 0
                target = Path(str(request["dir"]))
                if not target.is_absolute() or target.parent != root or not target.is_dir() or target.is_symlink():
                    conn.sendall(json.dumps({"error": f"not an instance dir of {root}"}).encode() + b"\n")
                    continue
                # The child starts in the instance dir (inherited at fork): from its first instant the
                # executor sees it as that instance's runner.
                os.chdir(target)
                try:
                    pid = os.fork()
                    if pid == 0:
                        _child(listener, conn, str(target))
                finally:
                    os.chdir("/")
                conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
            except (OSError, ValueError, KeyError, TypeError):
                continue  # one bad or vanished caller; the next is served


class Client:
    """The executor's side: ``spawn(dir)`` forks a runner through the root's server (starting one when
    there is none or it is stale) and returns its pid; OSError when that cannot be done (the caller
    then starts the runner as ``python -m``)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = socket_path(root)
        self._token: str | None = None
        self._server: subprocess.Popen[bytes] | None = None

    def spawn(self, instance_dir: Path) -> int:
        if self._token is None:
            self._token = token()
        for _ in range(3):
            try:
                reply = self._ask(instance_dir)
            except (FileNotFoundError, ConnectionRefusedError, ConnectionResetError, BrokenPipeError, ValueError):
                self._start()
                continue
            if isinstance(pid := reply.get("pid"), int) and pid > 0:
                return pid
            if reply.get("error") != "stale":
                raise OSError(f"runner server refused: {reply.get('error')}")
            self._start()
        raise OSError("no runner server")

    def reap(self) -> None:
        """Collect a server that exited (it is our child until then)."""
        if self._server is not None and self._server.poll() is not None:
            self._server = None

    def _ask(self, instance_dir: Path) -> dict[str, object]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(str(self.path))
            s.sendall(json.dumps({"token": self._token, "dir": str(instance_dir)}).encode() + b"\n")
            reply = json.loads(_recv_line(s))
        if not isinstance(reply, dict):
            raise ValueError("bad reply")
        return reply

    def _start(self) -> None:
        self.reap()
        if self.path.parent.parent == RUN_ROOT:  # 0755 (the sandbox's state dir is under it too), runners 0700
            reachable_dir(RUN_ROOT)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.path.parent, 0o700)
        assert self._token is not None
        server = subprocess.Popen(
            [sys.executable, "-m", FORKSERVER_MODULE, str(self.root), str(self.path), self._token],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            start_new_session=True,  # like the runners it forks: outlives the agent
        )
        assert server.stdout is not None
        ready = server.stdout.readline()  # "ready" once it listens; EOF if it died
        server.stdout.close()
        if ready != b"ready\n":
            server.wait()
            raise OSError("the runner server did not start")
        self._server = server


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        print(f"usage: python -m {FORKSERVER_MODULE} <root> <socket> <token>", file=sys.stderr)
        return 2
    os.chdir("/")
    return serve(Path(args[0]), Path(args[1]), args[2])


if __name__ == "__main__":
    sys.exit(main())
