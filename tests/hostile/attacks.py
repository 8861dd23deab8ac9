"""What a hostile training task tries, from inside its sandbox (run by tests/test_hostile_task.py).

It reads its targets from /opt/ml/input/config/hyperparameters.json (the platform's ports, the
data dir's path, another task's id: a real attacker could guess or scan for all of them) and
prints one line per attempt: ``ATTEMPT <name> <outcome> <detail>``, where the outcome is
``blocked`` or ``BREACH``. The test asserts that every attempt is blocked.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable

TARGETS = json.load(open("/opt/ml/input/config/hyperparameters.json"))


def _gateway() -> list[str]:
    """The default route's gateway: from inside the sandbox, that is the host itself."""
    found = []
    with contextlib.suppress(OSError):
        for line in open("/proc/net/route").read().splitlines()[1:]:
            fields = line.split()
            if fields[1] == "00000000" and fields[2] != "00000000":
                found.append(socket.inet_ntoa(int(fields[2], 16).to_bytes(4, "little")))
    return found


HOSTS = ["127.0.0.1", *_gateway()]


def report(name: str, breached: bool, detail: str) -> None:
    print(f"ATTEMPT {name} {'BREACH' if breached else 'blocked'} {detail[:300]}", flush=True)


def attempt(name: str) -> Callable[[Callable[[], tuple[bool, str]]], None]:
    def run(fn: Callable[[], tuple[bool, str]]) -> None:
        try:
            breached, detail = fn()
        except Exception as e:  # noqa: BLE001 - an attempt that raises did not get through
            breached, detail = False, f"{type(e).__name__}: {e}"
        report(name, breached, detail)

    return run


def tcp(host: str, port: int) -> socket.socket | None:
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect((host, port))
        return s
    except OSError:
        s.close()
        return None


@attempt("nats-connect-publish-subscribe")
def _nats() -> tuple[bool, str]:
    for host in HOSTS:
        s = tcp(host, TARGETS["nats_port"])
        if s is None:
            continue
        with s:
            s.recv(4096)  # INFO
            s.sendall(b'CONNECT {"verbose":true}\r\nSUB capstan.> 1\r\n'
                      b'PUB capstan.evt.train.x 5\r\nhello\r\nPING\r\n')
            time.sleep(0.5)
            answer = s.recv(4096).decode(errors="replace")
            if "-ERR" not in answer and "PONG" in answer:
                return True, f"anonymous NATS session on {host}: {answer!r}"
            # refused for want of credentials, but the network boundary should have kept us out
            return True, f"reached NATS on {host} (it refused the session: {answer[:80]!r})"
    return False, "NATS is not reachable from the sandbox"


@attempt("grpc-every-service-with-and-without-reflection")
def _grpc() -> tuple[bool, str]:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    opened = []
    for name, port in TARGETS["grpc_ports"].items():
        for host in HOSTS:
            s = tcp(host, port)
            if s is None:
                continue
            s.close()
            with grpc.insecure_channel(f"{host}:{port}") as ch:
                try:
                    health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=3)
                    return True, f"{name} answered plain gRPC on {host}:{port}"
                except grpc.RpcError:
                    pass
                try:
                    stub = reflection_pb2_grpc.ServerReflectionStub(ch)
                    for _ in stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                                       timeout=3):
                        return True, f"{name} answered reflection on {host}:{port}"
                except grpc.RpcError:
                    pass
            opened.append(f"{name}@{host}")
    if opened:  # refused without a certificate, but the network boundary should have kept us out
        return True, f"reached {', '.join(opened)} (no call answered)"
    return False, "no service is reachable from the sandbox"


@attempt("read-admin-token-and-data-dir")
def _data_dir() -> tuple[bool, str]:
    data = TARGETS["data_dir"]
    for path in (f"{data}/admin-token", f"{data}/secrets/ca.key", f"{data}/secrets/admin.key"):
        with contextlib.suppress(OSError):
            return True, f"read {path}: {open(path).read(40)!r}"
    with contextlib.suppress(OSError):
        return True, f"listed {data}: {os.listdir(data)}"
    return False, "the data dir is not there"


@attempt("read-another-tasks-storage")
def _storage() -> tuple[bool, str]:
    for base in (f"{TARGETS['data_dir']}/storage/train/{TARGETS['victim']}", f"/opt/ml/../../{TARGETS['victim']}"):
        with contextlib.suppress(OSError):
            return True, f"listed {base}: {os.listdir(base)}"
    return False, "no other task's storage is visible"


@attempt("read-etc-shadow")
def _shadow() -> tuple[bool, str]:
    with contextlib.suppress(OSError):
        text = open("/etc/shadow").read()
        return bool(text.strip()), f"read /etc/shadow ({len(text)} bytes)"
    return False, "not readable"


@attempt("run-as-root")
def _root() -> tuple[bool, str]:
    return os.getuid() == 0 or os.geteuid() == 0, f"uid {os.getuid()} euid {os.geteuid()}"


@attempt("exceed-the-process-limit")
def _pids() -> tuple[bool, str]:
    want = int(TARGETS.get("processes", 300))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(want):
            procs.append(subprocess.Popen(["sleep", "30"]))
    except OSError as e:
        return False, f"{len(procs)} processes, then {e}"
    finally:
        for p in procs:
            p.kill()
            p.wait()
    return True, f"started all {want} processes"


@attempt("plant-symlinks-in-outputs")
def _links() -> tuple[bool, str]:
    data = TARGETS["data_dir"]
    for where, target in (("output", f"{data}/admin-token"), ("model", "/etc/passwd"),
                          ("output", "../../../../../admin-token")):
        os.symlink(target, f"/opt/ml/{where}/link-{abs(hash(target)) % 1000}")
    return False, "planted (the host must not follow them: the test checks the stored copy)"


if __name__ == "__main__":
    sys.stdout.flush()
