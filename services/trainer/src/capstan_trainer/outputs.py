"""A task's outputs, given back to its user: what each instance left in ``/opt/ml/output`` and
``/opt/ml/model``, as the agents saved it to platform storage (``<storage>/train/<task>/<index>/``).

Listing and reading go through :mod:`capstan_agentkit.safefs` (``list_tree`` / ``open_file``): regular files and
directories only, never a link (whatever user code left there), ``..`` and absolute paths refused.
Paths are ``output/<relative path>`` or ``model/<relative path>``. This is the interface the model
registry uses to publish a task's ``/opt/ml/model``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from capstan_agentkit.safefs import list_tree, open_file
from capstan_core.errors import InvalidArgument, NotFound

from .agent.storage import DIRS, OutputStore


@dataclass(frozen=True)
class OutputFile:
    index: int
    path: str  # output/... or model/...
    kind: str  # file | dir
    size: int
    mtime_ms: int


class Outputs:
    def __init__(self, storage_root: Path) -> None:
        self.store = OutputStore(storage_root)

    def _indexes(self, task: dict[str, Any], index: int) -> list[int]:
        count = int(task["instance_count"])
        if index < 0:
            return list(range(count))
        if index >= count:
            raise InvalidArgument(f"instance must be 0..{count - 1}", field="instance")
        return [index]

    def list(self, task: dict[str, Any], index: int = -1) -> list[OutputFile]:
        """Every file and directory the task's instances left (all of them, or instance ``index``)."""
        out: list[OutputFile] = []
        for i in self._indexes(task, index):
            base = self.store.instance_dir(task["id"], i)
            for sub in DIRS:
                for e in list_tree(base / sub):
                    out.append(OutputFile(i, f"{sub}/{e.path}", e.kind, e.size, e.mtime_ns // 1_000_000))
        return out

    def open(self, task: dict[str, Any], index: int, path: str) -> BinaryIO:
        """One regular file of instance ``index``'s outputs, opened for reading."""
        (i,) = self._indexes(task, max(index, 0))
        sub, _, rest = path.partition("/")
        if sub not in DIRS or not rest:
            raise InvalidArgument(f"path must be output/<file> or model/<file>, not {path!r}", field="path")
        try:
            return open_file(self.store.instance_dir(task["id"], i) / sub, rest)
        except PermissionError as e:
            raise InvalidArgument(f"{path} is not a regular file of the task's outputs", field="path") from e
        except (FileNotFoundError, NotADirectoryError) as e:
            raise NotFound(f"instance {i} of training task {task['id']} has no output file {path}") from e
