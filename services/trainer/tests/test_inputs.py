"""Inputs and outputs of a task (SPEC §3.1 storage rows): file-system volumes bound live, object storage
downloaded before the start and uploaded after (the local-directory default and an S3-compatible store:
a real moto server on loopback), git storage cloned from a local repository, the code package, user
paths confined to their roots, and the outputs given back through the trainer's API."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from capstan_agentkit.sandbox import testing as sandbox_testing
from capstan_agentkit.sandbox.probe import missing
from capstan_proto import common_pb2, trainer_pb2
from capstan_trainer.objectstore import LocalStore, S3Store
from capstan_trainer.storage_backends import ObjectStoreConfig, StorageConfig

contained = pytest.mark.skipif(
    shutil.which("bwrap") is None or bool(missing(sandbox_testing.CONFIG)), reason="this machine cannot contain sandboxes")
SECRET = "s3cr3t-t0ken-never-logged"


@pytest.fixture
def s3() -> Iterator[ObjectStoreConfig]:
    """A real S3-compatible server (moto) on a free loopback port, with a bucket."""
    server_mod = pytest.importorskip("moto.server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    cfg = ObjectStoreConfig("s3", "s3", endpoint=f"http://127.0.0.1:{port}", access_key_id="test",
                            secret_access_key="test")
    S3Store(cfg).client.create_bucket(Bucket="bucket")
    yield cfg
    server.stop()


def test_s3_round_trip_keeps_the_tree_and_never_uploads_a_link(s3: ObjectStoreConfig, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a")
    (src / "sub" / "b.bin").write_bytes(b"\0\1\2")
    (src / "link").symlink_to("/etc/hostname")  # user code left it: never followed, never uploaded
    store = S3Store(s3)
    assert store.upload(src, "bucket/run/1") == 2
    dest = tmp_path / "dest"
    assert store.download("bucket/run/1", dest) == 2
    assert (dest / "a.txt").read_text() == "a" and (dest / "sub" / "b.bin").read_bytes() == b"\0\1\2"
    assert not (dest / "link").exists()
    # a key that would leave the destination is refused, never written
    store.client.put_object(Bucket="bucket", Key="evil/../../escape", Body=b"x")
    with pytest.raises(ValueError, match="plain relative path"):
        store.download("bucket/evil", tmp_path / "d2")
    assert not (tmp_path / "escape").exists()


def test_local_store_refuses_paths_out_of_its_root(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        LocalStore(tmp_path).download("bucket/../../etc", tmp_path / "d")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A local git repository under the operator's git root."""
    root = tmp_path / "git" / "project"
    root.mkdir(parents=True)
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t", "-C", str(root)]
    subprocess.run(["git", "init", "-q", "-b", "main", str(root)], check=True)
    (root / "lib.py").write_text("GREETING = 'from git'\n")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "one"], check=True)
    return root


def _configure(platform: Any, s3: ObjectStoreConfig, git_root: Path) -> Path:
    """The operator's storage.json (read by the trainer and the agents) and the stores' contents."""
    config = {"object_stores": {"s3": {"kind": "s3", "endpoint": s3.endpoint, "access_key_id": "test",
                                       "secret_access_key": "test"}},
              "git_credentials": {"bot": {"username": "bot", "password": SECRET}},
              "git_roots": [str(git_root)]}
    (platform.tmp / "storage.json").write_text(json.dumps(config))
    storage = platform.tmp / "storage"
    (storage / "objects" / "data" / "train").mkdir(parents=True)
    (storage / "objects" / "data" / "train" / "samples.jsonl").write_text('{"x": 1}\n')
    (storage / "objects" / "code" / "v1").mkdir(parents=True)
    (storage / "objects" / "code" / "v1" / "train.py").write_text("print('code package ran')\n")
    (storage / "builtin" / "models" / "tiny").mkdir(parents=True)
    (storage / "builtin" / "models" / "tiny" / "config.json").write_text('{"model": "tiny"}')
    return storage


COMMAND = r"""set -e
python3 train.py
cat /opt/ml/input/data/train/samples.jsonl
cat /opt/ml/pretrain_model/config.json; echo
if touch /opt/ml/pretrain_model/x 2>/dev/null; then echo "builtin model is writable"; exit 9; fi
PYTHONPATH=/opt/ml/input/repo python3 -c "import lib; print(lib.GREETING)"
echo checkpoint > /opt/ml/output/ckpt-1.txt
echo weights > /opt/ml/model/weights.bin
"""


@contained
async def test_a_task_with_every_kind_of_storage_row(platform: Any, s3: ObjectStoreConfig, repo: Path) -> None:
    _configure(platform, s3, repo.parent)
    rg = await platform.group("io")
    await platform.agent(rg, "io-0", reconcile_s=0.3)
    storage = [
        trainer_pb2.StorageRow(kind="object", purpose="training_data", source="local:data/train",
                               path="/opt/ml/input/data/train"),
        trainer_pb2.StorageRow(kind="fs", purpose="builtin_model", source="platform:models/tiny",
                               path="/opt/ml/pretrain_model"),
        trainer_pb2.StorageRow(kind="git", purpose="user_code", source=f"file://{repo}", branch="main",
                               path="/opt/ml/input/repo"),
    ]
    task = await platform.t.CreateTrainingTask(trainer_pb2.CreateTrainingTaskRequest(
        name="io", resource_group_id=rg, command=COMMAND, storage=storage, code="local:code/v1",
        output="s3:bucket/runs", resources=common_pb2.Resources(cpu=1, memory_gib=1)))
    got = await platform.wait(task.id, "Succeeded", "Failed", timeout=60)
    lines = await platform.lines(task.id)
    assert got.status == "Succeeded", (got.failure_reason, lines)
    assert {"code package ran", '{"x": 1}', '{"model": "tiny"}', "from git"} <= set(lines)
    # uploaded to the task's output location: output while it ran and at the end, the model at the end
    keys = {o["Key"] for o in S3Store(s3).client.list_objects_v2(Bucket="bucket")["Contents"]}
    assert {f"runs/{task.id}/0/output/ckpt-1.txt", f"runs/{task.id}/0/model/weights.bin"} <= keys
    # and given back through the API (from platform storage)
    listing = await platform.t.ListOutputs(trainer_pb2.ListOutputsRequest(task_id=task.id, instance_index=-1))
    assert {(f.path, f.kind) for f in listing.files} >= {("output/ckpt-1.txt", "file"), ("model/weights.bin", "file")}
    assert await platform.output(task.id, 0, "model/weights.bin") == b"weights\n"
    for bad in ("model/../../etc/passwd", "/etc/passwd", "secrets/x"):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await platform.output(task.id, 0, bad)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@contained
async def test_git_credentials_are_never_logged(platform: Any, s3: ObjectStoreConfig, repo: Path) -> None:
    _configure(platform, s3, repo.parent)
    rg = await platform.group("git")
    await platform.agent(rg, "git-0", reconcile_s=0.3)
    row = trainer_pb2.StorageRow(kind="git", source="http://127.0.0.1:9/nothing.git", credential="bot",
                                 path="/opt/ml/input/repo")
    task = await platform.t.CreateTrainingTask(trainer_pb2.CreateTrainingTaskRequest(
        name="git-fails", resource_group_id=rg, command="true", storage=[row]))
    got = await platform.wait(task.id, "Failed", timeout=60)
    lines = await platform.lines(task.id)
    assert "inputs could not be prepared" in got.failure_reason and "storage row 0" in got.failure_reason
    assert all(SECRET not in ln for ln in lines) and SECRET not in got.failure_reason


async def test_bad_rows_are_refused_before_anything_is_appended(platform: Any) -> None:
    rg = await platform.group("refuse")
    cases = [
        (trainer_pb2.StorageRow(kind="object", source="local:../../etc", path="/opt/ml/input/x"), "'..'"),
        (trainer_pb2.StorageRow(kind="object", source="nowhere:b/p", path="/opt/ml/input/x"), "not configured"),
        (trainer_pb2.StorageRow(kind="fs", source="platform:m", path="/etc/passwd"), "must lie under"),
        (trainer_pb2.StorageRow(kind="fs", source="platform:m", path="/opt/ml/code"), "platform's own"),
        (trainer_pb2.StorageRow(kind="git", source="https://user:pw@example.com/r.git", path="/opt/ml/input/r"),
         "must not carry credentials"),
        (trainer_pb2.StorageRow(kind="object", purpose="builtin_model", source="local:b/p", path="/opt/ml/input/m"),
         "file-system rows"),
    ]
    for row, message in cases:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await platform.t.CreateTrainingTask(trainer_pb2.CreateTrainingTaskRequest(
                name="bad", resource_group_id=rg, command="true", storage=[row]))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in (e.value.details() or ""), (
            message, e.value.details())
    listed = await platform.t.ListTrainingTasks(trainer_pb2.ListTrainingTasksRequest())
    assert listed.total == 0


def test_a_volume_path_leading_out_of_its_root_is_refused(tmp_path: Path) -> None:
    from capstan_core.contracts.training import StorageRow
    from capstan_trainer.agent.inputs import InputError, _volume

    root = tmp_path / "vol"
    root.mkdir()
    (root / "escape").symlink_to("/etc")
    config = StorageConfig.parse({"volumes": {"v": {"root": str(root)}}}, tmp_path)
    with pytest.raises(InputError, match="leads out of volume"):
        _volume(StorageRow(kind="fs", source="v:escape", path="/mnt/x"), config)
