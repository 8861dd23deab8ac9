"""The bubblewrap command line of one instance, built as an argv list (no shell ever parses user text
on the host: the user's command is one argument, run by ``/bin/sh -c`` inside the sandbox).

What comes from the host is described by a :class:`View`: contained, each host source is staged by
the launcher (:mod:`.launch`) and bubblewrap runs unprivileged in a user namespace; uncontained (the
operator's opt-out) bubblewrap runs as root with every capability dropped, as before containment.
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .spec import InstancePaths, InstanceSpec

SYSTEM_DIRS = ("/usr", "/bin", "/lib", "/lib64", "/sbin", "/etc")
_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# sitecustomize.py that applies CAPSTAN_GPU_MEMORY_FRACTION to PyTorch (see pyhook/sitecustomize.py),
# bound read-only into the sandbox and put first on PYTHONPATH when an instance holds part of a card.
PYHOOK_DIR = Path(__file__).resolve().parent / "pyhook"
PYHOOK_MOUNT = "/opt/capstan/pyhook"
GPU_FRACTION_ENV = "CAPSTAN_GPU_MEMORY_FRACTION"
# The platform's own runtimes that the built-in image ships (the engines a service replica runs, the
# fine-tuning template): where the node installed one outside its Python prefix (an editable install
# from a checkout), its package directory alone is bound read-only under BUILTIN_PACKAGES_MOUNT, which
# goes on PYTHONPATH; never the checkout around it.
BUILTIN_PACKAGES = ("capstan_engines", "capstan_finetune")
BUILTIN_PACKAGES_MOUNT = "/opt/capstan/python"
# Host secrets under /etc that an instance must not read, whatever their modes on this host.
MASKED_FILES = ("/etc/shadow", "/etc/gshadow", "/etc/shadow-", "/etc/gshadow-", "/etc/security/opasswd")
MASKED_GLOBS = ("/etc/ssh/ssh_host_*_key",)
_MASKED_NAMES = {os.path.basename(f) for f in MASKED_FILES if f.count("/") == 2}  # never bound, then masked


@dataclass
class View:
    """How the sandbox sees the host. The base class is the uncontained view: sources as they are."""

    contained: bool = False
    network: str = "host"
    hostname: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    etc_files: dict[str, Path] = field(default_factory=dict)  # /etc/hosts etc. -> generated host file
    private_paths: tuple[str, ...] = ()

    def source(self, path: str | Path) -> str:
        """Where bubblewrap finds host path ``path`` (staged, when contained)."""
        return str(path)

    def mask(self) -> str | None:
        """An unreadable empty file to bind over a masked host file (None: no masking)."""
        return None


@functools.lru_cache(maxsize=8)
def bwrap_supports(bwrap: str, option: str) -> bool:
    """Does this bubblewrap know ``option``? (its --help lists every option it has)"""
    try:
        run = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return option in run.stdout + run.stderr


def python_prefixes(private_paths: tuple[str, ...] = ()) -> list[str]:
    """Host directories the user's ``python3`` needs that system binds miss.

    A prefix that contains a private path (the data dir, storage) is never bound: binding it would
    show the instance the platform's secrets."""
    raw = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    raw |= {os.path.realpath(p) for p in raw}  # a symlinked prefix needs its target too
    keep: list[str] = []
    for p in sorted(raw):
        if p == "/" or not os.path.isdir(p):
            continue
        if any(p == d or p.startswith(d + "/") for d in SYSTEM_DIRS):
            continue  # already visible through the system binds
        if any(p.startswith(k + "/") for k in keep):
            continue  # nested in a prefix we bind anyway (sorted: parents come first)
        if any(Path(priv).resolve().is_relative_to(p) for priv in private_paths):
            continue
        keep.append(p)
    return keep


@functools.lru_cache(maxsize=1)
def builtin_package_dirs() -> tuple[tuple[str, str], ...]:
    """(host directory, name) of each built-in package installed outside the Python prefixes."""
    prefixes = [os.path.realpath(p) for p in (sys.prefix, sys.base_prefix)]
    out = []
    for name in BUILTIN_PACKAGES:
        try:
            found = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        locations = list(found.submodule_search_locations or []) if found else []
        for loc in locations[:1]:
            real = os.path.realpath(loc)
            if os.path.isdir(real) and not any(real.startswith(p + "/") for p in prefixes):
                out.append((real, name))
    return tuple(out)


def sandbox_path() -> str:
    # The runner's own environment first: a venv is where the node's ML
    # packages live, and its python3 is what "python3" should mean inside.
    python_bins = dict.fromkeys(f"{p}/bin" for p in (sys.prefix, sys.base_prefix))
    return ":".join([*python_bins, _SYSTEM_PATH])


def build_bwrap_argv(bwrap: str, spec: InstanceSpec, paths: InstancePaths, view: View | None = None) -> list[str]:
    """The full bwrap command line; an argv list, so no host shell ever parses user text."""
    view = view or View()
    argv = [bwrap]
    if view.contained:
        # bwrap runs as the instance's uid: a user namespace of its own, and none nested in it (a
        # nested one would hand user code capabilities over fresh mount and network namespaces;
        # bubblewrap before 0.8 cannot forbid them, and the instance is still contained without).
        argv += ["--unshare-user", "--unshare-cgroup-try"]
        if bwrap_supports(bwrap, "--disable-userns"):
            argv += ["--disable-userns"]
    argv += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--die-with-parent"]
    # As root, bwrap keeps *all* capabilities unless told otherwise; user code
    # must not be able to mount, mknod or touch the (shared) host network config.
    argv += ["--cap-drop", "ALL"]
    if view.network == "none":
        argv += ["--unshare-net"]
    if view.hostname:
        argv += ["--hostname", view.hostname]
    if spec.rootfs:
        argv += _tree_binds(view, spec.rootfs, "/", skip={"proc", "dev", "sys", "tmp", "run", "etc"})
        argv += _tree_binds(view, os.path.join(spec.rootfs, "etc"), "/etc", skip=_MASKED_NAMES)
    else:
        # /etc gets a directory of its own when the platform puts files in a directory the host's
        # /etc lacks (/etc/mpi): a tmpfs with each host entry bound into it.
        own_etc = any(_lacks_parent(t, "/etc") for t in spec.files)
        for d in SYSTEM_DIRS:
            if os.path.islink(d):  # merged-/usr hosts: /bin -> usr/bin etc.
                argv += ["--symlink", os.readlink(d), d]
            elif d == "/etc" and own_etc:
                argv += _tree_binds(view, "/etc", "/etc", skip=_MASKED_NAMES)
            elif os.path.isdir(d):
                argv += ["--ro-bind", d, d]
    if (empty := view.mask()) is not None:
        masked = [f for f in MASKED_FILES if os.path.lexists(f)]
        masked += sorted(f for pattern in MASKED_GLOBS for f in glob.glob(pattern))
        for f in masked:
            argv += ["--ro-bind", empty, f]
    for target, host_file in sorted(view.etc_files.items()):
        argv += ["--ro-bind", view.source(host_file), target]
    # uid 0 keeps write access to /proc/sys and /proc/sysrq-trigger even without
    # capabilities, and bwrap does not cover those for root: make them read-only.
    argv += ["--proc", "/proc", "--ro-bind", "/proc/sys", "/proc/sys"]
    argv += ["--ro-bind-try", "/proc/sysrq-trigger", "/proc/sysrq-trigger"]
    argv += ["--dev", "/dev", "--tmpfs", "/tmp"]
    if not spec.rootfs:  # an image brings its own Python
        for p in python_prefixes(view.private_paths):  # after /tmp, so a prefix under /tmp is not hidden
            argv += ["--ro-bind", view.source(p), p]
    argv += ["--dir", "/opt/ml", "--dir", "/opt/ml/input"]
    argv += ["--bind", view.source(paths.code), "/opt/ml/code"]
    argv += ["--bind", view.source(paths.output), "/opt/ml/output"]
    argv += ["--bind", view.source(paths.summary), "/opt/ml/summary"]  # TensorBoard's; saved with the output
    argv += ["--bind", view.source(paths.model), "/opt/ml/model"]
    argv += ["--ro-bind", view.source(paths.input_config), "/opt/ml/input/config"]
    for i, target in enumerate(sorted(spec.files)):
        argv += ["--ro-bind", view.source(paths.files / f"f{i}"), target]
    for m in sorted(spec.mounts, key=lambda m: (m.target.count("/"), m.target)):  # parents first
        argv += ["--ro-bind" if m.readonly else "--bind", view.source(m.source), m.target]
    env = {
        "PATH": sandbox_path(),
        "HOME": "/tmp",
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",  # so the user's prints reach the log as they happen
        **spec.env,
        **view.env,  # what the platform knows for sure (the instance's address) wins
    }
    python_path = [spec.env.get("PYTHONPATH", "")]
    if spec.env.get(GPU_FRACTION_ENV) and PYHOOK_DIR.is_dir():
        argv += ["--ro-bind", view.source(PYHOOK_DIR), PYHOOK_MOUNT]
        python_path.insert(0, PYHOOK_MOUNT)
    if not spec.rootfs and (builtin := builtin_package_dirs()):
        for host_dir, name in builtin:
            argv += ["--ro-bind", view.source(host_dir), f"{BUILTIN_PACKAGES_MOUNT}/{name}"]
        python_path.append(BUILTIN_PACKAGES_MOUNT)
    if any(python_path):
        env["PYTHONPATH"] = ":".join(p for p in python_path if p)
    argv += ["--chdir", "/opt/ml/code", "--clearenv"]
    for name, value in env.items():
        argv += ["--setenv", name, value]
    if spec.entrypoint:
        argv += ["--setenv", "CAPSTAN_COMMAND", spec.command]
        return [*argv, "--", *spec.entrypoint]
    # No --new-session: the sandbox must stay in the process group we signal on stop.
    return [*argv, "--", "/bin/sh", "-c", spec.command]


def _lacks_parent(target: str, top: str) -> bool:
    """Is ``target`` under ``top`` in a directory the host's ``top`` does not have?"""
    return target.startswith(top + "/") and not os.path.isdir(os.path.dirname(target))


def _tree_binds(view: View, source: str, target: str, skip: set[str]) -> list[str]:
    """``target`` as a directory of its own holding each entry of ``source`` (read-only binds, links as
    links): a root filesystem as ``/``, or the host's /etc with room for files of the platform."""
    out: list[str] = [] if target == "/" else ["--dir", target]
    base = target.rstrip("/")
    for entry in sorted(os.scandir(source), key=lambda e: e.name):
        if entry.name in skip:
            continue
        path = f"{base}/{entry.name}"
        if entry.is_symlink():
            out += ["--symlink", os.readlink(entry.path), path]
        elif entry.name == "opt" and target == "/":
            out += ["--dir", "/opt"]  # /opt/ml is the platform's; the image's other /opt entries stay
            out += [a for sub in sorted(os.scandir(entry.path), key=lambda e: e.name) if sub.name != "ml"
                    for a in ("--ro-bind", view.source(sub.path), f"/opt/{sub.name}")]
        elif entry.is_dir() or entry.is_file():
            out += ["--ro-bind", view.source(entry.path), path]
    return out
