"""Sandboxes are contained (#7): each attack of the security review, tried from inside a real sandbox
(real namespaces, real cgroups, real nftables), fails.

Network traffic in these tests goes only to loopback and to addresses inside network namespaces the
tests (or the sandboxes) create: the "outside" is a namespace + veth of our own on 198.18.0.0/15
(RFC 2544, never routed), and everything is removed afterwards (``leftovers`` must come back empty).
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from capstan_agentkit.safefs import list_tree, open_file
from capstan_agentkit.sandbox import BwrapExecutor, InstanceSpec, InstanceStatus, read_log
from capstan_agentkit.sandbox import testing as sandbox_testing
from capstan_agentkit.sandbox.cgroups import for_version
from capstan_agentkit.sandbox.leases import HostState, Lease, process_start
from capstan_agentkit.sandbox.probe import missing
from capstan_proto import common_pb2, scheduler_pb2, trainer_pb2
from capstan_trainer.agent.storage import OutputStore

pytestmark = pytest.mark.skipif(bool(missing(sandbox_testing.CONFIG)), reason="this machine cannot contain sandboxes")


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := predicate():
            return result
        time.sleep(0.05)
    return predicate()


class Node:
    """One executor (an agent's view of its node) and helpers to run instances on it."""

    def __init__(self, executor: BwrapExecutor) -> None:
        self.ex = executor

    def start(self, command: str, task: str = "task-1", index: int = 0, **kw: Any) -> InstanceSpec:
        spec = InstanceSpec(task_id=task, instance_index=index, command=command, **kw)
        self.ex.start(spec)
        return spec

    def run(self, command: str, timeout: float = 30, **kw: Any) -> tuple[InstanceStatus, list[str]]:
        spec = self.start(command, **kw)
        return self.wait(spec, timeout), self.lines(spec)

    def wait(self, spec: InstanceSpec, timeout: float = 30) -> InstanceStatus:
        assert wait_until(lambda: self.ex.status(spec.task_id, spec.instance_index).state == "exited", timeout), \
            self.records(spec)
        return self.ex.status(spec.task_id, spec.instance_index)

    def records(self, spec: InstanceSpec) -> list[dict[str, Any]]:
        return read_log(self.ex.log_path(spec.task_id, spec.instance_index))[0]

    def lines(self, spec: InstanceSpec, stream: str = "stdout") -> list[str]:
        return [r["line"] for r in self.records(spec) if r["stream"] == stream]

    def line_starting(self, spec: InstanceSpec, prefix: str, timeout: float = 20) -> str:
        found = wait_until(lambda: next((x for x in self.lines(spec) if x.startswith(prefix)), None), timeout)
        assert found, self.records(spec)
        return str(found)

    def dir(self, spec: InstanceSpec) -> Path:
        return self.ex.instance_dir(spec.task_id, spec.instance_index)

    def tell(self, spec: InstanceSpec, name: str, data: Any) -> None:
        """Put a file the instance sees in /opt/ml/input/config (read-only to it, live through the bind)."""
        config = self.dir(spec) / "input" / "config"
        (config / f".{name}.tmp").write_text(json.dumps(data))
        (config / f".{name}.tmp").rename(config / name)

    def lease(self, spec: InstanceSpec) -> Lease:
        return HostState(self.ex.config.state_dir).read().leases[str(self.dir(spec))]


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Callable[[str], Node]]:
    """Nodes of one platform on this host (one data dir: they share task networks), like the test agents."""
    made: list[Node] = []
    config = sandbox_testing.fresh(network_scope=str(tmp_path), private_paths=(str(tmp_path / "data"),))

    def make(name: str) -> Node:
        made.append(Node(BwrapExecutor(tmp_path / name / "instances", config)))
        return made[-1]

    yield make
    for node in made:
        for key in node.ex.list_instances():
            node.ex.stop(*key)
    for node in made:
        assert wait_until(lambda n=node: all(n.ex.status(*k).state == "exited" for k in n.ex.list_instances()))
    assert wait_until(lambda: not sandbox_testing.leftovers(config)), sandbox_testing.leftovers(config)


@pytest.fixture
def node(nodes: Callable[[str], Node]) -> Node:
    return nodes("node-a")


# -- resources: the request is the limit --------------------------------------------------------------------
ALLOCATE = """
import sys
chunks = []
for i in range(int(sys.argv[1])):
    chunks.append(bytearray(16 << 20))  # zero-filled: every page touched
print("allocated", 16 * len(chunks), "MiB", flush=True)
"""


def test_memory_past_the_limit_ends_the_instance_out_of_memory(node: Node) -> None:
    env = {"ALLOC": ALLOCATE}
    within, lines = node.run('python3 -c "$ALLOC" 2', memory_gib=0.125, env=env)
    assert (within.exit_code, lines) == (0, ["allocated 32 MiB"])
    past, lines = node.run('python3 -c "$ALLOC" 32', memory_gib=0.125, env=env, index=1)
    assert past.exit_code == 128 + signal.SIGKILL and lines == []
    assert past.reason == "out of memory (limit 0.125 GiB)"


def test_fork_past_the_process_limit_fails(node: Node) -> None:
    forks = """
import errno, os, time
n = 0
try:
    while n < 500:
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        n += 1
except OSError as e:
    print("fork failed after", n, errno.errorcode[e.errno], flush=True)
"""
    status, lines = node.run('python3 -c "$FORKS"', cpu=0.1, env={"FORKS": forks})  # pids.max = max(64, 25.6)
    assert status.exit_code == 0, node.records(InstanceSpec("task-1", 0, "x"))
    (line,) = lines
    words = line.split()
    assert words[:3] == ["fork", "failed", "after"] and words[4] == "EAGAIN"
    assert 40 <= int(words[3]) < 64


def test_cpu_time_stays_near_the_quota(node: Node) -> None:
    busy = """
import os, time
start = time.monotonic()
kids = []
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        end = time.monotonic() + 2
        while time.monotonic() < end:
            pass
        os._exit(0)
    kids.append(pid)
for pid in kids:
    os.waitpid(pid, 0)
t = os.times()
print((t.children_user + t.children_system) / (time.monotonic() - start), flush=True)
"""
    status, lines = node.run('python3 -c "$BUSY"', cpu=0.25, env={"BUSY": busy})
    assert status.exit_code == 0
    ratio = float(lines[0])
    # Two busy processes would use up to 2 CPUs unlimited; the quota holds them near 0.25 of one.
    assert 0.05 < ratio < 0.5, ratio


def test_limits_identity_and_membership_seen_from_the_host(node: Node) -> None:
    mark = f"{1000 + random.randrange(10**6)}.5"
    spec = node.start(f"sleep {mark}", cpu=0.5, memory_gib=0.5)
    (sleeper,) = wait_until(lambda: _pids_of("sleep", mark))
    lease = node.lease(spec)
    cgroups = for_version(lease.cgroup_version, Path(lease.cgroup_root), lease.cgroup_parent)
    assert sleeper in cgroups.pids(lease.cgroup_name)
    assert node.ex.status("task-1", 0).pid not in cgroups.pids(lease.cgroup_name)  # the supervisor is not charged
    if cgroups.version == 1:
        mem, cpu, pids = cgroups.dirs(lease.cgroup_name)[:3]  # cpuacct, where separate, comes after
        assert int((mem / "memory.limit_in_bytes").read_text()) == 1 << 29
        if (mem / "memory.memsw.limit_in_bytes").exists():  # no swap beyond the limit
            assert int((mem / "memory.memsw.limit_in_bytes").read_text()) == 1 << 29
        assert int((cpu / "cpu.cfs_quota_us").read_text()) == 50_000
        assert int((cpu / "cpu.cfs_period_us").read_text()) == 100_000
        assert int((pids / "pids.max").read_text()) == 128
    status = dict(line.split(":", 1) for line in Path(f"/proc/{sleeper}/status").read_text().splitlines())
    assert status["Uid"].split() == [str(lease.uid)] * 4 and status["Gid"].split() == [str(lease.uid)] * 4
    assert status["Groups"].strip() == "" and int(status["CapEff"], 16) == 0 and status["NoNewPrivs"].strip() == "1"
    assert lease.uid >= sandbox_testing.CONFIG.uid_base


# -- identity and secrets -----------------------------------------------------------------------------------
def test_runs_unprivileged_and_host_secrets_stay_hidden(node: Node, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "admin-token").write_text("secret")
    command = f"""
        id -u
        for f in /etc/shadow /etc/gshadow; do cat $f >/dev/null 2>&1 && echo "read $f" || echo "denied $f"; done
        test -e {data} && echo "sees the data dir" || echo "no data dir"
        echo x > /opt/ml/output/o && echo x > /opt/ml/model/m && echo x > /opt/ml/code/c && echo writable
        echo x > /opt/ml/input/config/x 2>/dev/null || echo "config read-only"
        whoami; hostname
        unshare --user --map-root-user true 2>/dev/null && echo "root in a nested user namespace" || echo "no nested userns"
    """
    status, lines = node.run(command, memory_gib=0.25, cpu=1)
    assert status.exit_code == 0, lines
    assert int(lines[0]) != 0 and int(lines[0]) >= sandbox_testing.CONFIG.uid_base
    assert lines[1:] == ["denied /etc/shadow", "denied /etc/gshadow", "no data dir", "writable", "config read-only",
                         "capstan", "instance-0", "no nested userns"]
    owner = (node.dir(InstanceSpec("task-1", 0, "x")) / "output" / "o").stat().st_uid
    assert owner == int(lines[0])


# -- network ------------------------------------------------------------------------------------------------
CLIENT = """
import json, os, socket, sys, time
print("ready", os.environ.get("CAPSTAN_INSTANCE_IP"), flush=True)
go = "/opt/ml/input/config/go.json"
deadline = time.monotonic() + 60
while not os.path.exists(go):
    if time.monotonic() > deadline:
        sys.exit(3)
    time.sleep(0.02)
for host, port in json.load(open(go)):
    try:
        socket.create_connection((host, port), timeout=2).close()
        print("connected", host, flush=True)
    except OSError as e:
        print("blocked", host, type(e).__name__, flush=True)
"""
SERVER = """
import os, socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 5000))
s.listen()
s.settimeout(0.1)
print("listening", os.environ["CAPSTAN_INSTANCE_IP"], flush=True)
while not os.path.exists("/opt/ml/input/config/stop"):
    try:
        c, _ = s.accept()
    except socket.timeout:
        continue
    c.sendall(b"pong\\n")
    c.close()
"""
PEER = """
import socket, time
deadline = time.monotonic() + 30
while True:
    try:
        with socket.create_connection(("instance-1", 5000), timeout=2) as c:
            print("peer says", c.recv(16).decode().strip(), flush=True)
            break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.05)
"""


def _listener(host: str) -> socket.socket:
    s = socket.socket()
    s.bind((host, 0))
    s.listen()
    with socket.create_connection(s.getsockname(), timeout=2):  # reachable from the host itself
        pass
    return s


def test_an_instance_cannot_reach_the_host(node: Node) -> None:
    spec = node.start('python3 -c "$CLIENT"', env={"CLIENT": CLIENT})
    address = node.line_starting(spec, "ready ").split()[1]
    bridge_side = str(ipaddress.IPv4Interface(f"{address}/24").network.network_address + 1)
    loopback, bridge = _listener("127.0.0.1"), _listener(bridge_side)  # like NATS, gRPC, a database
    try:
        node.tell(spec, "go.json", [["127.0.0.1", loopback.getsockname()[1]], [bridge_side, bridge.getsockname()[1]]])
        assert node.wait(spec).exit_code == 0
    finally:
        loopback.close()
        bridge.close()
    results = [x.split()[:2] for x in node.lines(spec)[1:]]
    assert results == [["blocked", "127.0.0.1"], ["blocked", bridge_side]], node.lines(spec)


def test_instances_of_one_task_reach_each_other_and_no_other_task_does(nodes: Callable[[str], Node]) -> None:
    a, b = nodes("node-a"), nodes("node-b")  # two nodes on one host, as the test agents are
    server = b.start('python3 -c "$SERVER"', task="task-a", index=1, instance_count=2, env={"SERVER": SERVER})
    server_ip = b.line_starting(server, "listening ").split()[1]
    peer = a.start('python3 -c "$PEER"', task="task-a", index=0, instance_count=2, env={"PEER": PEER})
    assert a.wait(peer).exit_code == 0 and a.lines(peer) == ["peer says pong"]
    other = a.start('python3 -c "$CLIENT"', task="task-b", env={"CLIENT": CLIENT})
    other_ip = a.line_starting(other, "ready ").split()[1]
    assert ipaddress.IPv4Address(other_ip) not in ipaddress.IPv4Interface(f"{server_ip}/24").network
    a.tell(other, "go.json", [[server_ip, 5000]])
    assert a.wait(other).exit_code == 0
    assert a.lines(other)[1].split()[:2] == ["blocked", server_ip]
    with socket.create_connection((server_ip, 5000), timeout=5) as c:  # the host (an agent) may probe it
        assert c.recv(16) == b"pong\n"
    b.tell(server, "stop", True)
    assert b.wait(server).exit_code == 0
    hosts = (a.dir(peer) / "etc" / "hosts").read_text()
    assert f"{server_ip}\tinstance-1" in hosts


@pytest.fixture
def outside() -> Iterator[str]:
    """A host "on the internet": its own namespace behind a veth, serving TCP on port 8080 and printing
    the address each connection comes from."""
    prefix = sandbox_testing.CONFIG.name_prefix  # the session's: removed by this fixture itself
    ns, veth = f"{prefix}-outside{os.getpid()}", f"{prefix}o{os.getpid() % 100000}"
    net = ipaddress.IPv4Network("198.18.0.0/15")
    base = net.network_address + 4 * random.randrange(net.num_addresses // 4)
    host_side, far_side = base + 1, base + 2
    for argv in (["netns", "add", ns], ["-n", ns, "link", "set", "lo", "up"],
                 ["link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns],
                 ["addr", "add", f"{host_side}/30", "dev", veth], ["link", "set", veth, "up"],
                 ["-n", ns, "addr", "add", f"{far_side}/30", "dev", "eth0"], ["-n", ns, "link", "set", "eth0", "up"]):
        subprocess.run(["ip", *argv], check=True)
    serve = (f"import socket\ns = socket.create_server(({str(far_side)!r}, 8080))\nprint('up', flush=True)\n"
             "while True:\n    c, peer = s.accept()\n    print('from', peer[0], flush=True)\n    c.close()\n")
    server = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", serve], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline() == "up\n"
        yield str(far_side)
        server.kill()
        assert server.stdout.readline() == f"from {host_side}\n"  # masqueraded: it never sees 10.213.x.x
    finally:
        server.kill()
        server.wait()
        subprocess.run(["ip", "netns", "del", ns], check=False)
        subprocess.run(["ip", "link", "del", veth], check=False, capture_output=True)


def test_the_outside_is_reached_through_nat(node: Node, outside: str) -> None:
    spec = node.start('python3 -c "$CLIENT"', env={"CLIENT": CLIENT})
    node.line_starting(spec, "ready ")
    node.tell(spec, "go.json", [[outside, 8080]])
    assert node.wait(spec).exit_code == 0
    assert node.lines(spec)[1] == f"connected {outside}"


def test_network_modes_none_and_host(node: Node) -> None:
    show = "grep -o '^ *[a-z0-9]*:' /proc/net/dev | tr -d ' :' | sort | tr '\\n' ' '; echo; echo ip=$CAPSTAN_INSTANCE_IP"
    _, none = node.run(show, network="none")
    assert none == ["lo ", "ip="]
    _, host = node.run(show, network="host", index=1)
    host_links = sorted(p.name for p in Path("/sys/class/net").iterdir())
    assert set(host[0].split()) >= {"lo", "eth0"} & set(host_links) and host[1] == "ip="
    _, isolated = node.run(show, index=2)
    assert isolated[0].split() == ["eth0", "lo"] and isolated[1].startswith("ip=10.213.")


# -- outputs: links left by user code are never followed ------------------------------------------------------
def test_links_planted_in_the_output_are_never_followed(node: Node, tmp_path: Path) -> None:
    token = tmp_path / "admin-token"
    token.write_text("the admin token")
    command = f"""
        cd /opt/ml/output
        echo weights > real
        ln -s {token} absolute
        ln -s ../../../../../admin-token relative
        mkdir d && ln -s /etc d/etc && ln -s {tmp_path} /opt/ml/model/dir-link
        mkfifo fifo
    """
    status, _ = node.run(command)
    assert status.exit_code == 0
    instance = node.dir(InstanceSpec("task-1", 0, "x"))
    store = OutputStore(tmp_path / "storage")
    assert store.save("train-x", 0, 0, instance)
    stored = store.instance_dir("train-x", 0)
    assert sorted(str(p.relative_to(stored)) for p in stored.rglob("*") if p.name not in (".lock", "attempt")) == [
        "model", "output", "output/d", "output/real", "output/summary"]  # summary: /opt/ml/summary
    fresh = tmp_path / "attempt-1"
    assert store.restore("train-x", 0, 1, fresh)
    assert [(e.path, e.kind) for e in list_tree(fresh / "output")] == [("d", "dir"), ("real", "file"), ("summary", "dir")]
    listed = list_tree(instance / "output")
    assert [(e.path, e.kind) for e in listed] == [("d", "dir"), ("real", "file"), ("summary", "dir")]
    with open_file(instance / "output", "real") as f:
        assert f.read() == b"weights\n"
    for planted in ("absolute", "relative", "d/etc/passwd", "fifo", "../output/real", "/etc/passwd"):
        with pytest.raises(PermissionError):
            open_file(instance / "output", planted)
    assert token.read_text() == "the admin token"


# -- a killed or stopped runner still cleans up -----------------------------------------------------------------
def test_a_killed_runner_leaves_nothing_behind(node: Node) -> None:
    spec = node.start("echo ready; sleep 600", memory_gib=0.25)
    node.line_starting(spec, "ready")
    lease = node.lease(spec)
    os.kill(node.ex.status("task-1", 0).pid or 0, signal.SIGKILL)
    # a restarted agent's executor finds the runner lost and reaps what it left
    restarted = BwrapExecutor(node.ex.root, node.ex.config)
    assert wait_until(lambda: restarted.status("task-1", 0).state == "exited")
    assert lease.id not in HostState(node.ex.config.state_dir).read().leases
    assert sandbox_testing.settled_leftovers(node.ex.config) == []


def test_capstan_down_style_sigterm_and_the_reaper(node: Node) -> None:
    spec = node.start("trap 'exit 0' TERM; echo ready; while true; do sleep 0.1; done")
    node.line_starting(spec, "ready")
    os.kill(node.ex.status("task-1", 0).pid or 0, signal.SIGTERM)  # what `capstan down` sends
    assert node.wait(spec).exit_code == 0
    assert sandbox_testing.settled_leftovers(node.ex.config) == []
    # SIGKILL (down's last resort): the stand-alone reaper that `capstan down` runs cleans up
    spec = node.start("echo ready; sleep 600", index=1)
    node.line_starting(spec, "ready")
    runner = node.ex.status("task-1", 1).pid or 0
    os.kill(runner, signal.SIGKILL)
    assert wait_until(lambda: process_start(runner) is None)  # dead (a zombie until its parent, us, reaps it)
    reap = subprocess.run([sys.executable, "-m", "capstan_agentkit.sandbox.containment", "--reap",
                           "--state-dir", str(node.ex.config.state_dir)], capture_output=True, text=True, check=True)
    assert f"cleaned up the sandbox of {node.dir(spec)}" in reap.stdout
    assert sandbox_testing.settled_leftovers(node.ex.config) == []


# -- the deploy check -------------------------------------------------------------------------------------------
def test_the_health_check_proves_containment_or_says_what_is_missing(node: Node, tmp_path: Path) -> None:
    check = node.ex.health_check()
    assert check.ok and "unprivileged uid" in check.detail and "network namespace" in check.detail, check
    broken = BwrapExecutor(tmp_path / "broken", sandbox_testing.config(cgroup_root=tmp_path / "no-cgroups"))
    check = broken.health_check()
    assert not check.ok and "cgroup" in check.detail, check


# -- through the agent ------------------------------------------------------------------------------------------
def heredoc(script: str, *args: str) -> str:
    """A shell command running ``script`` with python3 inside the sandbox."""
    return f"python3 - {' '.join(args)} <<'EOF'\n{script.strip()}\nEOF\n"


async def test_the_task_fails_saying_out_of_memory(platform: Any) -> None:
    rg = await platform.group("team")
    await platform.agent(rg, "node-a", node_cpu=2, node_memory_gib=4)
    task = await platform.t.CreateTrainingTask(trainer_pb2.CreateTrainingTaskRequest(
        name="hog", resource_group_id=rg, command=heredoc(ALLOCATE, "32"),
        resources=common_pb2.Resources(cpu=1, memory_gib=0.25)))
    done = await platform.wait(task.id, "Failed", "Succeeded")
    assert done.status == "Failed" and done.failure_reason == "instance 0: out of memory (limit 0.25 GiB)"


async def test_two_nodes_one_task_network(platform: Any) -> None:
    rg = await platform.group("team")
    for name in ("node-a", "node-b"):
        await platform.agent(rg, name, node_cpu=1, node_memory_gib=2)
    serve_once = "import socket\ns = socket.create_server(('0.0.0.0', 5000))\nc, _ = s.accept()\nc.sendall(b'pong')"
    command = f'if [ "$RANK" = 1 ]; then\n{heredoc(serve_once)}else\n{heredoc(PEER)}fi'
    task = await platform.t.CreateTrainingTask(trainer_pb2.CreateTrainingTaskRequest(
        name="pair", resource_group_id=rg, command=command, instance_count=2,
        resources=common_pb2.Resources(cpu=1, memory_gib=0.5)))
    done = await platform.wait(task.id, "Failed", "Succeeded")
    assert done.status == "Succeeded", (done.failure_reason, await platform.lines(task.id))
    assert len({i.node_id for i in done.instances}) == 2  # one instance per node, one network
    assert "peer says pong" in await platform.lines(task.id)


async def test_a_node_that_cannot_contain_is_deploy_failed(platform: Any, tmp_path: Path) -> None:
    rg = await platform.group("team")
    agent = await platform.agent(rg, "bare", sandbox_cgroup_root=tmp_path / "no-cgroups")
    assert agent.membership.state == "DeployFailed"
    records = await platform.s.ListHealthChecks(scheduler_pb2.ListHealthChecksRequest(node_id=agent.node_id))
    (sandbox,) = [c for c in records.items[0].checks if c.name == "sandbox"]
    assert not sandbox.ok and "cannot contain instances" in sandbox.detail and "cgroup" in sandbox.detail


def _pids_of(*argv: str) -> list[int]:
    needle = "\0".join(argv).encode() + b"\0"
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes() == needle:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found
