"""Registry application layer: load -> decide -> append -> answer, and the reads."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from sqlalchemy import func, or_, select

from capstan_agentkit import safefs
from capstan_core import grpcutil
from capstan_core.clock import SystemClock
from capstan_core.command import execute
from capstan_core.contracts.registry import Lineage, ModelFileEntry, ModelMetadata
from capstan_core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from capstan_core.identity import current_caller
from capstan_core.ids import new_id, stable_id
from capstan_core.paging import next_token, page_bounds
from capstan_core.service import ServiceContext
from capstan_core.streams import event_subject
from capstan_proto import trainer_pb2, trainer_pb2_grpc
from capstan_trainer.agent.storage import OutputStore

from . import domain
from .blobs import BlobStore
from .domain import AGGREGATE, decide_create, fold
from .tables import model_versions, models

METADATA_FILE = "capstan_model.json"  # what a model directory says about itself (capstan_finetune writes it)
MAX_CHUNK = 1 << 20


def _model_row(r: Any, counts: tuple[int, int] = (0, 0)) -> dict[str, Any]:
    return {**r, "tags": json.loads(r["tags"]), "version_count": counts[0], "latest_version": counts[1]}


def _version_row(r: Any, name: str) -> dict[str, Any]:
    return {**r, "model_name": name, "metadata": json.loads(r["metadata"]), "lineage": json.loads(r["lineage"]),
            "files": json.loads(r["files"])}


class RegistryApp:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.clock = SystemClock()
        self.blobs = BlobStore(ctx.settings.storage_path)
        self.outputs = OutputStore(ctx.settings.storage_path)
        self._blob_lock = asyncio.Lock()  # publishes store blobs; collection removes unreferenced ones
        # a tenant's model names are unique: a create checks the read model and appends under this lock, and
        # waits for the read model to hold it, so two concurrent creates of one name cannot both pass
        self._names_lock = asyncio.Lock()

    # -- commands ----------------------------------------------------------------------
    async def create(
        self, *, name: str, description: str, tags: dict[str, str], creator: str, idempotency_key: str, tenant: str = ""
    ) -> dict[str, Any]:
        domain.validate_name(name)
        model_id = stable_id("model", creator, idempotency_key) if idempotency_key else new_id("model")
        async with self._names_lock:
            taken = await asyncio.to_thread(self._id_by_name, name, tenant)
            if taken and taken != model_id:  # unique per tenant: another tenant's "x" neither blocks nor is told
                raise AlreadyExists(f"a model named {name!r} already exists ({taken}); choose another name",
                                    field="name")
            now = self.clock.now_ms()
            outcome = await execute(
                self.ctx.store, event_subject(AGGREGATE, model_id), fold,
                lambda s: decide_create(s, model_id=model_id, name=name, description=description, tags=tags,
                                        creator=creator, now_ms=now, tenant=tenant),
            )
            await self.ctx.await_projection(outcome.seq)
        return self.get(model_id)

    async def delete(self, ref: str, by: str) -> dict[str, Any]:
        model = await asyncio.to_thread(self.get, ref)
        outcome = await execute(self.ctx.store, event_subject(AGGREGATE, model["id"]), fold,
                                lambda s: domain.decide_delete(s, model_id=model["id"], by=by, now_ms=self.clock.now_ms()))
        await self.ctx.await_projection(outcome.seq)
        await self._collect(model["id"])
        return model

    async def publish(
        self, *, ref: str, task_id: str, instance_index: int, description: str, metadata: dict[str, Any], creator: str,
        idempotency_key: str,
    ) -> dict[str, Any]:
        """A new version from a finished task's /opt/ml/model (kept in storage by the agents)."""
        model = await asyncio.to_thread(self.get, ref)
        domain.validate_description(description)
        task = await self._finished_task(task_id, instance_index)
        try:
            root = self.outputs.instance_dir(task_id, instance_index) / "model"
        except ValueError as e:
            raise InvalidArgument(str(e), field="task_id") from e
        async with self._blob_lock:
            files = await asyncio.to_thread(self.blobs.put_tree, root)
            if not files:
                raise FailedPrecondition(
                    f"task {task_id} left nothing in /opt/ml/model (instance {instance_index}); write the model there")
            said = await asyncio.to_thread(_self_description, root)
            meta = ModelMetadata(**{**_known(said, ModelMetadata), **{k: v for k, v in metadata.items() if v}})
            lineage = Lineage(
                task_id=task_id, instance_index=instance_index, task_name=task.name,
                hyperparameters=json.loads(task.hyperparameters_json or "{}"),
                data={str(k): str(v) for k, v in (said.get("finetuning", {}).get("data") or {}).items()},
                image=str(getattr(task, "image", "") or "host"), command=task.command,
            )
            outcome = await execute(
                self.ctx.store, event_subject(AGGREGATE, model["id"]), fold,
                lambda s: domain.decide_publish(
                    s, model_id=model["id"], description=description, files=files, metadata=meta, lineage=lineage,
                    creator=creator, idempotency_key=idempotency_key, now_ms=self.clock.now_ms()),
            )
            await self.ctx.await_projection(outcome.seq)
        if outcome.new_events:
            version = outcome.new_events[0].version  # type: ignore[attr-defined]
        else:  # a retry of a publish that landed: the version that carries its key
            assert outcome.state is not None
            version = next(v.version for v in outcome.state.versions.values() if v.idempotency_key == idempotency_key)
        return await asyncio.to_thread(self.get_version, model["id"], version)

    async def delete_version(self, ref: str, version: int, by: str) -> dict[str, Any]:
        v = await asyncio.to_thread(self.get_version, ref, version)
        outcome = await execute(
            self.ctx.store, event_subject(AGGREGATE, v["model_id"]), fold,
            lambda s: domain.decide_delete_version(s, model_id=v["model_id"], version=v["version"], by=by,
                                                   now_ms=self.clock.now_ms()))
        await self.ctx.await_projection(outcome.seq)
        await self._collect(v["model_id"], v["version"])
        return v

    async def resolve_source(self, ref: str, version: int, *, tenant: str = "", prefer: str = "") -> dict[str, Any]:
        """``tenant``/``prefer``: as for ``get``, said by the service that asks for a user (the inference
        service deploying a user's model); they only narrow what the calling RPC may see."""
        v = await asyncio.to_thread(self.get_version, ref, version, tenant=tenant, prefer=prefer)
        files = [ModelFileEntry(**f) for f in v["files"]]
        async with self._blob_lock:  # a delete collecting blobs must not run under the links being made
            path = await asyncio.to_thread(self.blobs.materialize, v["model_id"], v["version"], files)
        return {"model_id": v["model_id"], "version": v["version"], "path": str(path), "metadata": v["metadata"]}

    async def _collect(self, model_id: str, version: int | None = None) -> None:
        async with self._blob_lock:
            await asyncio.to_thread(self.blobs.forget_source, model_id, version)
            referenced = await asyncio.to_thread(self._referenced)
            await asyncio.to_thread(self.blobs.collect, referenced)

    async def _finished_task(self, task_id: str, index: int) -> trainer_pb2.TrainingTask:
        if not task_id:
            raise InvalidArgument("task_id is required: the task whose /opt/ml/model to publish", field="task_id")
        if not self.ctx.settings.trainer_addr:
            raise Unavailable("the registry is not configured with the trainer's address")
        stub = trainer_pb2_grpc.TrainerStub(self.ctx.channel(self.ctx.settings.trainer_addr, "trainer"))
        try:
            task = await stub.GetTrainingTask(trainer_pb2.GetTrainingTaskRequest(id=task_id), timeout=5)
        except grpc.aio.AioRpcError as e:
            err = grpcutil.to_domain_error(e, service="trainer")
            if isinstance(err, NotFound):
                raise InvalidArgument(f"training task {task_id} does not exist", field="task_id") from e
            raise err from e
        caller_tenant = current_caller().tenant
        if caller_tenant and task.tenant != caller_tenant:  # another tenant's task does not exist for this caller
            raise InvalidArgument(f"training task {task_id} does not exist", field="task_id")
        if task.status != "Succeeded":
            raise FailedPrecondition(f"training task {task_id} is {task.status}; publish it once it has Succeeded")
        if not 0 <= index < max(task.instance_count, 1):
            raise InvalidArgument(f"task {task_id} has no instance {index} (it has {task.instance_count})",
                                  field="instance_index")
        return task

    # -- reads (run in threads) --------------------------------------------------------
    def _id_by_name(self, name: str, tenant: str) -> str | None:
        with self.ctx.engine.connect() as conn:
            return conn.execute(select(models.c.id).where(models.c.name == name, models.c.tenant == tenant)).scalar()

    def _referenced(self) -> set[str]:
        with self.ctx.engine.connect() as conn:
            return {f["sha256"] for (files,) in conn.execute(select(model_versions.c.files)) for f in json.loads(files)}

    def _counts(self, conn: Any, ids: list[str]) -> dict[str, tuple[int, int]]:
        q = select(model_versions.c.model_id, func.count(), func.max(model_versions.c.version)).where(
            model_versions.c.model_id.in_(ids)).group_by(model_versions.c.model_id)
        return {m: (int(n), int(v or 0)) for m, n, v in conn.execute(q)}

    def get(self, ref: str, *, tenant: str = "", prefer: str = "") -> dict[str, Any]:
        """A model by id, or by name; a user sees its tenant's only (every read and change of a model and
        its versions starts here, in the calling RPC's context). Names are unique per tenant: a caller that
        sees every tenant (the operator, the platform) naming one that several tenants use gets its own
        tenant's (``prefer``, else the caller's), else is told to give the id. ``tenant``: narrows a caller
        that sees every tenant to that one's models (never widens a user's view)."""
        caller = current_caller()
        tenant = caller.tenant or tenant
        prefer = prefer or caller.owner_tenant
        where = [or_(models.c.id == ref, models.c.name == ref)]
        if tenant:
            where.append(models.c.tenant == tenant)
        with self.ctx.engine.connect() as conn:
            rows = conn.execute(select(models).where(*where).order_by(models.c.created_at_ms, models.c.id)
                                .limit(50)).mappings().all()
            row = _pick(rows, ref, prefer)
            return _model_row(row, self._counts(conn, [row["id"]]).get(row["id"], (0, 0)))

    def list_models(self, page_size: int, page_token: str, query: str = "", creator: str = "") -> tuple[list[dict[str, Any]], str, int]:
        size, offset = page_bounds(page_size, page_token)
        where = []
        if query:
            q = query.lower()  # a substring: '%' and '_' mean themselves (autoescape)
            where.append(or_(*(func.lower(c).contains(q, autoescape=True)
                               for c in (models.c.name, models.c.description, models.c.tags))))
        if creator:
            where.append(models.c.creator == creator)
        if tenant := current_caller().tenant:
            where.append(models.c.tenant == tenant)
        with self.ctx.engine.connect() as conn:
            total = int(conn.execute(select(func.count()).select_from(models).where(*where)).scalar() or 0)
            rows = conn.execute(select(models).where(*where).order_by(models.c.created_at_ms, models.c.id)
                                .limit(size).offset(offset)).mappings().all()
            counts = self._counts(conn, [r["id"] for r in rows])
        return [_model_row(r, counts.get(r["id"], (0, 0))) for r in rows], next_token(offset, size, total), total

    def get_version(self, ref: str, version: int, *, tenant: str = "", prefer: str = "") -> dict[str, Any]:
        model = self.get(ref, tenant=tenant, prefer=prefer)
        with self.ctx.engine.connect() as conn:
            q = select(model_versions).where(model_versions.c.model_id == model["id"])
            q = q.where(model_versions.c.version == version) if version else q.order_by(model_versions.c.version.desc())
            row = conn.execute(q.limit(1)).mappings().first()
        if row is None:
            raise NotFound(f"model {model['name']} has no version {version}" if version else
                           f"model {model['name']} has no version yet")
        return _version_row(row, model["name"])

    def list_versions(self, ref: str, page_size: int, page_token: str) -> tuple[list[dict[str, Any]], str, int]:
        model = self.get(ref)
        size, offset = page_bounds(page_size, page_token)
        where = model_versions.c.model_id == model["id"]
        with self.ctx.engine.connect() as conn:
            total = int(conn.execute(select(func.count()).select_from(model_versions).where(where)).scalar() or 0)
            rows = conn.execute(select(model_versions).where(where).order_by(model_versions.c.version)
                                .limit(size).offset(offset)).mappings().all()
        return [_version_row(r, model["name"]) for r in rows], next_token(offset, size, total), total

    def read_file(self, ref: str, version: int, path: str, offset: int, limit: int) -> tuple[bytes, int, bool]:
        v = self.get_version(ref, version)
        entry = next((f for f in v["files"] if f["path"] == path), None)
        if entry is None:
            raise NotFound(f"model {v['model_name']} v{v['version']} has no file {path!r}")
        if offset < 0:
            raise InvalidArgument("offset must be >= 0", field="offset")
        limit = MAX_CHUNK if limit <= 0 or limit > MAX_CHUNK else limit
        data, size = self.blobs.read(entry["sha256"], offset, limit)
        return data, size, offset + len(data) >= size


def _pick(rows: Sequence[Any], ref: str, prefer: str) -> Any:
    """The model ``ref`` names among ``rows`` (those with that id or name the caller may see): the id
    first; a name held in several tenants: ``prefer``'s, else ambiguous."""
    if not rows:
        raise NotFound(f"model {ref} does not exist")
    for r in rows:
        if r["id"] == ref:
            return r
    if len(rows) == 1:
        return rows[0]
    mine = [r for r in rows if r["tenant"] == prefer]
    if len(mine) == 1:
        return mine[0]
    ids = ", ".join(r["id"] for r in rows)
    raise InvalidArgument(f"several tenants have a model named {ref!r} ({ids}); name it by its id", field="model_id")


def _self_description(root: Path) -> dict[str, Any]:
    """``capstan_model.json`` of a model tree, read without following links; {} when absent or bad."""
    try:
        with safefs.open_file(root, METADATA_FILE) as f:
            data = json.loads(f.read(1 << 20))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _known(said: dict[str, Any], model: type[ModelMetadata]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        value = said.get(name)
        if isinstance(value, field.annotation) and not isinstance(value, bool):  # type: ignore[arg-type]
            out[name] = value
    return out
