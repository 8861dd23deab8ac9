"""Run a command inside a running instance's sandbox: its cgroup, its namespaces, its uid.

Used for what the platform runs in an instance besides its own command: a replica's exec probes and its
pre-stop command. Run by the agent (exec probes) or the runner (pre-stop) as
``python -I -S enter.py <enter.json> -- <argv...>`` (standard library only, like ``launch.py``). The plan,
written by the runner once the sandbox has started (root's, in the instance directory), names the
sandbox's bubblewrap pid, the instance's uid, its cgroup ``procs`` files and environment. In order:

1. moves itself into the instance's cgroup(s): what it runs counts against the instance's limits;
2. finds the sandbox's namespace init (the child of bubblewrap running as the instance's uid) and enters
   its network, IPC, UTS, cgroup, mount and PID namespaces, then (last: root of the host may enter any of
   them, not so once inside) its user namespace; a namespace that is already ours (an uncontained node's
   host network) is skipped;
3. drops every supplementary group, then becomes the instance's uid and gid, drops every capability
   and sets no-new-privs;
4. forks (a PID namespace applies to children) and execs ``argv`` with the instance's environment, in
   ``/``; exits with the command's code (128 + N when killed by signal N).

The command is an argv list: no shell parses it. Any failure before the exec exits 125 with the reason
on stderr.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import time

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
PR_SET_NO_NEW_PRIVS = 38
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
EXIT_ENTER_FAILED = 125
# The order matters: every namespace but the user one is entered while this process is still the host's
# root (they belong to the host's user namespace, or to the sandbox's outer one: bubblewrap nests a second
# user namespace to forbid more, and the command runs in that one); the user namespace comes last.
ORDER = (("net", CLONE_NEWNET), ("ipc", CLONE_NEWIPC), ("uts", CLONE_NEWUTS), ("cgroup", CLONE_NEWCGROUP),
         ("mnt", CLONE_NEWNS), ("pid", CLONE_NEWPID), ("user", CLONE_NEWUSER))

_libc = ctypes.CDLL(None, use_errno=True)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _status_field(pid: int, name: str) -> list[str]:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return line.split()[1:]
    return []


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def _settled(pid: int) -> bool:
    """Bubblewrap has finished setting the sandbox up once its init (pid 1 inside) has forked the
    instance's command, or is the command itself: before that its namespaces, credentials and
    mounts may still be changing (entering then fails, or lands in a half-built sandbox)."""
    if _children(pid):
        return True
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe")) != "bwrap"
    except OSError:
        return False


def namespace_init(sandbox_pid: int, uid: int, wait_s: float = 5.0) -> int:
    """The sandbox's first process inside every namespace: bubblewrap's child, running as ``uid``,
    once the sandbox is set up (an exec probe may come right after the instance started)."""
    deadline = time.monotonic() + wait_s
    while True:
        for entry in _children(sandbox_pid):
            try:
                if int(_status_field(entry, "Uid")[0]) == uid and _settled(entry):
                    return entry
            except (OSError, ValueError, IndexError):
                continue  # exited while we looked
        if time.monotonic() >= deadline or not os.path.exists(f"/proc/{sandbox_pid}"):
            raise RuntimeError(f"the sandbox (pid {sandbox_pid}) is not running")
        time.sleep(0.02)


def _drop_bounding_set() -> None:
    """No capability can come back through an exec (run while this process still has CAP_SETPCAP)."""
    _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    for cap in range(64):
        if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            break  # EINVAL: past the last capability the kernel knows


def _drop_capabilities() -> None:
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.capset(ctypes.byref(header), data), "drop capabilities")
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "set no_new_privs")


def enter(plan: dict[str, object]) -> None:
    for procs in plan.get("cgroup_procs") or ():  # type: ignore[attr-defined]
        fd = os.open(str(procs), os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, b"0")  # "0" is the writer itself
        finally:
            os.close(fd)
    uid = int(plan["uid"])  # type: ignore[call-overload]
    target = namespace_init(int(plan["pid"]), uid)  # type: ignore[call-overload]
    fds = []
    for name, flag in ORDER:
        theirs, ours = f"/proc/{target}/ns/{name}", f"/proc/self/ns/{name}"
        if os.stat(theirs).st_ino != os.stat(ours).st_ino:
            fds.append((os.open(theirs, os.O_RDONLY | os.O_CLOEXEC), flag, name))
    os.setgroups([])  # before the user namespace: root's groups must not come along
    for fd, flag, name in fds:
        try:
            _check(_libc.setns(fd, flag), f"enter the {name} namespace")
        finally:
            os.close(fd)
    _drop_bounding_set()
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    _drop_capabilities()
    if uid != 0 and (os.geteuid() == 0 or os.getuid() == 0):
        raise RuntimeError("could not drop root")


def main() -> int:
    args = sys.argv[1:]
    if len(args) < 3 or args[1] != "--":
        print("usage: enter.py <enter.json> -- <argv...>", file=sys.stderr)
        return 2
    try:
        with open(args[0]) as f:
            plan = json.load(f)
        enter(plan)
    except Exception as exc:  # noqa: BLE001 - whatever failed, the caller must learn what
        print(f"cannot enter the sandbox: {exc}", file=sys.stderr)
        return EXIT_ENTER_FAILED
    argv = args[2:]
    env = {str(k): str(v) for k, v in dict(plan.get("env") or {}).items()}
    pid = os.fork()
    if pid == 0:  # the child is in the PID namespace
        try:
            os.chdir("/")
            os.execvpe(argv[0], argv, env)  # noqa: S606 - an argv list; no shell involved
        except OSError as exc:
            print(f"cannot run {argv[0]}: {exc.strerror}", file=sys.stderr)
            os._exit(127)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


if __name__ == "__main__":
    sys.exit(main())
