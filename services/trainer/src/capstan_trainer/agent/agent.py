"""The trainer agent: joins a resource group as a node, heartbeats, and runs what the scheduler
assigns to it, level-triggered (each step compares what should run with what runs)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import grpc

from capstan_agentkit.agent import NodeAgent
from capstan_agentkit.gpus import gpu_env
from capstan_agentkit.safefs import mirror
from capstan_agentkit.sandbox import EXIT_STOPPED_BEFORE_START, Executor, InstanceSpec
from capstan_agentkit.sandbox.spec import Mount
from capstan_agentkit.shipper import ship
from capstan_core.contracts.scheduling import CAPABILITY_TRAINING
from capstan_core.contracts.task_status import FINISHED, LEAVING, TaskStatus
from capstan_core.contracts.training import PLATFORM_STOP_FILE
from capstan_proto import scheduler_pb2, trainer_pb2, trainer_pb2_grpc

from ..images import ImageStore
from .distributed import distributed
from .inputs import InputError, prepare, upload
from .settings import AgentSettings
from .storage import OutputStore

log = logging.getLogger(__name__)
DONE_MARK = ".agent-done"
RECONCILE = "trainer-agent.reconcile"
SAVED_MARK = ".output-saved"  # the exited instance's output and model are in storage
EXIT_INPUTS_FAILED = 126  # its storage rows could not be made ready; it never started
READ_MANY = 500  # task ids per GetTrainingTasks (the trainer takes up to 1,000)


class TrainerAgent(NodeAgent):
    agent_kind = "trainer"
    capabilities = (CAPABILITY_TRAINING,)
    loop_name = RECONCILE

    def __init__(self, settings: AgentSettings, executor: Executor | None = None) -> None:
        super().__init__(settings, executor)
        self.settings: AgentSettings = settings
        self._cards: dict[tuple[str, int], list[tuple[int, int]]] = {}
        self.storage = OutputStore(settings.storage_root)
        self._synced_at: dict[tuple[str, int], float] = {}  # (instance key, index) -> monotonic time

    def connect(self) -> None:
        self.trainer = trainer_pb2_grpc.TrainerStub(self.channel(self.settings.trainer_addr, "trainer"))

    # -- one reconcile step -----------------------------------------------------------
    async def step(self) -> None:
        js = self.js
        resp = await self.scheduler.ListNodeAssignments(
            scheduler_pb2.ListNodeAssignmentsRequest(node_id=self.node_id), timeout=10
        )
        assigned = {(a.workload_id, a.instance_index) for a in resp.items if a.workload_kind == "training"}
        self._cards = {
            (a.workload_id, a.instance_index): [(c.index, c.tenths) for c in a.cards] for a in resp.items
        }
        tasks: dict[str, trainer_pb2.TrainingTask | None] = {}
        ids = sorted({task_id for task_id, _ in assigned})
        tasks.update(dict.fromkeys(ids))
        # Assigned tasks whose state could not be read: their instances are left alone this step.
        unread: set[str] = set(ids)
        refused: list[str] = []  # in a chunk the trainer refused whole: read one by one, so one bad id stops no other
        for i in range(0, len(ids), READ_MANY):  # one call for every task of the step, not one each
            chunk = ids[i:i + READ_MANY]
            async with self._guard.aitem(f"tasks {chunk[0]}..{chunk[-1]}"):
                try:
                    got = await self.trainer.GetTrainingTasks(trainer_pb2.GetTrainingTasksRequest(ids=chunk), timeout=10)
                except grpc.aio.AioRpcError as e:
                    if e.code() != grpc.StatusCode.INVALID_ARGUMENT:
                        raise
                    refused += chunk
                    continue
                tasks.update((t.id, t) for t in got.items if t.id in tasks)  # the rest: gone (None)
                unread.difference_update(chunk)

        async def read(task_id: str) -> None:
            async with self._guard.aitem(f"task {task_id}"):
                tasks[task_id] = await self._get_task(task_id)
                unread.discard(task_id)

        await asyncio.gather(*(read(task_id) for task_id in refused))

        # One instance that cannot be converged is set aside (counted, logged, retried next step);
        # the others are converged as usual, side by side (each has its own directory and runner).
        async def converge(task: trainer_pb2.TrainingTask, index: int) -> None:
            async with self._guard.aitem(f"instance {task.id}/{index}"):
                await self._converge(js, task, index)

        await asyncio.gather(*(converge(task, index) for task_id, index in sorted(assigned)
                               if (task := tasks[task_id]) is not None))

        current = {(instance_key(t.id, t.attempt), i) for (tid, i) in assigned if (t := tasks.get(tid)) is not None}
        for key, index in self.executor.list_instances():
            if (key, index) in current or parse_key(key)[0] in unread:
                continue
            idir = self.executor.log_path(key, index).parent
            if (idir / DONE_MARK).exists():
                continue
            async with self._guard.aitem(f"instance {key}/{index}"):
                await self._finish_unassigned(js, key, index, idir)

    async def _finish_unassigned(self, js: Any, key: str, index: int, idir: Path) -> None:
        """An instance this node no longer runs: stop it, ship its last lines, report its exit once."""
        task_id, attempt = parse_key(key)
        st = self.executor.status(key, index)
        if st.state == "running":
            self.executor.stop(key, index)  # released, or an earlier attempt: it must not run on
        await ship(js, task_id, index, self.executor.log_path(key, index), key)
        if st.state == "exited":
            await self._save_final(key, index)
            task = await self._get_task(task_id)
            if (
                task is not None and task.attempt == attempt and task.status not in FINISHED
                and task.instances[index].status != "Exited"
            ):
                await self._report_exit(task, index, st.exit_code or 0, st.reason or "")
            (idir / DONE_MARK).write_text("")
            self._synced_at.pop((key, index), None)

    async def _get_task(self, task_id: str) -> trainer_pb2.TrainingTask | None:
        try:
            return await self.trainer.GetTrainingTask(trainer_pb2.GetTrainingTaskRequest(id=task_id), timeout=10)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise

    async def _converge(self, js: Any, task: trainer_pb2.TrainingTask, index: int) -> None:
        inst = task.instances[index]
        key = instance_key(task.id, task.attempt)
        log_path = self.executor.log_path(key, index)
        st = self.executor.status(key, index)
        if task.status in FINISHED or task.status in LEAVING:
            if st.state == "running":
                self.executor.stop(key, index)
                await ship(js, task.id, index, log_path, key)
            elif task.status not in FINISHED and inst.status != "Exited":
                if st.state == "exited":
                    await ship(js, task.id, index, log_path, key)
                    await self._save_final(key, index)
                    await self._report_exit(task, index, st.exit_code or 0, st.reason or "")
                else:
                    await self._report(task, index, "Exited", EXIT_STOPPED_BEFORE_START, "stopped before start")
            return
        if task.status == TaskStatus.QUEUED:
            return  # requeued after an eviction, not placed again yet: the assignment is stale
        if st.state == "absent":
            await self._carry_over(task, index)
            try:
                mounts = await asyncio.to_thread(self._prepare_inputs, task, index)
                rootfs = ImageStore(self.settings.storage_root).rootfs(task.image)
            except (InputError, ValueError, FileNotFoundError) as e:
                await self._fail_before_start(js, task, index, str(e))
                return
            await asyncio.to_thread(self.executor.start, self._spec(task, index, mounts, str(rootfs or "")))
            self._synced_at[(key, index)] = time.monotonic()
            st = self.executor.status(key, index)
        if st.state == "running":
            self.watch((key, index), st.pid)
        await ship(js, task.id, index, log_path, key)
        if st.state == "running":
            await self._save_periodically(key, index)
        if st.state == "running" and inst.status == "Pending":
            await self._report(task, index, "Running", 0)
        elif st.state == "exited" and inst.status != "Exited":
            await self._save_final(key, index)
            await self._report_exit(task, index, st.exit_code if st.exit_code is not None else 0, st.reason or "")

    # -- durable output ------------------------------------------------------------------
    def _instance_dir(self, key: str, index: int) -> Path:
        return self.executor.log_path(key, index).parent

    async def _carry_over(self, task: trainer_pb2.TrainingTask, index: int) -> None:
        """A requeued attempt resumes from what the previous one left in /opt/ml/output and /opt/ml/model:
        from storage, wherever it ran; else (nothing in storage) from the previous attempt on this node."""
        new = self._instance_dir(instance_key(task.id, task.attempt), index)
        if task.attempt == 0:
            if task.source_task_id:  # started again: from where the stopped task left off
                await asyncio.to_thread(self.storage.seed, task.source_task_id, index, new)
            return
        if await asyncio.to_thread(self.storage.restore, task.id, index, task.attempt, new):
            return
        for previous in range(task.attempt - 1, -1, -1):
            old = self._instance_dir(instance_key(task.id, previous), index)
            if old.exists():
                for sub in ("output", "model"):
                    # The same copy as storage's: links and special files the old attempt left are not
                    # carried over (never followed), and every step is a no-follow directory descriptor.
                    if not (new / sub).exists():
                        await asyncio.to_thread(mirror, old / sub, new / sub)
                return

    async def _save(self, key: str, index: int, final: bool = False) -> None:
        task_id, attempt = parse_key(key)
        idir = self._instance_dir(key, index)
        try:
            await asyncio.to_thread(self.storage.save, task_id, index, attempt, idir)
            await asyncio.to_thread(upload, idir, self.settings.storage_backends(), final=final)
        except Exception:  # a full or unreachable storage must not stop the node: the next save retries
            log.exception("saving the output of %s/%d to storage failed", key, index)
            raise

    async def _save_periodically(self, key: str, index: int) -> None:
        now = time.monotonic()
        last = self._synced_at.setdefault((key, index), now)
        if now - last < self.settings.output_sync_s:
            return
        self._synced_at[(key, index)] = now
        with contextlib.suppress(Exception):
            await self._save(key, index)

    async def _save_final(self, key: str, index: int) -> None:
        """The instance has exited: its last output goes to storage before its exit is reported, so an
        attempt that follows anywhere resumes from it."""
        mark = self._instance_dir(key, index) / SAVED_MARK
        if mark.exists():
            return
        try:
            await self._save(key, index, final=True)
        except Exception:  # logged in _save; the exit is reported all the same
            return
        mark.write_text("")
        self._synced_at.pop((key, index), None)

    def _prepare_inputs(self, task: trainer_pb2.TrainingTask, index: int) -> list[Mount]:
        """Storage rows, code package and upload plan of the instance about to start (in a thread)."""
        idir = self._instance_dir(instance_key(task.id, task.attempt), index)
        idir.mkdir(parents=True, exist_ok=True)
        os.chmod(idir, 0o700)
        for sub in ("code", "output", "model"):
            (idir / sub).mkdir(exist_ok=True)
        lines: list[str] = []
        try:
            return prepare(task, idir, self.settings.storage_backends(), lines.append)
        finally:
            _platform_lines(idir / "log.jsonl", lines)

    async def _fail_before_start(self, js: Any, task: trainer_pb2.TrainingTask, index: int, reason: str) -> None:
        """Its inputs could not be made ready: the instance fails without starting, saying why."""
        key = instance_key(task.id, task.attempt)
        _platform_lines(self.executor.log_path(key, index), [f"inputs could not be prepared: {reason}"])
        await ship(js, task.id, index, self.executor.log_path(key, index), key)
        if task.instances[index].status != "Exited":
            await self._report(task, index, "Exited", EXIT_INPUTS_FAILED, f"inputs could not be prepared: {reason}")

    def _spec(self, task: trainer_pb2.TrainingTask, index: int, mounts: list[Mount] | None = None,
              rootfs: str = "") -> InstanceSpec:
        roles = {k: task.roles[k] for k in task.role_order if k in task.roles} | dict(task.roles)
        env, files, helper_mounts, entrypoint = distributed(
            task.mode, roles, max(1, task.instance_count), index, task.resources.cpu, task.resources.gpu,
            task.resources.memory_gib)
        env |= {
            "CAPSTAN_TASK_ID": task.id,
            "CAPSTAN_INSTANCE_INDEX": str(index),
            **gpu_env(self._cards.get((task.id, index), []), simulated=self.capacity.simulated_gpus),
        }
        env["CAPSTAN_ATTEMPT"] = str(task.attempt)
        return InstanceSpec(
            task_id=instance_key(task.id, task.attempt), instance_index=index, command=task.command,
            hyperparameters=json.loads(task.hyperparameters_json or "{}"), env=env,
            stop_grace_seconds=task.stop_grace_seconds or 30, cpu=task.resources.cpu,
            memory_gib=task.resources.memory_gib, instance_count=max(1, task.instance_count),
            network=task.network or "isolated", mounts=(*helper_mounts, *(mounts or ())), files=files,
            entrypoint=entrypoint, rootfs=rootfs,
        )

    async def _report_exit(self, task: trainer_pb2.TrainingTask, index: int, exit_code: int, reason: str) -> None:
        """An exited instance: an eviction if the platform stopped it (``capstan down`` marks those),
        else its exit code decides (with the sandbox's reason, e.g. out of memory)."""
        idir = self._instance_dir(instance_key(task.id, task.attempt), index)
        if (idir / PLATFORM_STOP_FILE).exists():
            await self._report(task, index, "Evicted", exit_code, "stopped with the platform (capstan down); requeued")
        else:
            await self._report(task, index, "Exited", exit_code, reason)

    async def _report(
        self, task: trainer_pb2.TrainingTask, index: int, state: str, exit_code: int, message: str = ""
    ) -> None:
        await self.trainer.ReportInstance(
            trainer_pb2.ReportInstanceRequest(
                task_id=task.id, instance_index=index, node_id=self.node_id, state=state, exit_code=exit_code,
                message=message, attempt=task.attempt,
            ),
            timeout=15,
        )



def _platform_lines(log_path: Path, lines: list[str]) -> None:
    """Platform lines in an instance's log (what the agent did for it before its runner started)."""
    if not lines:
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as f:
        for line in lines:
            f.write(json.dumps({"ts_ms": int(time.time() * 1000), "stream": "platform", "line": line}) + "\n")


def instance_key(task_id: str, attempt: int) -> str:
    """Each attempt of a task runs in its own instance directory: ``train-x`` then ``train-x.1``, ..."""
    return task_id if attempt == 0 else f"{task_id}.{attempt}"


def parse_key(key: str) -> tuple[str, int]:
    task_id, _, attempt = key.partition(".")
    return task_id, int(attempt) if attempt.isdigit() else 0
