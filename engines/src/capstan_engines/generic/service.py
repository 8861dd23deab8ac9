"""The user's model class, found in ``<model dir>/model_service.py`` and run as
``postprocess(predict(preprocess(body)))`` after one ``load()`` (SPEC 6.7).

The class is the module's own class with a ``predict`` method (one such class, or the one named ``Model``
or ``ModelService``). Its constructor may take the model directory; ``load`` may too. ``preprocess`` and
``postprocess`` are optional (identity). Calls are serialised: user code need not be thread-safe.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import sys
import threading
from pathlib import Path
from typing import Any

PREFERRED = ("Model", "ModelService")


class ServiceError(Exception):
    """model_service.py is missing or does not define a usable model class."""


class ModelFailed(Exception):
    """The model's own code raised (or returned something that is not JSON) while serving a request."""


def _takes_argument(fn: Any) -> bool:
    try:
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        return False
    return bool(params)


def find_class(module: Any) -> type:
    own = [obj for obj in vars(module).values()
           if inspect.isclass(obj) and obj.__module__ == module.__name__ and callable(getattr(obj, "predict", None))]
    if len(own) == 1:
        return own[0]
    for name in PREFERRED:
        if any(c.__name__ == name for c in own):
            return next(c for c in own if c.__name__ == name)
    if not own:
        raise ServiceError("model_service.py defines no class with a predict() method")
    names = ", ".join(sorted(c.__name__ for c in own))
    raise ServiceError(f"model_service.py defines several model classes ({names}); name the one to serve "
                       f"{' or '.join(PREFERRED)}")


class ModelService:
    def __init__(self, model_dir: Path) -> None:
        path = model_dir / "model_service.py"
        if not path.is_file():
            raise ServiceError(f"{path} does not exist: the generic runtime serves a model_service.py")
        spec = importlib.util.spec_from_file_location("model_service", path)
        if spec is None or spec.loader is None:
            raise ServiceError(f"{path} cannot be imported")
        module = importlib.util.module_from_spec(spec)
        sys.modules["model_service"] = module
        spec.loader.exec_module(module)  # the user's code: its errors surface as they are
        cls = find_class(module)
        self.name = cls.__name__
        self.instance = cls(str(model_dir)) if _takes_argument(cls) else cls()
        load = getattr(self.instance, "load", None)
        if callable(load):
            load(str(model_dir)) if _takes_argument(load) else load()
        self._lock = threading.Lock()

    def __call__(self, body: Any) -> Any:
        with self._lock:
            try:
                pre = getattr(self.instance, "preprocess", None)
                post = getattr(self.instance, "postprocess", None)
                data = pre(body) if callable(pre) else body
                out = self.instance.predict(data)
                out = post(out) if callable(post) else out
            except Exception as e:
                raise ModelFailed(f"{type(e).__name__}: {e}") from e
        try:
            json.dumps(out)
        except (TypeError, ValueError) as e:
            raise ModelFailed(f"the result is not JSON-serialisable: {e}") from e
        return out
