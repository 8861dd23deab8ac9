"""Durable training output: each instance's /opt/ml/output and /opt/ml/model, kept in platform storage.

The agent copies an instance's two directories to ``<storage>/train/<task-id>/<index>/{output,model}``
every few seconds while it runs and once more when it exits (before the exit is reported), and seeds
a new attempt's instance directory from there, so a task requeued onto *any* node resumes from its
last checkpoint. ``<storage>`` is shared by every agent started from one data dir (``capstan up``,
``capstan agent start``); across machines it is a shared mount.

The copies are incremental mirrors (a file whose size and mtime have not changed is not copied
again) and never follow a symbolic link that user code left in its directories: a link is copied as
a link, and special files are skipped, so a task cannot make the agent (root) read a host file.
Each ``<index>`` directory records the newest attempt that wrote (or resumed from) it: a stale
attempt still leaving a node that came back cannot overwrite what a newer attempt saved.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

DIRS = ("output", "model")
_TASK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")  # no '.', '/': one plain path component
_ATTEMPT_FILE = "attempt"


class OutputStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def instance_dir(self, task_id: str, index: int) -> Path:
        """``<root>/train/<task-id>/<index>``, refusing anything that could leave the root."""
        if not isinstance(task_id, str) or not _TASK_ID.match(task_id):
            raise ValueError(f"invalid task id for a storage path: {task_id!r}")
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ValueError(f"invalid instance index: {index!r}")
        path = (self.root / "train" / task_id / str(index)).resolve()
        if not path.is_relative_to(self.root / "train"):
            raise ValueError(f"storage path for {task_id}/{index} leaves {self.root}")
        return path

    def save(self, task_id: str, index: int, attempt: int, instance_dir: Path) -> bool:
        """Copy the instance's output and model dirs to storage; False (nothing written) when a newer
        attempt already owns the storage of this instance index."""
        d = self.instance_dir(task_id, index)
        with self._locked(d):
            owner = _read_attempt(d)
            if owner is not None and owner > attempt:
                return False
            for name in DIRS:
                mirror(instance_dir / name, d / name)
            _write_attempt(d, attempt)
        return True

    def restore(self, task_id: str, index: int, attempt: int, instance_dir: Path) -> bool:
        """Seed a new attempt's output and model dirs from storage (False: storage holds nothing for
        this instance). From now on, only ``attempt`` or a newer one may write there."""
        d = self.instance_dir(task_id, index)
        if not d.is_dir():
            return False
        with self._locked(d):
            if not any((d / name).is_dir() for name in DIRS):
                return False
            for name in DIRS:
                if (d / name).is_dir():
                    mirror(d / name, instance_dir / name)
            owner = _read_attempt(d)
            if owner is None or owner < attempt:
                _write_attempt(d, attempt)
        return True

    @contextlib.contextmanager
    def _locked(self, d: Path) -> Iterator[None]:
        """One writer or reader at a time per instance index, across agents sharing the storage."""
        d.mkdir(parents=True, exist_ok=True)
        fd = os.open(d / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _read_attempt(d: Path) -> int | None:
    try:
        return int((d / _ATTEMPT_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


def _write_attempt(d: Path, attempt: int) -> None:
    tmp = d / f".{_ATTEMPT_FILE}.{os.getpid()}.tmp"
    tmp.write_text(str(attempt))
    os.replace(tmp, d / _ATTEMPT_FILE)


def mirror(src: Path, dst: Path) -> None:
    """Make ``dst`` an exact copy of directory ``src`` (a missing ``src`` counts as empty).

    ``src`` is read through directory file descriptors with ``O_NOFOLLOW`` at every step, so a
    symbolic link swapped in while we copy is never followed. ``dst`` is ours: an entry of the wrong
    kind there is replaced, and links in it are never followed either.
    """
    dst.mkdir(parents=True, exist_ok=True)
    try:
        sfd = os.open(src, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except (FileNotFoundError, NotADirectoryError):
        _clear(dst)
        return
    except OSError as e:
        if e.errno == errno.ELOOP:  # src itself is a link: not a directory of ours
            _clear(dst)
            return
        raise
    try:
        _mirror_fd(sfd, dst)
    finally:
        os.close(sfd)


def _clear(dst: Path) -> None:
    for entry in os.scandir(dst):
        _remove(dst / entry.name)


def _remove(path: Path) -> None:
    st = os.lstat(path)
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)  # does not follow links inside
    else:
        path.unlink()


def _kind(path: Path) -> int | None:
    try:
        return stat.S_IFMT(os.lstat(path).st_mode)
    except FileNotFoundError:
        return None


def _mirror_fd(sfd: int, dst: Path) -> None:
    seen: set[str] = set()
    for entry in os.scandir(sfd):
        name = entry.name
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue  # removed while we looked
        target = dst / name
        have = _kind(target)
        if stat.S_ISDIR(st.st_mode):
            try:
                cfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=sfd)
            except OSError:
                continue  # gone, or swapped for something else since the scan
            try:
                if have is not None and have != stat.S_IFDIR:
                    _remove(target)
                target.mkdir(exist_ok=True)
                _mirror_fd(cfd, target)
            finally:
                os.close(cfd)
            seen.add(name)
        elif stat.S_ISLNK(st.st_mode):
            try:
                link = os.readlink(name, dir_fd=sfd)
            except OSError:
                continue
            if have == stat.S_IFLNK and os.readlink(target) == link:
                seen.add(name)
                continue
            if have is not None:
                _remove(target)
            os.symlink(link, target)
            seen.add(name)
        elif stat.S_ISREG(st.st_mode):
            if have == stat.S_IFREG:
                old = os.lstat(target)
                if old.st_size == st.st_size and old.st_mtime_ns == st.st_mtime_ns:
                    seen.add(name)
                    continue
            if _copy_file(sfd, name, target, have):
                seen.add(name)
        # sockets, FIFOs, devices: not training output; never copied
    for entry in os.scandir(dst):
        if entry.name not in seen:
            _remove(dst / entry.name)


def _copy_file(sfd: int, name: str, target: Path, have: int | None) -> bool:
    try:
        # O_NONBLOCK: should a FIFO have been swapped in since the scan, opening it must not hang.
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=sfd)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return False
        tmp = target.with_name(f".capstan-sync-{os.getpid()}.tmp")  # short: any name length fits
        with open(tmp, "wb") as out, os.fdopen(os.dup(fd), "rb") as inp:
            shutil.copyfileobj(inp, out, 1 << 20)
        os.chmod(tmp, stat.S_IMODE(st.st_mode))
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
        if have == stat.S_IFDIR:
            shutil.rmtree(target)
        os.replace(tmp, target)
        return True
    finally:
        os.close(fd)
