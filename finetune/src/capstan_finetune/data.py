"""Training data (SPEC 3.5): ``.jsonl`` files, UTF-8, each at most 200 MB, every file of the data
directory merged, one sample per line::

    {"system": "...", "conversation": [{"prompt": "...", "response": "..."}, ...]}

Everything is validated before training starts, and every problem is reported with its file and line
number (up to ``MAX_REPORTED``), so a user fixes their data in one go instead of one crash at a time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .chat import Conversation, Turn

MAX_FILE_BYTES = 200 * 1024 * 1024
MAX_REPORTED = 20
SUFFIX = ".jsonl"


class DataError(ValueError):
    """The training data cannot be used; ``problems`` are ``<file>:<line>: <what>`` lines."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        more = "" if len(problems) <= MAX_REPORTED else f"\n... and {len(problems) - MAX_REPORTED} more"
        super().__init__("invalid training data:\n" + "\n".join(problems[:MAX_REPORTED]) + more)


def data_files(path: Path) -> list[Path]:
    """The ``.jsonl`` files of a data directory (or the one file named), in name order."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError([f"{path}: no such file or directory"])
    files = sorted(p for p in path.rglob(f"*{SUFFIX}") if p.is_file())
    if not files:
        raise DataError([f"{path}: holds no {SUFFIX} file"])
    return files


def load(path: Path) -> list[Conversation]:
    """Every sample of every file under ``path``; raises ``DataError`` listing every problem."""
    samples: list[Conversation] = []
    problems: list[str] = []
    for f in data_files(path):
        got, bad = _read(f)
        samples += got
        problems += bad
    if problems:
        raise DataError(problems)
    if not samples:
        raise DataError([f"{path}: holds no sample (every line is empty)"])
    return samples


def load_file(f: Path) -> list[Conversation]:
    got, bad = _read(f)
    if bad:
        raise DataError(bad)
    return got


def _read(f: Path) -> tuple[list[Conversation], list[str]]:
    size = f.stat().st_size
    if size > MAX_FILE_BYTES:
        return [], [f"{f}: {size} bytes; each file may hold at most 200 MB (split it into several files)"]
    samples: list[Conversation] = []
    problems: list[str] = []
    with f.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                problems.append(f"{f}:{number}: not UTF-8 (byte {e.start} of the line)")
                continue
            if not line.strip():
                continue
            try:
                samples.append(parse_sample(json.loads(line)))
            except json.JSONDecodeError as e:
                problems.append(f"{f}:{number}: not JSON ({e.msg} at column {e.colno})")
            except ValueError as e:
                problems.append(f"{f}:{number}: {e}")
    return samples, problems


def parse_sample(obj: Any) -> Conversation:
    if not isinstance(obj, dict):
        raise ValueError('a sample must be a JSON object {"system": ..., "conversation": [...]}')
    unknown = sorted(set(obj) - {"system", "conversation"})
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)}; a sample has only system and conversation")
    system = obj.get("system", "")
    if not isinstance(system, str):
        raise ValueError("system must be a string")
    conv = obj.get("conversation")
    if not isinstance(conv, list) or not conv:
        raise ValueError('conversation must be a non-empty list of {"prompt": ..., "response": ...}')
    turns = []
    for i, turn in enumerate(conv):
        if not isinstance(turn, dict):
            raise ValueError(f"conversation[{i}] must be an object with prompt and response")
        extra = sorted(set(turn) - {"prompt", "response"})
        if extra:
            raise ValueError(f"conversation[{i}] has unknown field(s) {', '.join(extra)}")
        for key in ("prompt", "response"):
            if not isinstance(turn.get(key), str):
                raise ValueError(f"conversation[{i}].{key} must be a string")
        if not turn["response"]:
            raise ValueError(f"conversation[{i}].response is empty: there is nothing to learn")
        turns.append(Turn(turn["prompt"], turn["response"]))
    return Conversation(system, tuple(turns))
