"""The entry point of an instance of a distributed task (SPEC §3.4), run inside the sandbox as
``python3 -I /opt/capstan/helpers/capstan_entry.py`` with the user's command in ``$CAPSTAN_COMMAND``.
Standard library only: it runs on the instance's Python, whatever the image.

Every instance serves the *launch agent* on ``$CAPSTAN_LAUNCH_PORT`` (2223): a beacon that says the
instance is up, and the way ``mpirun`` starts its daemons in the other instances (``capstan_rsh``,
OpenMPI's ``plm_rsh_agent``). Only the task's own instances reach it: the task's bridge is closed to
every other task and to the host's services (docs/architecture.md, Sandbox).

- every worker (index > 0) waits until the first instance (master, launcher, head) is reachable, and the
  first instance starts once every worker has reached it (a barrier: none misses another);
- ``DDP``, ``PS-Worker``, plain: the command runs, its exit code is the instance's;
- ``MPI``: the command runs on every instance; a worker then stays (serving ``mpirun``) until the
  launcher has finished, and exits with its command's code;
- ``Horovod``: the command runs on the launcher only; workers serve until the launcher has finished, exit 0;
- ``Ray``: the head starts a Ray head node (``Rank:0``), runs the command (plain ``ray.init()``
  connects), stops Ray; a worker joins the head (``Rank:<i>``) and leaves when the head has finished.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

PORT = int(os.environ.get("CAPSTAN_LAUNCH_PORT", "2223"))
MODE = os.environ.get("CAPSTAN_MODE", "")
INDEX = int(os.environ.get("INDEX", "0"))
FIRST = os.environ.get("MASTER_ADDR", "instance-0")
_children: list[subprocess.Popen[bytes]] = []
_seen_by: set[int] = set()  # the workers that have reached this instance (the first one's start barrier)
_seen_lock = threading.Lock()


def say(text: str) -> None:
    print(f"[capstan] {text}", file=sys.stderr, flush=True)


# -- the launch agent ------------------------------------------------------------------------------
def _send(conn: socket.socket, kind: bytes, payload: bytes) -> None:
    conn.sendall(kind + struct.pack("!I", len(payload)) + payload)


def _serve_one(conn: socket.socket) -> None:
    with conn:
        line = b""
        while not line.endswith(b"\n"):
            chunk = conn.recv(65536)
            if not chunk:
                return
            line += chunk
        request = json.loads(line)
        if request.get("ping"):
            with _seen_lock:
                _seen_by.add(int(request.get("from", -1)))
            _send(conn, b"x", b"0")
            return
        proc = subprocess.Popen(["/bin/sh", "-c", request["command"]], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        _children.append(proc)
        assert proc.stdout is not None

        def watch_caller() -> None:  # mpirun killed its rsh: the daemon goes too
            try:
                while conn.recv(1024):
                    pass
            except OSError:
                pass
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)

        threading.Thread(target=watch_caller, daemon=True).start()
        try:
            while chunk := proc.stdout.read1(65536):  # type: ignore[attr-defined]
                _send(conn, b"o", chunk)
            _send(conn, b"x", str(proc.wait()).encode())
        except OSError:
            pass


def serve() -> None:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", PORT))  # noqa: S104 - eth0 of the instance: the task's own bridge only
    srv.listen(64)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=_serve_one, args=(conn,), daemon=True).start()


def reachable(host: str, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, PORT), timeout=timeout) as c:
            c.sendall(json.dumps({"ping": 1, "from": INDEX}).encode() + b"\n")
            return c.recv(16).startswith(b"x")
    except OSError:
        return False


def wait_for_first() -> None:
    say(f"waiting until {FIRST} is reachable")
    while not reachable(FIRST):
        time.sleep(0.5)
    say(f"{FIRST} is reachable")


def wait_for_workers() -> None:
    """The first instance starts its part once every worker has reached it (so a worker never misses a
    first instance that finished quickly) and serves (mpirun and Ray reach them at once)."""
    workers = set(range(1, int(os.environ.get("WORLD_SIZE", "1"))))
    if workers:
        say(f"waiting until {len(workers)} worker(s) have reached {FIRST}")
    while True:
        with _seen_lock:
            if workers <= _seen_by:
                return
        time.sleep(0.2)


def wait_for_ray_nodes() -> None:
    """The head runs the command once every worker has joined its Ray cluster."""
    want = int(os.environ.get("WORLD_SIZE", "1"))
    probe = ("import ray, time\nray.init(logging_level='ERROR')\n"
             f"while sum(1 for n in ray.nodes() if n['Alive']) < {want}: time.sleep(0.5)\n")
    run([sys.executable, "-c", probe])


def wait_until_first_done() -> None:
    """Until the first instance stops answering (three misses in a row: it has finished)."""
    misses = 0
    while misses < 3:
        time.sleep(1.0)
        misses = 0 if reachable(FIRST) else misses + 1


# -- the command -----------------------------------------------------------------------------------
def run(argv: list[str]) -> int:
    proc = subprocess.Popen(argv)
    _children.append(proc)
    return proc.wait()


def shell() -> int:
    return run(["/bin/sh", "-c", os.environ.get("CAPSTAN_COMMAND", "")])


def _ray_resources() -> str:
    return json.dumps({f"Rank:{INDEX}": 1})


def _ray_common() -> list[str]:
    """CPUs floored (Ray counts whole CPUs), a small object store (it lives in the memory limit)."""
    store = max(78_643_200, int(float(os.environ.get("CAPSTAN_MEMORY_GIB", "1")) * (1 << 30) * 0.2))
    return [f"--num-cpus={os.environ.get('CAPSTAN_CPUS', '1')}", f"--resources={_ray_resources()}",
            f"--object-store-memory={store}", "--disable-usage-stats"]


def ray_head() -> int:
    code = run(["ray", "start", "--head", f"--port={os.environ.get('HEAD_PORT', '6379')}", *_ray_common(),
                "--include-dashboard=false"])
    if code != 0:
        say(f"ray start --head failed ({code})")
        return code
    try:
        wait_for_ray_nodes()
        return shell()
    finally:
        run(["ray", "stop", "--force"])


def ray_worker() -> int:
    address = f"{os.environ.get('HEAD_ADDR', FIRST)}:{os.environ.get('HEAD_PORT', '6379')}"
    code = run(["ray", "start", f"--address={address}", *_ray_common()])
    if code != 0:
        say(f"ray start --address={address} failed ({code})")
        return code
    wait_until_first_done()
    run(["ray", "stop", "--force"])
    return 0


def main() -> int:
    def stop(signum: int, _frame: object) -> None:
        for p in _children:
            if p.poll() is None:
                try:
                    os.kill(p.pid, signum)
                except ProcessLookupError:
                    pass
        if signum == signal.SIGTERM and not _children:
            sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    if ips := os.environ.get("CAPSTAN_PEER_IPS"):  # the peers' addresses are known only in the sandbox
        slots = os.environ.get("CAPSTAN_SLOTS", "1")
        os.environ["NODE_IP_SLOT_LIST"] = ",".join(f"{ip}:{slots}" for ip in ips.split(","))
    threading.Thread(target=serve, daemon=True).start()
    if INDEX > 0:
        wait_for_first()
    else:
        wait_for_workers()
    if MODE == "Ray":
        return ray_head() if INDEX == 0 else ray_worker()
    if MODE == "Horovod" and INDEX > 0:
        wait_until_first_done()
        return 0
    code = shell()
    if MODE == "MPI" and INDEX > 0:
        wait_until_first_done()
    return code


if __name__ == "__main__":
    sys.exit(main())
