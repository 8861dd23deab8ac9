"""The sandbox launcher: the last root step between the runner and bubblewrap.

Run as ``python -I -S launch.py <plan.json> -- <bwrap argv...>`` (a plain script with standard-library
imports only, so it starts fast and imports nothing from the platform: the deploy check's form), or, by
the instance runner, as the ``preexec_fn`` of the bubblewrap it starts (:func:`in_child`: the same steps
in the forked child, without an interpreter's start). In order:

1. moves itself into the instance's cgroup(s), so bwrap and everything the user runs start inside
   the limits (there is no moment at which user code runs outside them);
2. enters a private mount namespace and bind-mounts what the sandbox needs (the instance's
   directories, Python) under a staging tmpfs that the instance uid can traverse: bubblewrap, running
   unprivileged, resolves its bind sources as that uid, and a source under a root-only directory
   (``/root/.pyenv``, a 0700 agent dir) would otherwise be out of its reach. The mounts vanish with
   the namespace; the host never sees them;
3. enters the instance's network namespace;
4. drops to the instance's uid and gid with no supplementary groups;
5. execs bubblewrap, which adds a user namespace (``--unshare-user --disable-userns``) and the rest.

Any failure is written to the plan's ``error_file`` and ends the launcher with 125.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
EXIT_LAUNCH_FAILED = 125

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    _check(_libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None, flags,
                       data.encode() if data else None), f"mount {source} on {target}")


def launch(plan: dict[str, object], argv: list[str]) -> None:
    prepare(plan)
    os.execv(argv[0], argv)  # noqa: S606 - an argv list built by the runner; no shell involved


def in_child(plan: dict[str, object]) -> None:
    """The same steps as a ``preexec_fn``: in the child the runner forks for bubblewrap, between fork and
    exec (the runner has no other thread then), sparing an interpreter's start. A failure is recorded in
    the plan's ``error_file`` and ends the child with 125, as the launcher's would."""
    try:
        prepare(plan)
    except BaseException as exc:  # noqa: BLE001 - whatever failed, the runner must learn what
        try:
            with open(str(plan["error_file"]), "w") as f:
                f.write(f"{exc}\n")
        finally:
            os._exit(EXIT_LAUNCH_FAILED)


def prepare(plan: dict[str, object]) -> None:
    """Steps 1-4 above: this process in the cgroups, its own mount namespace with the staged binds, in the
    instance's network namespace, as the instance's uid."""
    for procs in plan["cgroup_procs"]:  # type: ignore[attr-defined]
        fd = os.open(str(procs), os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, b"0")  # "0" is the writer itself
        finally:
            os.close(fd)
    stage = str(plan["stage"])
    _check(_libc.unshare(CLONE_NEWNS), "unshare mount namespace")
    _mount("none", "/", None, MS_REC | MS_PRIVATE, None)  # nothing we mount propagates to the host
    _mount("capstan-stage", stage, "tmpfs", 0, "mode=0755,size=1m")
    for source, name in plan["binds"]:  # type: ignore[attr-defined]
        target = os.path.join(stage, name)
        if os.path.isdir(source):
            os.mkdir(target, 0o755)
        else:
            os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
        _mount(source, target, None, MS_BIND | MS_REC, None)
    for name in plan["masks"]:  # type: ignore[attr-defined]
        # root-owned and mode 000: what a masked host file (/etc/shadow, ...) becomes in the sandbox
        os.close(os.open(os.path.join(stage, name), os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0))
    if plan.get("netns"):
        fd = os.open(str(plan["netns"]), os.O_RDONLY | os.O_CLOEXEC)
        try:
            _check(_libc.setns(fd, CLONE_NEWNET), "enter network namespace")
        finally:
            os.close(fd)
    uid, gid = int(plan["uid"]), int(plan["gid"])  # type: ignore[call-overload]
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.geteuid() == 0 or os.getuid() == 0:  # never hand a root process to bubblewrap
        raise RuntimeError("could not drop root")


def main() -> int:
    args = sys.argv[1:]
    if len(args) < 3 or args[1] != "--":
        print("usage: launch.py <plan.json> -- <bwrap argv...>", file=sys.stderr)
        return 2
    with open(args[0]) as f:
        plan = json.load(f)
    try:
        launch(plan, args[2:])
    except Exception as exc:  # noqa: BLE001 - whatever failed, the runner must learn what
        with open(str(plan["error_file"]), "w") as f:
            f.write(f"{exc}\n")
    return EXIT_LAUNCH_FAILED


if __name__ == "__main__":
    sys.exit(main())
