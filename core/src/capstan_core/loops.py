"""Failure isolation for control loops: one bad item never stops the loop for the others (issue #7).

A control loop runs named *steps*; a step walks *items* (workloads, tasks, nodes, instances).

- An item that raises is set aside for this step: counted (``loop_item_failures{loop}``) and logged, and
  the step goes on with the next item. Level-triggered loops retry it at their next step.
- Infrastructure errors (the event log or the database is unreachable, another service is down) are not
  the item's fault and would fail every item alike: they end the step instead (``loop_step_failures``),
  and the next step retries.
- A step that fails never keeps the loop's other steps from running.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager

import grpc
from nats.errors import Error as NatsError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from .errors import Unavailable
from .metrics import LOOP_ITEM_FAILURES, LOOP_STEP_FAILURES, LOOP_STEPS, Counters

log = logging.getLogger(__name__)

_UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
_REMEMBERED = 1000  # items whose last error is remembered, so a failing item is logged once per error


def is_infrastructure(e: BaseException) -> bool:
    """Errors of the platform's plumbing rather than of one item."""
    if isinstance(e, (Unavailable, NatsError, OperationalError, InterfaceError, ConnectionError, TimeoutError)):
        return True
    if isinstance(e, DBAPIError) and e.connection_invalidated:
        return True
    return isinstance(e, grpc.aio.AioRpcError) and e.code() in _UNREACHABLE


class LoopGuard:
    """The failures of one loop (``name``, e.g. ``scheduler.cycle``), counted in ``counters``. Safe to use
    from a worker thread (counters and logging are)."""

    def __init__(self, name: str, counters: Counters) -> None:
        self.name = name
        self.counters = counters
        self._lock = threading.Lock()
        self._logged: OrderedDict[str, str] = OrderedDict()

    def item_failed(self, item: str, error: BaseException | str) -> None:
        """Count and log an item set aside (logged again only when its error changes)."""
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        self.counters.inc(LOOP_ITEM_FAILURES, loop=self.name)
        with self._lock:
            new = self._logged.get(item) != text
            self._logged[item] = text
            self._logged.move_to_end(item)
            while len(self._logged) > _REMEMBERED:
                self._logged.popitem(last=False)
        if new:
            log.error("%s: %s set aside: %s", self.name, item, text, exc_info=None if isinstance(error, str) else error)

    @contextmanager
    def item(self, item: str) -> Iterator[None]:
        """``with guard.item(id): ...`` -- an error of this item is set aside; infrastructure errors pass."""
        try:
            yield
        except Exception as e:
            if is_infrastructure(e):
                raise
            self.item_failed(item, e)

    @asynccontextmanager
    async def aitem(self, item: str) -> AsyncIterator[None]:
        """``async with guard.aitem(id): ...`` -- the same, around awaits."""
        try:
            yield
        except Exception as e:
            if is_infrastructure(e):
                raise
            self.item_failed(item, e)


Step = tuple[str, Callable[[], Awaitable[None]]]


async def run_steps(steps: Sequence[Step], counters: Counters) -> None:
    """Run each named step; one that fails is counted and logged, and the next one runs all the same."""
    for name, step in steps:
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception:
            counters.inc(LOOP_STEP_FAILURES, loop=name)
            log.exception("%s: the step failed; it runs again at the next round", name)
        else:
            counters.inc(LOOP_STEPS, loop=name)
