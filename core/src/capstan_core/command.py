"""The one way a service executes a command: load -> decide -> append -> answer.

``decide`` is pure (state in, events out); ``fold`` rebuilds state from events.
On a concurrency conflict the command is re-run on fresh state, so two agents
reporting at once both land.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from .errors import Conflict
from .events import Event
from .eventstore import AppendResult, EventStore

S = TypeVar("S")


@dataclass(frozen=True)
class Outcome(Generic[S]):
    state: S
    new_events: tuple[Event, ...]
    result: AppendResult | None

    @property
    def seq(self) -> int:
        return self.result.seq if self.result else 0


async def execute(
    store: EventStore,
    subject: str,
    fold: Callable[[Sequence[Event]], S],
    decide: Callable[[S], Sequence[Event]],
    *,
    msg_id: str | None = None,
    retries: int = 8,
) -> Outcome[S]:
    for attempt in range(retries):
        recorded, last = await store.load(subject)
        history = [r.event for r in recorded]
        state = fold(history)
        new = list(decide(state))
        if not new:
            return Outcome(state, (), None)
        try:
            result = await store.append(subject, new, expected_seq=last, msg_id=msg_id)
        except Conflict:
            if attempt == retries - 1:
                raise
            continue
        if result.duplicate:
            recorded, _ = await store.load(subject)
            return Outcome(fold([r.event for r in recorded]), (), result)
        return Outcome(fold(history + new), tuple(new), result)
    raise Conflict(f"{subject}: too many concurrent changes; retry")
