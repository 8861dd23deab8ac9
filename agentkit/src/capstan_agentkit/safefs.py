"""Host-side file operations on directories that user code can write (/opt/ml/output, /opt/ml/model,
/opt/ml/code), safe against symbolic-link and swap (TOCTOU) attacks.

The agent and the runner are root, and a sandboxed instance can plant anything in those directories:
a link to ``/etc/shadow`` or to the admin token, a FIFO that blocks a reader, a directory swapped for a
link between our check and our use. So every walk here goes through directory file descriptors opened
with ``O_NOFOLLOW`` at each step (never a path re-resolved from the top), links and special files are
skipped (never followed, never copied, never listed), and each file is checked with ``fstat`` on the
descriptor actually read. One module so that storage (save / restore), carry-over, chown and the
output listing a later REST route serves share the same walk.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Entry:
    """One regular file or directory of a tree, by its path relative to the tree's root."""

    path: str
    kind: str  # "file" or "dir"
    size: int
    mtime_ns: int


@contextmanager
def _open_dir(path: Path | str, dir_fd: int | None = None) -> Iterator[int | None]:
    """A descriptor of directory ``path`` (never through a link), or None if it is not a directory."""
    try:
        fd = os.open(path, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            yield None  # missing, not a directory, or a link: nothing of ours to walk
            return
        raise
    try:
        yield fd
    finally:
        os.close(fd)


def _entries(dfd: int) -> Iterator[tuple[str, os.stat_result]]:
    """(name, lstat) of each entry of an open directory, in name order; vanished entries skipped."""
    with os.scandir(dfd) as it:
        names = sorted(e.name for e in it)
    for name in names:
        try:
            yield name, os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            continue


def list_tree(root: Path) -> list[Entry]:
    """Every regular file and directory under ``root``, depth first in name order.

    Links and special files are left out (a link's target is never looked at); a ``root`` that is
    missing or is itself a link lists as empty. This is the one way to show a user what an instance
    left in its output: what it returns can be opened with :func:`open_file`.
    """
    out: list[Entry] = []
    with _open_dir(root) as fd:
        if fd is not None:
            _list(fd, "", out)
    return out


def _list(dfd: int, prefix: str, out: list[Entry]) -> None:
    for name, st in _entries(dfd):
        rel = f"{prefix}{name}"
        if stat.S_ISREG(st.st_mode):
            out.append(Entry(rel, "file", st.st_size, st.st_mtime_ns))
        elif stat.S_ISDIR(st.st_mode):
            with _open_dir(name, dfd) as cfd:
                if cfd is None:
                    continue  # swapped for something else since the scan
                out.append(Entry(rel, "dir", 0, st.st_mtime_ns))
                _list(cfd, f"{rel}/", out)


def open_file(root: Path, relpath: str) -> BinaryIO:
    """Open ``root/relpath`` for reading, only if every component is a real directory and the last a
    regular file: ``..``, absolute paths, links anywhere on the way and special files are refused
    (``PermissionError``; a missing file is ``FileNotFoundError``)."""
    parts = [p for p in relpath.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts) or relpath.startswith("/"):
        raise PermissionError(f"not a path inside the tree: {relpath!r}")
    fd = os.open(root, _DIR_FLAGS)
    try:
        for part in parts[:-1]:
            nfd = _open_component(part, fd, _DIR_FLAGS)
            os.close(fd)
            fd = nfd
        # O_NONBLOCK: a FIFO must not hang us before fstat tells us what it is.
        ffd = _open_component(parts[-1], fd, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(ffd).st_mode):
        os.close(ffd)
        raise PermissionError(f"not a regular file: {relpath!r}")
    os.set_blocking(ffd, True)
    return os.fdopen(ffd, "rb")


def _open_component(name: str, dir_fd: int, flags: int) -> int:
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise PermissionError(f"{name!r} is a link or not a directory") from e
        raise


def chown_tree(root: Path, uid: int, gid: int) -> None:
    """Give ``root`` and everything under it to ``uid:gid`` without ever following a link (a link
    itself is re-owned with lchown semantics, its target never)."""
    with _open_dir(root) as fd:
        if fd is None:
            raise NotADirectoryError(f"{root} is not a directory")
        os.chown(fd, uid, gid)
        _chown(fd, uid, gid)


def _chown(dfd: int, uid: int, gid: int) -> None:
    for name, st in _entries(dfd):
        if stat.S_ISDIR(st.st_mode):
            with _open_dir(name, dfd) as cfd:
                if cfd is not None:
                    os.chown(cfd, uid, gid)
                    _chown(cfd, uid, gid)
        else:
            os.chown(name, uid, gid, dir_fd=dfd, follow_symlinks=False)


def mirror(src: Path, dst: Path) -> None:
    """Make ``dst`` an exact copy of the regular files and directories of ``src`` (a missing ``src``,
    or one that is a link, counts as empty).

    ``src`` is read through directory descriptors with ``O_NOFOLLOW`` at every step, so a link swapped
    in while we copy is never followed; links and special files are not copied at all (a link stored
    and later served or restored would lead wherever it pointed on *that* host). ``dst`` is ours: an
    entry of the wrong kind there is replaced, and links in it are never followed either.
    """
    dst.mkdir(parents=True, exist_ok=True)
    with _open_dir(src) as sfd:
        if sfd is None:
            _clear(dst)
        else:
            _mirror_fd(sfd, dst)


def _clear(dst: Path) -> None:
    for entry in os.scandir(dst):
        _remove(dst / entry.name)


def _remove(path: Path) -> None:
    st = os.lstat(path)
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)  # fd-based on Linux: does not follow links inside
    else:
        path.unlink()


def _kind(path: Path) -> int | None:
    try:
        return stat.S_IFMT(os.lstat(path).st_mode)
    except FileNotFoundError:
        return None


def _mirror_fd(sfd: int, dst: Path) -> None:
    seen: set[str] = set()
    for name, st in _entries(sfd):
        target = dst / name
        have = _kind(target)
        if stat.S_ISDIR(st.st_mode):
            with _open_dir(name, sfd) as cfd:
                if cfd is None:
                    continue  # gone, or swapped for a link since the scan
                if have is not None and have != stat.S_IFDIR:
                    _remove(target)
                target.mkdir(exist_ok=True)
                _mirror_fd(cfd, target)
            seen.add(name)
        elif stat.S_ISREG(st.st_mode):
            if have == stat.S_IFREG:
                old = os.lstat(target)
                if old.st_size == st.st_size and old.st_mtime_ns == st.st_mtime_ns:
                    seen.add(name)
                    continue
            if _copy_file(sfd, name, target, have):
                seen.add(name)
        # links, sockets, FIFOs, devices: not training output; never copied
    for entry in os.scandir(dst):
        if entry.name not in seen:
            _remove(dst / entry.name)


def _copy_file(sfd: int, name: str, target: Path, have: int | None) -> bool:
    try:
        # O_NONBLOCK: should a FIFO have been swapped in since the scan, opening it must not hang.
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=sfd)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return False
        os.set_blocking(fd, True)
        tmp = target.with_name(f".capstan-sync-{os.getpid()}.tmp")  # short: any name length fits
        with open(tmp, "wb") as out, os.fdopen(os.dup(fd), "rb") as inp:
            shutil.copyfileobj(inp, out, 1 << 20)
        os.chmod(tmp, stat.S_IMODE(st.st_mode) & 0o777)  # never a set-uid bit from user code
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
        if have == stat.S_IFDIR:
            shutil.rmtree(target)
        os.replace(tmp, target)
        return True
    finally:
        os.close(fd)
