"""Containment of one instance: set up before the sandbox starts, undone when it has ended.

:meth:`Containment.setup` leases a uid and a name slot from the host-wide state, creates the cgroup
with the instance's limits and (network "isolated") the task bridge, firewall and the instance's
network namespace, gives the writable directories to the uid and writes the sandbox's /etc files.
The runner then starts the launcher (:mod:`.launch`) with :meth:`Sandbox.launcher_argv`, and calls
:meth:`Containment.teardown` once the sandbox has exited. A runner killed before its teardown leaves a
lease whose owner is dead: :meth:`Containment.reap_stale` (run at agent start, when an instance is
found lost, before every setup, and by ``capstan down``) undoes it. Usage for the last one::

    python -m capstan_agentkit.sandbox.containment --reap [--state-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..safefs import chown_tree
from . import network
from .argv import View
from .cgroups import Cgroups, detect, for_version
from .config import Limits, SandboxConfig, describe_memory, reachable_dir, thread_env
from .leases import HostState, Lease, Net, State, process_start
from .spec import InstancePaths, InstanceSpec, write_atomic

log = logging.getLogger(__name__)
LAUNCHER = Path(__file__).resolve().parent / "launch.py"
_MASK = "empty"


@dataclass
class StagedView(View):
    """The contained view: every host source is bind-mounted by the launcher under ``stage``."""

    stage: str = ""
    binds: dict[str, str] = field(default_factory=dict)  # host source -> name under the stage

    def source(self, path: str | Path) -> str:
        name = self.binds.setdefault(str(path), f"b{len(self.binds)}")
        return f"{self.stage}/{name}"

    def mask(self) -> str:
        return f"{self.stage}/{_MASK}"


@dataclass
class Sandbox:
    """One instance's containment, set up; what the runner needs to start and watch it."""

    spec: InstanceSpec
    paths: InstancePaths
    lease: Lease
    cgroups: Cgroups
    view: StagedView
    address: str | None = None
    published: dict[int, str] = field(default_factory=dict)  # instance port -> "<node address>:<port>"

    @property
    def uid(self) -> int:
        return self.lease.uid

    def launcher_argv(self, bwrap_argv: list[str]) -> list[str]:
        """The argv that starts the sandbox: the launcher, then (exec'd by it) ``bwrap_argv``.
        Call it after the bwrap argv was built with :attr:`view` (that is when sources are staged)."""
        write_atomic(self.paths.launch_plan, json.dumps(self.launch_plan()))
        # -I -S: the launcher needs the standard library only, and nothing from the environment.
        return [sys.executable, "-I", "-S", str(LAUNCHER), str(self.paths.launch_plan), "--", *bwrap_argv]

    def launch_plan(self) -> dict[str, object]:
        """What the launcher does before bubblewrap (:func:`.launch.prepare`); after the bwrap argv was built."""
        return {
            "cgroup_procs": [str(p) for p in self.cgroups.procs_files(self.lease.cgroup_name)],
            "stage": self.view.stage,
            "binds": [[src, name] for src, name in self.view.binds.items()],
            "masks": [_MASK],
            "netns": str(network.NETNS_DIR / self.lease.netns) if self.lease.netns else None,
            "uid": self.lease.uid,
            "gid": self.lease.uid,
            "error_file": str(self.paths.launch_error),
        }

    def oom_kills(self) -> int:
        return self.cgroups.oom_kills(self.lease.cgroup_name)

    def usage(self) -> tuple[int, int]:
        """(CPU nanoseconds used so far, memory bytes in use) by the instance's cgroup."""
        return self.cgroups.usage(self.lease.cgroup_name)

    def kill(self) -> None:
        """SIGKILL everything left in the instance's cgroup."""
        self.cgroups.kill(self.lease.cgroup_name)

    def exit_reason(self) -> str | None:
        """Why the instance ended, when the platform knows: it could not start, or ran out of memory."""
        if (err := self.paths.read_text(self.paths.launch_error)) is not None:
            return f"sandbox could not start: {err}"
        if self.oom_kills() > 0:
            return f"out of memory (limit {describe_memory(self.spec.memory_gib)})"
        return None


class Containment:
    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.state = HostState(config.state_dir)

    def setup(self, spec: InstanceSpec, paths: InstancePaths, owner_pid: int) -> Sandbox:
        """Everything the instance needs before its sandbox starts; raises RuntimeError (having undone
        what it did) with what is missing when the node cannot contain it."""
        cfg = self.config
        if os.geteuid() != 0:
            raise RuntimeError("containment needs root (cgroups, network namespaces, instance uids)")
        cgroups = detect(cfg.cgroup_root, cfg.cgroup_parent)
        if spec.network == "isolated" and (lacking := network.missing_tools()):
            raise RuntimeError(f"{' and '.join(lacking)} not installed (network isolation needs iproute2 and nftables)")
        with self.state.locked() as st:
            self._reap(st)
            lease = st.new_lease(str(paths.dir), owner_pid, cfg)
            try:
                addressing = self._create(st, lease, cgroups, spec)
            except BaseException:
                self._undo(st, lease)
                raise
        # What is the instance's alone (names its lease holds) is made outside the host lock, so that
        # instances starting and ending side by side do not queue behind each other's ip calls.
        try:
            if addressing is not None:
                net = st.nets[lease.net or ""]
                network.create_instance_net(lease.netns or "", lease.veth or "", net.bridge, net.subnet,
                                            spec.instance_index, spec.ports)
            view = self._prepare_files(spec, paths, lease, addressing)
        except BaseException:
            self.teardown(lease)
            raise
        published = {int(p[3]): f"{p[0]}:{p[1]}" for p in lease.published}
        return Sandbox(spec, paths, lease, cgroups, view, addressing[0] if addressing else None, published)

    def teardown(self, lease: Lease) -> None:
        """Undo :meth:`setup` once the sandbox has exited: anything left in its cgroup is killed, its
        cgroup, task network membership and firewall entries go; then :meth:`release`."""
        self.end(lease)
        self.release(lease)

    def end(self, lease: Lease) -> None:
        """What must be undone before the instance is reported ended: its cgroup (nothing of it runs on),
        its place in the task's network, its published ports. Its namespace, and the task's bridge when it
        was the last member (with the bridge's firewall rules), stay held by the lease until :meth:`release`."""
        with self.state.locked() as st:
            current = st.leases.get(lease.id)
            if current is None:
                return
            self._release(st, current)

    def adopt(self, lease: Lease, pid: int) -> None:
        """Make ``pid`` the lease's owner (the process that will :meth:`release` it), so the lease is not
        taken for stale when the runner that set it up exits first."""
        with self.state.locked() as st:
            current = st.leases.get(lease.id)
            start = process_start(pid)
            if current is not None and start is not None:
                current.pid, current.start = pid, start

    def release(self, lease: Lease) -> None:
        """Delete what :meth:`end` left (~50 ms of the kernel's for a namespace or a bridge), outside the
        host lock while the lease still holds their names, then the lease. A runner killed before this
        leaves a stale lease, reaped as ever."""
        with self.state.locked() as st:
            current = st.leases.get(lease.id)
        if current is None:
            return
        network.delete_instance_net(current.netns, current.veth, current.draining[2] if current.draining else None)
        with self.state.locked() as st:
            current = st.leases.get(lease.id)
            if current is not None and (gone := current.draining_net()) is not None:
                self._firewall(st, gone, add=False)  # the bridge is gone: its rules go
            st.leases.pop(lease.id, None)

    def _release(self, st: State, lease: Lease) -> Net | None:
        """Under the lock: the lease's cgroup, its task network membership and firewall entries; the
        network when this was its last member (its bridge is still to be deleted)."""
        # The cgroup first: should it fail (a process that will not die), the lease stays, and with it
        # the uid, so no other instance gets the uid a live process still has.
        if lease.cgroup_name:
            for_version(lease.cgroup_version, Path(lease.cgroup_root), lease.cgroup_parent).remove(lease.cgroup_name)
            lease.cgroup_name = ""
        net = st.leave_net(lease)  # the task's network, when this was its last instance on the host
        if net is not None:  # its rules stay (any rebuild below keeps them) until its bridge is deleted
            lease.draining = [net.subnet, net.number, net.bridge, list(net.blocked)]
        published, lease.published = lease.published, []
        if published:
            self._firewall(st)  # no longer forwarded, before the address can go to another instance
        # A network left empty keeps its rules until its bridge is deleted (never an unfiltered bridge):
        # the caller removes both (release, or _undo).
        return net

    def reap_stale(self) -> list[str]:
        """Undo the leases of runners that died without their teardown; their ids."""
        with self.state.locked() as st:
            return self._reap(st)

    # -- under the host lock -----------------------------------------------------------------------------
    def _create(self, st: State, lease: Lease, cgroups: Cgroups, spec: InstanceSpec) -> tuple[str, str] | None:
        """Cgroup, then the task's network (bridge, firewall, published ports); the instance's (address,
        subnet) when it has a network of its own (its namespace is made by the caller, outside the lock)."""
        cfg = self.config
        lease.cgroup_version, lease.cgroup_root, lease.cgroup_parent = cgroups.version, str(cgroups.root), cgroups.parent
        lease.cgroup_name = f"{cfg.name_prefix}-{lease.slot}"
        net, created = None, False
        if spec.network == "isolated":
            net, created = st.join_net(lease, f"{cfg.network_scope}|{spec.task_id}", cfg)
            lease.netns, lease.veth, lease.index = f"{cfg.name_prefix}-{lease.slot}", f"{cfg.name_prefix}v{lease.slot}", spec.instance_index
        # Every name is recorded before anything is made: a runner killed from here on (SIGKILL: no cleanup
        # runs) leaves a lease whose dead owner gets it reaped, with whatever part of it exists.
        self.state.checkpoint(st)
        cgroups.create(lease.cgroup_name, Limits.of(spec.cpu, spec.memory_gib, cfg))
        if net is None:
            return None
        network.create_bridge(net.bridge, net.subnet)
        if created:  # rules for the new bridge are in place before anything is plugged into it
            self._firewall(st, net, add=True)
        address = network.instance_address(net.subnet, spec.instance_index)
        if cfg.publish_address and spec.ports:  # reachable from the gateways' hosts too
            st.publish(lease, str(address), list(spec.ports), cfg)
            self._firewall(st)
        return str(address), net.subnet

    def _undo(self, st: State, lease: Lease) -> None:
        """Under the lock, all at once: a setup that failed, or a stale lease (its runner died)."""
        net = self._release(st, lease) or lease.draining_net()
        network.delete_instance_net(lease.netns, lease.veth, net.bridge if net is not None else None)
        if net is not None:
            lease.draining = []
            self._firewall(st, net, add=False)
        st.leases.pop(lease.id, None)

    def _reap(self, st: State) -> list[str]:
        reaped = []
        for lease in st.stale():
            try:
                self._undo(st, lease)
                reaped.append(lease.id)
            except Exception:  # noqa: BLE001 - one stuck lease must not block the others (or a setup)
                log.exception("could not clean up the sandbox of %s", lease.id)
        return reaped

    def _firewall(self, st: State, changed: Net | None = None, *, add: bool = True) -> None:
        """The node's table for what ``st`` holds now. ``changed``: the one network just added to
        ``st.nets`` (``add``) or just taken out of it: only its elements change when no port is published
        (the table stays, with empty sets, when the last network leaves); else, or should that fail (no
        table yet, one of another layout), the table is rebuilt whole."""
        gone = changed is not None and not add
        nets = [n for n in st.firewalled() if not (gone and changed is not None and n.bridge == changed.bridge)]
        if changed is not None and not any(x.published for x in st.leases.values()):
            kept = {b for n in nets if n.bridge != changed.bridge for b in n.blocked}
            try:
                network.change_firewall_net(self.config.nft_table, changed.bridge, changed.subnet,
                                            [b for b in changed.blocked if b not in kept], add=add)
                return
            except (RuntimeError, ValueError) as exc:
                log.info("updating the firewall for %s failed (%s): rebuilding it", changed.bridge, exc)
        published = [network.Published(str(p[0]), int(p[1]), str(p[2]), int(p[3]), tuple(x.publish_sources))
                     for x in st.leases.values() for p in x.published]
        network.apply_firewall(self.config.nft_table, [n.bridge for n in nets], [n.subnet for n in nets],
                               [b for n in nets for b in n.blocked], published)

    # -- the instance's own files (no lock needed) ---------------------------------------------------------
    def _prepare_files(
        self, spec: InstanceSpec, paths: InstancePaths, lease: Lease, addressing: tuple[str, str] | None
    ) -> StagedView:
        for d in (paths.code, paths.output, paths.model):
            d.mkdir(parents=True, exist_ok=True)
            (paths.summary if d == paths.output else d).mkdir(exist_ok=True)
            chown_tree(d, lease.uid, lease.uid)  # what storage restored is root's until now
        for m in spec.mounts:
            if m.own and Path(m.source).resolve().is_relative_to(paths.dir.resolve()):
                chown_tree(Path(m.source), lease.uid, lease.uid)  # downloaded inputs, clones: the instance's
        # Read-only inside (bound read-only), but the agent writes it with the platform's umask (0600):
        # the instance's uid must be able to read its own hyperparameters.
        chown_tree(paths.input_config.parent, lease.uid, lease.uid)
        paths.etc.mkdir(mode=0o755, exist_ok=True)
        address, subnet = addressing or (None, None)
        files = {
            "/etc/hosts": network.hosts_file(subnet, spec.instance_count, spec.instance_index),
            "/etc/passwd": (f"root:x:0:0:root:/root:/bin/sh\ncapstan:x:{lease.uid}:{lease.uid}:capstan instance:/tmp:/bin/sh\n"
                            "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"),
            "/etc/group": f"root:x:0:\ncapstan:x:{lease.uid}:\nnogroup:x:65534:\n",
        }
        etc_files = {}
        for target, text in files.items():
            host_file = paths.etc / Path(target).name
            write_atomic(host_file, text)
            os.chmod(host_file, 0o644)
            etc_files[target] = host_file
        env = thread_env(spec.cpu, spec.env)
        if address:
            env["CAPSTAN_INSTANCE_IP"] = address
        if subnet:  # every peer's address, in index order (computed, not discovered)
            env["CAPSTAN_PEER_IPS"] = ",".join(str(network.instance_address(subnet, i)) for i in range(spec.instance_count))
        stage = self.config.state_dir / "stage"
        reachable_dir(stage)
        return StagedView(contained=True, network=spec.network, hostname=f"instance-{spec.instance_index}", env=env,
                          etc_files=etc_files, private_paths=self.config.private_paths, stage=str(stage))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m capstan_agentkit.sandbox.containment")
    parser.add_argument("--reap", action="store_true", help="undo what killed instance runners left behind")
    parser.add_argument("--state-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    if not args.reap:
        parser.print_usage()
        return 2
    state_dir = args.state_dir or Path(os.environ.get("CAPSTAN_SANDBOX_STATE_DIR") or SandboxConfig().state_dir)
    if not (state_dir / "state.json").exists():
        return 0  # nothing was ever contained here
    for lease_id in Containment(SandboxConfig(state_dir=state_dir)).reap_stale():
        print(f"cleaned up the sandbox of {lease_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
