"""The node's nftables table changed one task network at a time is the table rebuilt whole."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess

import pytest

from capstan_agentkit.sandbox import network

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
