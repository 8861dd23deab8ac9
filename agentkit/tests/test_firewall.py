"""The node's nftables table changed one task network at a time is the table rebuilt whole."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest

from capstan_agentkit.sandbox import InstanceSpec, network
from capstan_agentkit.sandbox import testing as sandbox_testing
from capstan_agentkit.sandbox.containment import Containment
from capstan_agentkit.sandbox.leases import HostState
from capstan_agentkit.sandbox.spec import InstancePaths

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("nft") is None, reason="needs root and nftables")


def _listing(table: str) -> str:
    out = subprocess.run(["nft", "list", "table", "inet", table], capture_output=True, text=True, check=True).stdout
    return "\n".join(sorted(line.strip() for line in out.splitlines()))


def test_adding_and_removing_one_network_gives_the_table_a_rebuild_gives() -> None:
    table = f"capstan_t{secrets.token_hex(3)}"
    blocked = ["169.254.169.254/32"]
    nets = [(f"{table[-6:]}b{i}", f"10.97.{i}.0/24") for i in range(4)]
    try:
        network.apply_firewall(table, [nets[0][0]], [nets[0][1]], blocked)
        for bridge, subnet in nets[1:]:
            network.change_firewall_net(table, bridge, subnet, [], add=True)
        network.change_firewall_net(table, *nets[2], [], add=False)
        stepwise = _listing(table)
        kept = [n for i, n in enumerate(nets) if i != 2]
        network.apply_firewall(table, [b for b, _ in kept], [s for _, s in kept], blocked)
        assert stepwise == _listing(table)
        assert nets[2][0] not in stepwise and nets[3][0] in stepwise
        # a network that is not there cannot be taken out: the caller then rebuilds
        with pytest.raises(RuntimeError):
            network.change_firewall_net(table, *nets[2], [], add=False)
    finally:
        network.apply_firewall(table, [], [], [])


def test_a_task_network_keeps_its_rules_until_its_bridge_is_gone(tmp_path: Path) -> None:
    """When the last instance of a task's network ends, its bridge is deleted after the exit (release);
    the bridge's firewall rules go with it, never before (no moment with an unfiltered bridge), and a
    lease whose runner died meanwhile is reaped with its rules."""
    table = f"capstan_t{secrets.token_hex(3)}"
    cfg = sandbox_testing.fresh(nft_table=table)
    # with a published port, the instance's end rebuilds the whole table: the emptied network is in it still
    published = sandbox_testing.fresh(nft_table=table, publish_address="10.252.0.1", publish_sources=("10.252.0.2/32",),
                                      publish_ports=(30000, 30002))
    bridges = "set bridges"

    def listed() -> str:
        return subprocess.run(["nft", "list", "set", "inet", cfg.nft_table, "bridges"], capture_output=True,
                              text=True).stdout

    try:
        for reap, publish in ((False, False), (True, False), (False, True)):
            containment = Containment(published if publish else cfg)
            name = f"fw-{int(reap)}{int(publish)}"
            paths = InstancePaths.under(tmp_path / "instances", name, 0)
            for d in (paths.code, paths.input_config, paths.output, paths.summary, paths.model):
                d.mkdir(parents=True)  # what the executor makes before the runner sets the sandbox up
            spec = InstanceSpec(task_id=name, instance_index=0, command="true", cpu=0.5, memory_gib=0.25,
                                ports=(8080,) if publish else ())
            sandbox = containment.setup(spec, paths, os.getpid())
            net = HostState(cfg.state_dir).read().nets[sandbox.lease.net or ""]
            assert f'"{net.bridge}"' in listed()
            containment.end(sandbox.lease)
            lease = HostState(cfg.state_dir).read().leases[sandbox.lease.id]
            assert lease.draining[2] == net.bridge and Path(f"/sys/class/net/{net.bridge}").exists()
            assert f'"{net.bridge}"' in listed() and bridges in listed()  # still filtered: the bridge is there
            if reap:  # its runner died before releasing: the stale lease is undone, rules and all
                with HostState(cfg.state_dir).locked() as st:
                    st.leases[lease.id].pid, st.leases[lease.id].start = 1, -1
                assert containment.reap_stale() == [lease.id]
            else:
                containment.release(sandbox.lease)
            assert not Path(f"/sys/class/net/{net.bridge}").exists()
            assert f'"{net.bridge}"' not in listed()
        assert sandbox_testing.settled_leftovers(cfg) == [] and sandbox_testing.settled_leftovers(published) == []
    finally:
        network.apply_firewall(cfg.nft_table, [], [], [])
