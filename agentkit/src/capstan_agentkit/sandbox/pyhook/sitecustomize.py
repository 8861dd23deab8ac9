"""Capstan's Python start-up hook for training instances that hold a fraction of a GPU.

The trainer agent puts this directory first on ``PYTHONPATH`` inside the sandbox when it gives an
instance ``CAPSTAN_GPU_MEMORY_FRACTION`` (e.g. ``0.5`` of a shared card). Python imports
``sitecustomize`` at start-up, so every Python process of the instance runs this module:

* without ``CAPSTAN_GPU_MEMORY_FRACTION`` (or with a value outside (0, 1]) it does nothing;
* otherwise it waits for the user's code to import ``torch`` (it never imports torch itself), and
  then queues, with ``torch.cuda._lazy_call``, a call that runs when CUDA initialises (at once if it
  already has) and caps PyTorch's caching allocator on every visible device with
  ``torch.cuda.set_per_process_memory_fraction(fraction, device=i)``: an allocation beyond the
  fraction raises ``torch.OutOfMemoryError`` instead of taking memory another tenant holds.

Whatever ``sitecustomize`` this one shadows (the next one on ``sys.path``) still runs afterwards.
A failure here is printed to stderr and never stops the user's program.

The module exposes ``ACTIVE`` (the hook is installed), ``FRACTION`` and ``APPLIED`` (the devices the
fraction was set on, filled when CUDA initialises) for whoever wants to check.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from types import ModuleType
from typing import Any

ENV = "CAPSTAN_GPU_MEMORY_FRACTION"
ACTIVE = False
FRACTION: float | None = None
APPLIED: list[int] = []
chained: ModuleType | None = None  # the sitecustomize this one shadows, if any
_HERE = os.path.dirname(os.path.abspath(__file__))


def _warn(what: str, exc: BaseException) -> None:
    print(f"capstan: {what}: {exc!r}", file=sys.stderr)


def _fraction() -> float | None:
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.0 < value <= 1.0:
        print(f"capstan: ignoring {ENV}={raw!r}: not a fraction in (0, 1]", file=sys.stderr)
        return None
    return value


def apply_fraction() -> None:
    """Cap every visible device at FRACTION (queued with ``torch.cuda._lazy_call``: runs at CUDA init).
    Looks the torch functions up when it runs, not when it is queued."""
    torch = sys.modules["torch"]
    assert FRACTION is not None
    for i in range(torch.cuda.device_count()):
        torch.cuda.set_per_process_memory_fraction(FRACTION, device=i)
        APPLIED.append(i)


def _torch_imported(torch: Any) -> None:
    torch.cuda._lazy_call(apply_fraction)


class _TorchWatcher(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when ``torch`` is being imported, it wraps the real loader so that
    ``_torch_imported`` runs right after torch's own module code."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != "torch":
            return None
        spec = None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec  # None: torch is not installed; the import fails as it would without us
        spec.loader = _AfterExec(spec.loader, self)
        return spec


class _AfterExec(importlib.abc.Loader):
    def __init__(self, loader: Any, watcher: _TorchWatcher) -> None:
        self.loader, self.watcher = loader, watcher

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        module: ModuleType | None = self.loader.create_module(spec)
        return module

    def exec_module(self, module: ModuleType) -> None:
        # Hand the real loader back first: code that inspects torch's loader sees the usual one.
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        module.__loader__ = self.loader
        self.loader.exec_module(module)
        if self.watcher in sys.meta_path:
            sys.meta_path.remove(self.watcher)
        try:
            _torch_imported(module)
        except Exception as e:  # noqa: BLE001 - the user's program must run even if this fails
            _warn(f"could not apply {ENV}", e)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


def _install() -> None:
    global ACTIVE, FRACTION
    FRACTION = _fraction()
    if FRACTION is None:
        return
    torch = sys.modules.get("torch")
    if torch is not None:  # imported already (unusual this early): queue the call now
        _torch_imported(torch)
    else:
        sys.meta_path.insert(0, _TorchWatcher())
    ACTIVE = True


def _chain() -> None:
    """Run the sitecustomize that this one shadows, as Python would have without us."""
    global chained
    others = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", others)
    if spec is None or spec.loader is None or spec.origin == __file__:
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    chained = module


try:
    _install()
except Exception as _e:  # noqa: BLE001
    _warn("GPU memory fraction hook not installed", _e)
try:
    _chain()
except Exception as _e:  # noqa: BLE001
    _warn("the next sitecustomize failed", _e)
