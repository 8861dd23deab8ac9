"""A served port reachable from another host: the node forwards a port of its publish range on its
address to the instance's served port, for the configured sources (the gateways) only.

The "other hosts" are network namespaces this test creates (``sandbox_testing.other_hosts``), each
plugged into this machine by a veth pair on a subnet of its own: one is an allowed source (a gateway's
host), the other is not."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from capstan_agentkit.sandbox import BwrapExecutor, InstanceSpec
from capstan_agentkit.sandbox import testing as sandbox_testing
from capstan_agentkit.sandbox.config import SandboxConfig
from capstan_agentkit.sandbox.testing import OtherHost, http_get

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="containment needs root")


@pytest.fixture
def hosts() -> Iterator[list[OtherHost]]:
    with sandbox_testing.other_hosts(2) as made:
        yield made


@pytest.fixture
def config(hosts: list[OtherHost]) -> SandboxConfig:
    return sandbox_testing.fresh(publish_address=hosts[0].node_side, publish_sources=(f"{hosts[0].address}/32",))


@pytest.fixture
def executor(tmp_path: Path, config: SandboxConfig) -> Iterator[BwrapExecutor]:
    ex = BwrapExecutor(tmp_path / "instances", config)
    yield ex
    sandbox_testing.stop_all(ex, config)


def _until(what: str, check: Callable[[], object], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_a_published_port_reaches_the_instance_from_the_allowed_sources_only(
        executor: BwrapExecutor, hosts: list[OtherHost]) -> None:
    gateway_host, stranger = hosts
    executor.start(InstanceSpec(task_id="svc-pub", instance_index=0, command="", cpu=1, memory_gib=0.5,
                                entrypoint=("python3", "-m", "http.server", "8080"), ports=(8080,)))
    _until("the instance runs", lambda: executor.address("svc-pub", 0) and executor.published("svc-pub", 0))
    published = executor.published("svc-pub", 0)
    assert list(published) == [8080]
    node, port = published[8080].rsplit(":", 1)
    assert node == gateway_host.node_side and 30000 <= int(port) <= 32767

    url = f"http://{published[8080]}/"
    _until("the gateway's host reaches the served port", lambda: http_get(url, gateway_host).startswith("200"))
    assert http_get(url).startswith("200")  # and this machine's own callers (a gateway on the node)
    # another host, not among the sources, does not (nothing listens on the node's port itself)
    assert http_get(f"http://{stranger.node_side}:{port}/", stranger).startswith("failed")
    assert http_get(url, stranger).startswith("failed")
    # only the served port is forwarded: the next port of the range leads nowhere
    assert http_get(f"http://{node}:{int(port) + 1}/", gateway_host).startswith("failed")
    # and the instance's own address stays unreachable from the other host
    assert http_get(f"http://{executor.address('svc-pub', 0)}:8080/", gateway_host).startswith("failed")

    executor.stop("svc-pub", 0)
    _until("the instance ends", lambda: executor.status("svc-pub", 0).state == "exited")
    _until("the port is no longer forwarded", lambda: http_get(url, gateway_host).startswith("failed"))


def test_a_publish_address_needs_sources() -> None:
    with pytest.raises(ValueError, match="sources"):
        SandboxConfig(publish_address="10.252.0.1")
    with pytest.raises(ValueError, match="range"):
        SandboxConfig(publish_address="10.252.0.1", publish_sources=("10.252.0.2/32",), publish_ports=(80, 90))
