"""Host-wide allocations of the sandbox: uids, name slots, task subnets, under one file lock.

Several agents can run on one host (the tests run a few as nodes of one machine), and instances of
one task placed on two of them must share a bridge and a subnet. So what is allocated lives in one
JSON document in ``<state_dir>`` (on /run by default: it is as volatile as the namespaces, links and
cgroups it describes), changed only under an exclusive ``flock``. Each lease records everything
needed to undo it, and its owner (the runner's pid and start time): a lease whose owner is gone is
stale, and whoever holds the lock next may clean it up (:mod:`.containment`).
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import pwd
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .config import SandboxConfig, reachable_dir

_STATE_FILE = "state.json"
_LOCK_FILE = "lock"


@dataclass
class Net:
    """One task's network on this host: a bridge and a subnet; members are lease ids."""

    key: str
    subnet: str
    number: int
    bridge: str
    members: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)


@dataclass
class Lease:
    """One running instance's share of the host (its owner is the runner process)."""

    id: str
    pid: int
    start: int
    uid: int
    slot: int
    net: str | None = None  # the Net key
    index: int = 0
    netns: str | None = None
    veth: str | None = None
    cgroup_version: int = 0
    cgroup_root: str = ""
    cgroup_parent: str = ""
    cgroup_name: str = ""
    # served ports reachable from other hosts: [publish address, host port, instance address, instance port]
    published: list[list[Any]] = field(default_factory=list)
    publish_sources: list[str] = field(default_factory=list)
    # The task network this lease was the last to leave, while its bridge is being deleted (outside the
    # lock): [subnet, number, bridge, blocked], still reserved so no new network takes them meanwhile,
    # and still in the firewall (its rules go once the bridge is gone, never before).
    draining: list[Any] = field(default_factory=list)

    def draining_net(self) -> Net | None:
        """The network of :attr:`draining`, as the firewall knows it (None: nothing draining)."""
        if not self.draining:
            return None
        subnet, number, bridge = self.draining[:3]
        blocked = list(self.draining[3]) if len(self.draining) > 3 else []  # older documents: 3 fields
        return Net(key=f"draining|{self.id}", subnet=str(subnet), number=int(number), bridge=str(bridge),
                   blocked=[str(b) for b in blocked])

    def owner_alive(self) -> bool:
        return process_start(self.pid) == self.start


def process_start(pid: int) -> int | None:
    """The start time of ``pid`` (clock ticks since boot), or None when it is not running: with the
    pid, it names one process even after the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()
    if len(fields) <= 19 or fields[0] in (b"Z", b"X"):  # a zombie is dead: only its parent has not looked yet
        return None
    return int(fields[19])


class State:
    """The document: change it only inside :meth:`HostState.locked`."""

    def __init__(self, data: dict[str, Any], stored: str = "") -> None:
        self.stored = stored  # the document's text as last read or written (unchanged: not written again)
        # Every agent of the host shares this document, whatever its version (an upgrade, two checkouts'
        # tests): fields a newer version added are left out here, never a reason to fail (an older agent
        # that saves the document drops them, e.g. a newer lease's published ports, until it is upgraded).
        self.leases = {k: Lease(**_known(Lease, v)) for k, v in (data.get("leases") or {}).items()}
        self.nets = {k: Net(**_known(Net, v)) for k, v in (data.get("nets") or {}).items()}

    def to_json(self) -> str:
        # vars, not asdict (a deep copy of every lease): the document is written on every change
        return json.dumps({"leases": {k: vars(v) for k, v in self.leases.items()},
                           "nets": {k: vars(v) for k, v in self.nets.items()}}, sort_keys=True, indent=1)

    def new_lease(self, lease_id: str, pid: int, config: SandboxConfig) -> Lease:
        """A lease with a fresh slot and a uid no other lease, and no local account, uses."""
        if lease_id in self.leases:
            raise RuntimeError(f"{lease_id} already holds a sandbox lease")
        start = process_start(pid)
        if start is None:
            raise RuntimeError(f"lease owner {pid} is not running")
        used_slots = {x.slot for x in self.leases.values()}
        used_uids = {x.uid for x in self.leases.values()}
        slot = next(i for i in range(len(used_slots) + 1) if i not in used_slots)
        uid = next((u for u in range(config.uid_base, config.uid_base + config.uid_count)
                    if u not in used_uids and not _has_account(u)), None)
        if uid is None:
            raise RuntimeError(f"no free sandbox uid in {config.uid_base}..{config.uid_base + config.uid_count - 1}")
        lease = Lease(lease_id, pid, start, uid, slot)
        self.leases[lease_id] = lease
        return lease

    def join_net(self, lease: Lease, key: str, config: SandboxConfig) -> tuple[Net, bool]:
        """The task's network (True: new, its bridge must be made), with ``lease`` as a member."""
        net = self.nets.get(key)
        created = net is None
        if net is None:
            net = Net(key, str(self._free_subnet(config)), self._free_number(),
                      bridge="", blocked=list(config.blocked_nets))
            net.bridge = f"{config.name_prefix}b{net.number}"
            self.nets[key] = net
        if lease.id not in net.members:
            net.members.append(lease.id)
        lease.net = key
        return net, created

    def firewalled(self) -> list[Net]:
        """Every network the firewall holds: the live ones, and those whose bridge is still being deleted."""
        return [*self.nets.values(), *(n for x in self.leases.values() if (n := x.draining_net()) is not None)]

    def leave_net(self, lease: Lease) -> Net | None:
        """Take ``lease`` out of its network; the network if that was its last member (tear it down)."""
        net = self.nets.get(lease.net or "")
        lease.net = None
        if net is None:
            return None
        if lease.id in net.members:
            net.members.remove(lease.id)
        if net.members:
            return None
        del self.nets[net.key]
        return net

    def publish(self, lease: Lease, address: str, ports: list[int], config: SandboxConfig) -> dict[int, int]:
        """Give each of the instance's ``ports`` (at ``address``) a free port of the node's publish range;
        instance port -> host port."""
        taken = {int(p[1]) for x in self.leases.values() for p in x.published}
        lo, hi = config.publish_ports
        free = (port for port in range(lo, hi + 1) if port not in taken)
        out = {}
        for port in sorted(set(ports)):
            host_port = next(free, None)
            if host_port is None:
                raise RuntimeError(f"no free port left in the node's publish range {lo}-{hi}")
            out[port] = host_port
        lease.published = [[config.publish_address, h, address, p] for p, h in out.items()]
        lease.publish_sources = list(config.publish_sources)
        return out

    def stale(self) -> list[Lease]:
        return [x for x in self.leases.values() if not x.owner_alive()]

    def _free_subnet(self, config: SandboxConfig) -> ipaddress.IPv4Network:
        taken = [ipaddress.IPv4Network(n.subnet) for n in self.nets.values()]
        taken += [ipaddress.IPv4Network(x.draining[0]) for x in self.leases.values() if x.draining]
        pool = ipaddress.IPv4Network(config.pool)
        for candidate in pool.subnets(new_prefix=config.subnet_prefix):
            if not any(candidate.overlaps(t) for t in taken):
                return candidate
        raise RuntimeError(f"no free /{config.subnet_prefix} left in the sandbox pool {config.pool}")

    def _free_number(self) -> int:
        used = {n.number for n in self.nets.values()} | {int(x.draining[1]) for x in self.leases.values() if x.draining}
        return next(i for i in range(len(used) + 1) if i not in used)


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def _has_account(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        return False


class HostState:
    """The allocation document of one host, in ``state_dir``."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = Path(state_dir)
        self._reachable = False

    def _open_lock(self) -> int:
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        if not self._reachable:
            # 0755: the sandbox's staging mount point lives here and must be reachable by instance uids.
            reachable_dir(self.dir)
            self._reachable = True
        try:
            return os.open(self.dir / _LOCK_FILE, flags, 0o600)
        except FileNotFoundError:  # removed since (a test's state dir): made again
            reachable_dir(self.dir)
            return os.open(self.dir / _LOCK_FILE, flags, 0o600)

    @contextmanager
    def locked(self) -> Iterator[State]:
        """Exclusive access to the document; what the block changed is saved when it ends (also when
        it raises: what was already done on the host must stay recorded so it can be undone)."""
        fd = self._open_lock()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            state = self._load()
            try:
                yield state
            finally:
                self.checkpoint(state)
        finally:
            os.close(fd)  # releases the lock

    def checkpoint(self, state: State) -> None:
        """Save the document now, inside :meth:`locked`: what the caller creates on the host next (a cgroup,
        a bridge) is then recorded before it exists, so a process killed midway leaves a lease the reaper
        undoes, never something no lease names."""
        text = state.to_json()
        if text != state.stored:
            self._save(text)
            state.stored = text

    def read(self) -> State:
        """A snapshot, for looking only."""
        with self.locked() as state:
            return state

    def _load(self) -> State:
        try:
            text = (self.dir / _STATE_FILE).read_text()
        except FileNotFoundError:
            return State({})
        return State(json.loads(text), text)

    def _save(self, text: str) -> None:
        tmp = self.dir / f".{_STATE_FILE}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.dir / _STATE_FILE)
