"""The executor's deploy / health check: can this node contain an instance, right now?

Not a list of guesses: after naming any prerequisite it can see is missing (root, the cgroup
controllers, iproute2 and nftables, user namespaces), it sets up a real containment (a cgroup with
limits, a task bridge with its firewall, a network namespace with a veth, an unprivileged uid) exactly
as the runner does, starts a sandbox in it, checks from inside that it runs as that uid and has its
eth0, and tears it all down. A node that fails it is DeployFailed, with the reason saying what is
missing. ``CAPSTAN_SANDBOX_UNCONTAINED=true`` turns containment off: the check then passes with a
warning, as long as bubblewrap itself works.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from dataclasses import replace
from pathlib import Path

from capstan_agentkit.healthcheck import Check

from . import network
from .argv import build_bwrap_argv
from .cgroups import detect
from .config import SandboxConfig
from .containment import Containment
from .spec import InstancePaths, InstanceSpec

NAME = "sandbox"
UNCONTAINED_WARNING = (
    "UNCONTAINED (CAPSTAN_SANDBOX_UNCONTAINED=true): instances run with no network isolation, "
    "no resource limits and as root inside bubblewrap"
)
_PROBE_COMMAND = "id -u; grep -q 'eth0:' /proc/net/dev && echo eth0"
_TIMEOUT_S = 30


def check(config: SandboxConfig, work_dir: Path) -> Check:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return Check(NAME, False, "bubblewrap (bwrap) is not installed")
    if not config.contained:
        return _uncontained(bwrap)
    if problems := missing(config):
        return Check(NAME, False, "cannot contain instances: " + "; ".join(problems)
                     + " (CAPSTAN_SANDBOX_UNCONTAINED=true runs them uncontained, at your own risk)")
    try:
        return Check(NAME, True, _probe(config, bwrap, work_dir))
    except Exception as e:  # noqa: BLE001 - the reason is the check's detail
        return Check(NAME, False, f"containment probe failed: {e}"[:1000])


def missing(config: SandboxConfig) -> list[str]:
    """Prerequisites of containment this node visibly lacks, in words an operator can act on."""
    problems = []
    if os.geteuid() != 0:
        problems.append("the agent is not root (it needs cgroups, network namespaces and instance uids)")
    try:
        detect(config.cgroup_root, config.cgroup_parent)
    except RuntimeError as e:
        problems.append(str(e))
    if lacking := network.missing_tools():
        problems.append(f"{' and '.join(lacking)} not installed (scripts/install.sh installs iproute2 and nftables)")
    if _sysctl("/proc/sys/user/max_user_namespaces") == "0":
        problems.append("user namespaces are disabled (user.max_user_namespaces = 0)")
    if _sysctl("/proc/sys/kernel/unprivileged_userns_clone") == "0":
        problems.append("unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone = 0)")
    return problems


def _probe(config: SandboxConfig, bwrap: str, work_dir: Path) -> str:
    paths = InstancePaths(Path(work_dir) / f".health-probe-{os.getpid()}-{threading.get_ident()}")
    for d in (paths.code, paths.input_config, paths.output, paths.model):
        d.mkdir(parents=True, exist_ok=True)
    os.chmod(paths.dir, 0o700)
    spec = InstanceSpec("health-probe", 0, _PROBE_COMMAND, cpu=0.1, memory_gib=0.25)
    # A network of its own (scope = this probe), so it exercises a bridge, its firewall and a veth.
    containment = Containment(replace(config, network_scope=f"probe:{paths.dir}"))
    try:
        sandbox = containment.setup(spec, paths, os.getpid())
        try:
            argv = sandbox.launcher_argv(build_bwrap_argv(bwrap, spec, paths, sandbox.view))
            run = subprocess.run(argv, capture_output=True, text=True, timeout=_TIMEOUT_S, stdin=subprocess.DEVNULL)
            if (reason := sandbox.exit_reason()) is not None:
                raise RuntimeError(reason)
            out = run.stdout.split()
            if run.returncode != 0 or out != [str(sandbox.uid), "eth0"]:
                raise RuntimeError(f"the probe sandbox ended with {run.returncode}: {(run.stderr or run.stdout).strip()[:300]}")
        finally:
            containment.teardown(sandbox.lease)
    finally:
        shutil.rmtree(paths.dir, ignore_errors=True)
    cg = detect(config.cgroup_root, config.cgroup_parent)
    return f"contained: cgroup v{cg.version} limits, own network namespace and veth, unprivileged uid {sandbox.uid}"


def _uncontained(bwrap: str) -> Check:
    run = subprocess.run(
        [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-pid", "--unshare-ipc",
         "--unshare-uts", "--die-with-parent", "true"],
        capture_output=True, text=True, timeout=_TIMEOUT_S,
    )
    if run.returncode != 0:
        return Check(NAME, False, f"bwrap failed ({run.returncode}): {run.stderr.strip()[:300]}")
    return Check(NAME, True, UNCONTAINED_WARNING)


def _sysctl(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None
