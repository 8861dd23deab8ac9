"""Trainer application layer: training-task commands, queries, and the reconcile step."""

from __future__ import annotations

import asyncio
import functools
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from capstan_core.clock import Clock, SystemClock
from capstan_core.command import execute
from capstan_core.contracts.common import ResourceSpec
from capstan_core.contracts.scheduling import HOST_NETWORK, SANDBOX_RULE, allows_host_network
from capstan_core.contracts.task_status import FINISHED, LEAVING
from capstan_core.contracts.training import AGGREGATE, StorageRow
from capstan_core.errors import (
    Conflict,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from capstan_core.identity import Caller, current_caller
from capstan_core.ids import new_id, stable_id
from capstan_core.loops import LoopGuard, Step
from capstan_core.paging import keyset_bounds, keyset_token
from capstan_core.service import ServiceContext
from capstan_core.streams import event_subject

from .domain.form import split_location
from .domain.price import Price, PriceTable, price_per_hour
from .domain.task import (
    SubmitTrainingTask,
    decide_delete,
    decide_end,
    decide_preempting,
    decide_report,
    decide_restart_lost,
    decide_stop,
    decide_submit,
    decide_update_tags,
    fold,
)
from .groups import GroupCheck
from .images import DEFAULT_IMAGE, Image, ImageStore, builtin_images
from .outputs import Outputs
from .storage_backends import StorageConfig
from .tables import training_instances, training_tasks
from .task_events import TaskEvent, describe
from .tensorboards import TensorBoards

MAX_BATCH = 1000  # tasks in one batch submission (the gateway's body limit comes first for large ones)
MAX_READ_MANY = 1000  # task ids in one GetTrainingTasks


class TrainerApp:
    def __init__(self, ctx: ServiceContext, clock: Clock | None = None) -> None:
        self.ctx = ctx
        self.clock = clock or SystemClock()
        # one guard per control loop: a task whose command fails is set aside, the loop goes on
        self._ending = LoopGuard("trainer.end_unscheduled", ctx.counters)
        self._evicting = LoopGuard("trainer.evictions", ctx.counters)
        self._restarting = LoopGuard("trainer.restart_lost", ctx.counters)
        self.groups = GroupCheck(ctx)
        self.outputs = Outputs(self.storage_root)
        self.tensorboards = TensorBoards(self.storage_root, ctx.settings.data_dir / "logs")
        self._prices: tuple[tuple[Path, tuple[int, int, int] | None], PriceTable] | None = None

    def steps(self) -> list[Step]:
        """The trainer's control loops, each a named step of its reconcile loop."""
        return [(self._ending.name, self.reconcile), (self._evicting.name, self.start_evictions),
                (self._restarting.name, self.restart_lost)]

    def _subject(self, task_id: str) -> str:
        return event_subject(AGGREGATE, task_id)

    async def _check_resource_group(self, rg_id: str, network: str = "isolated") -> None:
        """Refuse a task for a group that does not exist, before anything is appended (``groups.py``)."""
        # A user submits only to its tenant's groups and those shared with it (#8).
        policy = await self.groups.policy(rg_id, fresh=network == "host", tenant=current_caller().tenant)
        if network == "host" and not allows_host_network(policy):
            raise PermissionDenied(
                f"resource group {rg_id} does not allow the host's network: its operator may turn it on with the "
                f'policy {{"{SANDBOX_RULE}": {{"{HOST_NETWORK}": 1}}}}', field="network",
            )

    # -- commands --------------------------------------------------------------------
    @property
    def storage_root(self) -> Path:
        """The platform storage the agents save outputs to (the same default as theirs)."""
        s = self.ctx.settings
        return s.storage_dir if s.storage_dir is not None else s.data_dir / "storage"

    def storage_config(self) -> StorageConfig:
        s = self.ctx.settings
        return StorageConfig.load(s.storage_config or s.data_dir / "storage.json", self.storage_root)

    def price_table(self) -> PriceTable:
        """The operator's price table, read again only when its file changes (every task view shows a price)."""
        s = self.ctx.settings
        path = s.price_table or s.data_dir / "prices.json"
        try:
            st = path.stat()
            stamp: tuple[int, int, int] | None = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        cached = self._prices
        if cached is not None and cached[0] == (path, stamp):
            return cached[1]
        table = PriceTable.load(path)
        self._prices = ((path, stamp), table)
        return table

    def estimate(self, resources: ResourceSpec, instance_count: int) -> Price:
        return price_per_hour(self.price_table(), resources, instance_count)

    def images(self) -> list[Image]:
        return [*builtin_images(), *ImageStore(self.storage_root).list()]

    def _check_storage(self, cmd: SubmitTrainingTask) -> None:
        """Every image, store, volume and credential the form names exists on this install (before appending)."""
        if cmd.image and not cmd.image.startswith("sha256:") and cmd.image != DEFAULT_IMAGE:
            raise InvalidArgument(f"there is no built-in image {cmd.image!r} (built-in: {DEFAULT_IMAGE})", field="image")
        if cmd.image.startswith("sha256:") and not ImageStore(self.storage_root).exists(cmd.image):
            raise InvalidArgument(f"image {cmd.image} has not been imported on this install (capstan image import)",
                                  field="image")
        stores = [split_location(x, "code")[0] for x in (cmd.code, cmd.output) if x]
        stores += [split_location(r.source, "storage")[0] for r in cmd.storage if r.kind == "object"]
        volumes = [split_location(r.source, "storage")[0] for r in cmd.storage if r.kind == "fs"]
        creds = [r.credential for r in cmd.storage if r.kind == "git" and r.credential]
        if (missing := self.storage_config().check_names(stores=stores, volumes=volumes, credentials=creds)):
            raise InvalidArgument(missing, field="storage")

    # -- commands --------------------------------------------------------------------
    @staticmethod
    def _with_id(cmd: SubmitTrainingTask, idempotency_key: str) -> SubmitTrainingTask:
        """The submission with its id (derived from the creator and the idempotency key, when there is
        one) and its defaults filled in; whatever ``cmd.task_id`` said is ignored."""
        task_id = stable_id("train", cmd.creator, idempotency_key) if idempotency_key else new_id("train")
        return replace(cmd, task_id=task_id, instance_count=cmd.instance_count or 1,
                       stop_grace_seconds=cmd.stop_grace_seconds or 30, network=cmd.network or "isolated")

    async def submit(self, cmd: SubmitTrainingTask, *, idempotency_key: str) -> dict[str, Any]:
        """Submit one task; answers it as the read model holds it."""
        cmd = self._with_id(cmd, idempotency_key)
        now = self.clock.now_ms()
        decide_submit(fold([]), cmd, now)  # validate the input before asking the scheduler
        self._check_storage(cmd)
        await self._check_resource_group(cmd.resource_group_id, cmd.network)
        await self.ctx.await_projection(await self._append_submission(cmd, now))
        return await asyncio.to_thread(self.get, cmd.task_id)

    async def _append_submission(self, cmd: SubmitTrainingTask, now: int) -> int:
        """Append a validated submission; the stream sequence that holds it. A new task's subject is empty,
        so the common case appends at once (expected sequence 0) without loading anything; a retry (same
        idempotency key) is answered by the msg-id, and anything else goes through ``execute`` (load,
        decide: the same settings append nothing, others are refused)."""
        subject, msg_id = self._subject(cmd.task_id), f"submit:{cmd.task_id}"
        try:
            return (await self.ctx.store.append(subject, decide_submit(fold([]), cmd, now), expected_seq=0,
                                                msg_id=msg_id)).seq
        except Conflict:
            outcome = await execute(self.ctx.store, subject, fold, lambda t: decide_submit(t, cmd, now), msg_id=msg_id)
            return outcome.seq or (await self.ctx.store.load(subject))[1]

    async def submit_many(self, requests: list[SubmitTrainingTask], *, batch_key: str) -> list[dict[str, Any]]:
        """Submit many tasks (a sweep): every one is checked before any is appended (a refusal names the
        item: ``items[3].name``), then they are appended side by side and answered in order. With
        ``batch_key``, item i's idempotency key is ``<batch_key>:<i>``: a retried batch creates nothing more,
        and one cut short (the event log went away) is completed by its retry."""
        if not requests:
            raise InvalidArgument("items must hold at least one task", field="items")
        if len(requests) > MAX_BATCH:
            raise InvalidArgument(f"items may hold at most {MAX_BATCH} tasks; send several batches", field="items")
        now = self.clock.now_ms()
        cmds = []
        for i, request in enumerate(requests):
            key = f"{batch_key}:{i}" if batch_key else ""
            try:
                cmd = self._with_id(request, key)
                decide_submit(fold([]), cmd, now)
                self._check_storage(cmd)
            except DomainError as e:
                where = f"items[{i}].{e.field}" if e.field else f"items[{i}]"
                raise type(e)(f"{where}: {e.message}") from e  # the field in the message: it crosses gRPC
            cmds.append(cmd)
        for rg, network in sorted({(c.resource_group_id, c.network) for c in cmds}):
            await self._check_resource_group(rg, network)
        inflight = asyncio.Semaphore(64)

        async def append(cmd: SubmitTrainingTask) -> int:
            async with inflight:
                return await self._append_submission(cmd, now)

        seqs = await asyncio.gather(*(append(c) for c in cmds))
        await self.ctx.await_projection(max(seqs))
        found = await asyncio.to_thread(self.get_many, [c.task_id for c in cmds])
        return [found[c.task_id] for c in cmds]

    async def start_again(self, task_id: str, caller: Caller, idempotency_key: str) -> dict[str, Any]:
        """SPEC §3.3 "start a stopped one again": a new task with the same settings whose instances
        start from the outputs the old one left (its checkpoints)."""
        old = await asyncio.to_thread(self.get, task_id)
        if old["status"] not in FINISHED:
            raise FailedPrecondition(f"training task {task_id} is {old['status']}; only a finished task starts again")
        cmd = submit_command_of(old, creator=caller.acting, tenant=caller.owner_tenant)
        return await self.submit(replace(cmd, source_task_id=task_id), idempotency_key=idempotency_key or "")

    async def update_tags(self, task_id: str, tags: dict[str, str]) -> dict[str, Any]:
        now = self.clock.now_ms()
        outcome = await execute(self.ctx.store, self._subject(task_id), fold,
                                lambda t: decide_update_tags(t, task_id, tags, now))
        await self.ctx.await_projection(outcome.seq)
        return self.get(task_id)

    async def delete(self, task_id: str, by: str) -> None:
        now = self.clock.now_ms()
        outcome = await execute(self.ctx.store, self._subject(task_id), fold,
                                lambda t: decide_delete(t, task_id, by, now))
        await self.ctx.await_projection(outcome.seq)

    async def stop(self, task_id: str, by: str) -> dict[str, Any]:
        now = self.clock.now_ms()
        outcome = await execute(self.ctx.store, self._subject(task_id), fold, lambda t: decide_stop(t, task_id, by, now))
        await self.ctx.await_projection(outcome.seq)
        return await asyncio.to_thread(self.get, task_id)

    async def report(
        self, *, task_id: str, index: int, node_id: str, state: str, exit_code: int, message: str, at_ms: int,
        attempt: int = 0,
    ) -> str:
        now = at_ms or self.clock.now_ms()
        outcome = await execute(
            self.ctx.store,
            self._subject(task_id),
            fold,
            lambda t: decide_report(
                t, task_id=task_id, index=index, node_id=node_id, state=state, exit_code=exit_code, message=message,
                now_ms=now, attempt=attempt,
            ),
        )
        await self.ctx.await_projection(outcome.seq)
        return (await asyncio.to_thread(self.get, task_id))["status"]

    async def report_from(
        self, caller: Caller, *, task_id: str, index: int, node_id: str, state: str, exit_code: int, message: str,
        at_ms: int, attempt: int = 0,
    ) -> str:
        """A report from a node agent: the node is the caller's certificate, and it must be where the
        instance is placed. A report about an earlier attempt changes nothing (the domain ignores it)."""
        if caller.kind == "node":
            if node_id and node_id != caller.node_id:
                raise PermissionDenied(f"{caller.name} may report only for itself, not for node {node_id}")
            node_id = caller.node_id
            task = await asyncio.to_thread(self.get, task_id)
            if attempt == task["attempt"]:
                placed = {i["idx"]: i["node_id"] for i in task["instances"]}
                if placed.get(index) != node_id:
                    raise NotFound(f"instance {index} of training task {task_id} is not placed on {node_id}")
        return await self.report(
            task_id=task_id, index=index, node_id=node_id, state=state, exit_code=exit_code, message=message,
            at_ms=at_ms, attempt=attempt,
        )

    async def reconcile(self) -> None:
        """End tasks that will never run: rejected by the scheduler, or stopped before being placed."""
        rows = await asyncio.to_thread(self._unscheduled_to_end)
        now = self.clock.now_ms()
        for r in rows:
            if r["placement"] == "rejected":
                status, reason = "Failed", f"not scheduled: {r['failure_reason']}"
            elif r["placement"] in ("none", "queued", "requeued"):
                status, reason = "Stopped", "stopped by user before it was scheduled"
            else:
                continue  # placed: the agent stops the instances and reports their exit
            tid = r["id"]
            async with self._ending.aitem(tid):
                await execute(
                    self.ctx.store, self._subject(tid), fold,
                    functools.partial(decide_end, task_id=tid, status=status, reason=reason, now_ms=now),
                )

    def _unscheduled_to_end(self) -> list[Any]:
        with self.ctx.engine.connect() as conn:
            return list(conn.execute(
                select(training_tasks.c.id, training_tasks.c.placement, training_tasks.c.stop_requested,
                       training_tasks.c.failure_reason)
                .where(training_tasks.c.status.not_in(FINISHED))
                .where((training_tasks.c.placement == "rejected") | (training_tasks.c.stop_requested.is_(True)))
                .where(training_tasks.c.placement.not_in(("evicting", "lost")))
                .order_by(training_tasks.c.id)
            ).mappings().all())

    async def restart_lost(self) -> None:
        """Tasks whose node was lost for good start again as a new attempt."""
        ids = await asyncio.to_thread(self._task_ids, training_tasks.c.placement == "lost",
                                      training_tasks.c.status.not_in(FINISHED))
        now = self.clock.now_ms()
        for tid in ids:
            async with self._restarting.aitem(tid):
                await execute(
                    self.ctx.store, self._subject(tid), fold,
                    functools.partial(decide_restart_lost, task_id=tid, reason="its node was lost", now_ms=now),
                )

    async def start_evictions(self) -> None:
        """The scheduler asked for a task's resources: tell its instances to leave (gracefully)."""
        ids = await asyncio.to_thread(
            self._task_ids, training_tasks.c.placement == "evicting",
            # already leaving: Restarting ends in a requeue, which frees the resources too
            training_tasks.c.status.not_in(FINISHED | LEAVING),
        )
        now = self.clock.now_ms()
        for tid in ids:
            async with self._evicting.aitem(tid):
                await execute(
                    self.ctx.store, self._subject(tid), fold,
                    functools.partial(decide_preempting, task_id=tid, preemptor_id="", now_ms=now),
                )

    def _task_ids(self, *conditions: Any) -> list[str]:
        with self.ctx.engine.connect() as conn:
            return list(conn.execute(
                select(training_tasks.c.id).where(*conditions).order_by(training_tasks.c.id)
            ).scalars().all())

    async def events(self, task_id: str) -> list[TaskEvent]:
        """The task's lifecycle events, oldest first, from its event log."""
        await asyncio.to_thread(self.get, task_id)  # NotFound for an unknown (or deleted) task
        recorded, _ = await self.ctx.store.load(self._subject(task_id))
        return [d for r in recorded if (d := describe(r.event, r.time_ms)) is not None]

    # -- queries ---------------------------------------------------------------------
    def get(self, task_id: str) -> dict[str, Any]:
        with self.ctx.engine.connect() as conn:
            row = conn.execute(select(training_tasks).where(training_tasks.c.id == task_id)).mappings().first()
            if row is None:
                raise NotFound(f"training task {task_id} does not exist")
            instances = conn.execute(
                select(training_instances).where(training_instances.c.task_id == task_id).order_by(training_instances.c.idx)
            ).mappings().all()
        return _view(dict(row), [dict(i) for i in instances])

    def get_many(self, task_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Many tasks by id, in two queries (those that exist)."""
        out: dict[str, dict[str, Any]] = {}
        with self.ctx.engine.connect() as conn:
            for i in range(0, len(task_ids), 500):  # bound the statement's parameters
                chunk = task_ids[i:i + 500]
                rows = conn.execute(select(training_tasks).where(training_tasks.c.id.in_(chunk))).mappings().all()
                insts = conn.execute(
                    select(training_instances).where(training_instances.c.task_id.in_(chunk))
                    .order_by(training_instances.c.task_id, training_instances.c.idx)
                ).mappings().all()
                by_task: dict[str, list[dict[str, Any]]] = {}
                for inst in insts:
                    by_task.setdefault(inst["task_id"], []).append(dict(inst))
                out.update((r["id"], _view(dict(r), by_task.get(r["id"], []))) for r in rows)
        return out

    def get_for_caller(self, task_id: str, caller: Caller) -> dict[str, Any]:
        """A node sees only the tasks with an instance placed on it, a user only its tenant's (others do
        not exist for them)."""
        self._subject(task_id)  # an id that names nothing is refused as such (400), before the read
        task = self.get(task_id)
        if caller.kind == "node" and not any(i["node_id"] == caller.node_id for i in task["instances"]):
            raise NotFound(f"training task {task_id} does not exist")
        if caller.tenant and task.get("tenant", "") != caller.tenant:
            raise NotFound(f"training task {task_id} does not exist")
        return task

    def get_many_for_caller(self, task_ids: list[str], caller: Caller) -> list[dict[str, Any]]:
        """The tasks of ``task_ids`` the caller may see, in the order asked (an unknown id, or one it may not
        see, is left out: what ``get_for_caller`` answers NotFound for)."""
        if len(task_ids) > MAX_READ_MANY:
            raise InvalidArgument(f"at most {MAX_READ_MANY} ids at once, not {len(task_ids)}", field="ids")
        for tid in task_ids:
            self._subject(tid)  # an id that names nothing is refused as such (400)
        found = self.get_many(list(dict.fromkeys(task_ids)))
        out = []
        for tid in dict.fromkeys(task_ids):
            task = found.get(tid)
            if task is None:
                continue
            if caller.kind == "node" and not any(i["node_id"] == caller.node_id for i in task["instances"]):
                continue
            if caller.tenant and task.get("tenant", "") != caller.tenant:
                continue
            out.append(task)
        return out

    def list(
        self, *, page_size: int, page_token: str, creator: str, resource_group_id: str, status: str, tenant: str = ""
    ) -> tuple[list[dict[str, Any]], str, int]:
        """Newest first, in keyset pages (the token holds the last task's submit sequence), so a deep page
        costs what the first does; every filter and pair of filters has an index in that order (migrations 0007, 0010)."""
        size, after, offset = keyset_bounds(page_size, page_token)
        conds = []
        if tenant:  # a user sees its tenant's tasks only
            conds.append(training_tasks.c.tenant == tenant)
        if creator:
            conds.append(training_tasks.c.creator == creator)
        if resource_group_id:
            conds.append(training_tasks.c.resource_group_id == resource_group_id)
        if status:
            conds.append(training_tasks.c.status == status)
        page = [*conds, training_tasks.c.submitted_seq < after] if after is not None else conds
        with self.ctx.engine.connect() as conn:
            total = int(conn.execute(select(func.count()).select_from(training_tasks).where(*conds)).scalar() or 0)
            rows = conn.execute(
                select(training_tasks).where(*page).order_by(training_tasks.c.submitted_seq.desc())
                .limit(size + 1).offset(offset)
            ).mappings().all()
            more, rows = len(rows) > size, rows[:size]
            ids = [r["id"] for r in rows]
            inst_rows = conn.execute(
                select(training_instances).where(training_instances.c.task_id.in_(ids)).order_by(training_instances.c.idx)
            ).mappings().all() if ids else []
        by_task: dict[str, list[dict[str, Any]]] = {}
        for i in inst_rows:
            by_task.setdefault(i["task_id"], []).append(dict(i))
        items = [_view(dict(r), by_task.get(r["id"], [])) for r in rows]
        return items, keyset_token(rows[-1]["submitted_seq"]) if more else "", total


def _view(row: dict[str, Any], instances: list[dict[str, Any]]) -> dict[str, Any]:
    row["hyperparameters"] = json.loads(row["hyperparameters"])
    row["tags"] = json.loads(row["tags"])
    row.update(json.loads(row.pop("form", None) or "{}"))
    row["instances"] = instances
    return row


def submit_command_of(task: dict[str, Any], *, creator: str, tenant: str = "") -> SubmitTrainingTask:
    """The submit command that makes a task like ``task`` (start again, copy)."""
    return SubmitTrainingTask(
        task_id="", name=task["name"], resource_group_id=task["resource_group_id"], command=task["command"],
        hyperparameters_json=json.dumps(task["hyperparameters"]),
        resources=ResourceSpec(cpu=task["cpu"], memory_gib=task["memory_gib"], gpu_type=task["gpu_type"],
                               gpu=task["gpu"]),
        instance_count=task["instance_count"], tags=task["tags"], creator=creator,
        stop_grace_seconds=task["stop_grace_seconds"], max_restarts=task["max_restarts"], network=task["network"],
        description=task.get("description", ""), image=task.get("image", ""), mode=task.get("mode", ""),
        roles=dict(task.get("roles") or {}), storage=tuple(StorageRow(**r) for r in task.get("storage") or ()),
        code=task.get("code", ""), output=task.get("output", ""), tenant=tenant,
    )
