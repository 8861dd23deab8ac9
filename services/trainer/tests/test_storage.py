"""Durable training output: the copy to and from platform storage (confined, never following a link user
code left behind), and a task evicted on one node that resumes on another from its checkpoint."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from capstan_agentkit.safefs import chown_tree, list_tree, mirror, open_file
from capstan_proto import common_pb2, trainer_pb2
from capstan_trainer.agent.__main__ import _apply_flags
from capstan_trainer.agent.settings import AgentSettings
from capstan_trainer.agent.storage import OutputStore


def tree(root: Path) -> dict[str, str]:
    """Every entry under root: file contents, 'link -> target', or 'dir'."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = f"link -> {os.readlink(p)}"
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = p.read_text()
    return out


# -- the copy ----------------------------------------------------------------------------------------
def test_mirror_copies_changes_and_deletions(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "ckpt").mkdir(parents=True)
    (src / "ckpt" / "step-1").write_text("one")
    (src / "log.txt").write_text("a")
    mirror(src, dst)
    assert tree(dst) == {"ckpt": "dir", "ckpt/step-1": "one", "log.txt": "a"}
    (src / "ckpt" / "step-1").unlink()
    (src / "ckpt" / "step-2").write_text("two")
    (src / "log.txt").write_text("ab")
    mirror(src, dst)
    assert tree(dst) == {"ckpt": "dir", "ckpt/step-2": "two", "log.txt": "ab"}
    shutil.rmtree(src / "ckpt")
    (src / "ckpt").write_text("now a file")  # a directory replaced by a file, and the other way round
    (src / "log.txt").unlink()
    (src / "log.txt").mkdir()
    mirror(src, dst)
    assert tree(dst) == {"ckpt": "now a file", "log.txt": "dir"}
    shutil.rmtree(src)
    mirror(src, dst)  # a missing source is an empty one
    assert tree(dst) == {}


def test_mirror_never_follows_nor_stores_links_left_by_user_code(tmp_path: Path) -> None:
    secret = tmp_path / "host-secret"
    secret.write_text("do not copy")
    (tmp_path / "host-dir").mkdir()
    (tmp_path / "host-dir" / "inside").write_text("do not copy either")
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "file-link").symlink_to(secret)
    (src / "relative-link").symlink_to("../../../../../admin-token")
    (src / "dir-link").symlink_to(tmp_path / "host-dir")
    os.mkfifo(src / "fifo")  # a special file: skipped (opening it would block)
    (src / "setuid").write_text("x")
    os.chmod(src / "setuid", 0o4755)
    mirror(src, dst)
    # a stored link would lead wherever it points on whichever host reads the storage later
    assert tree(dst) == {"setuid": "x"}
    assert os.stat(dst / "setuid").st_mode & 0o7777 == 0o755  # never a set-uid file of root's in storage
    # the user replaces the link with a real directory: it is copied as one; the old target is untouched
    (src / "dir-link").unlink()
    (src / "dir-link").mkdir()
    (src / "dir-link" / "inside").write_text("user data")
    mirror(src, dst)
    assert (tmp_path / "host-dir" / "inside").read_text() == "do not copy either"
    assert tree(dst)["dir-link/inside"] == "user data" and not (dst / "dir-link").is_symlink()
    # a link that replaces a directory already copied: the copy goes, nothing is followed
    shutil.rmtree(src / "dir-link")
    (src / "dir-link").symlink_to(tmp_path / "host-dir")
    mirror(src, dst)
    assert tree(dst) == {"setuid": "x"}
    # a source that is itself a link counts as empty
    (tmp_path / "src-link").symlink_to(tmp_path / "host-dir")
    mirror(tmp_path / "src-link", dst)
    assert tree(dst) == {}


def test_chown_tree_never_follows_a_link(tmp_path: Path) -> None:
    outside = tmp_path / "host-file"
    outside.write_text("root's")
    (tmp_path / "host-dir").mkdir()
    tree_root = tmp_path / "output"
    (tree_root / "ckpt").mkdir(parents=True)
    (tree_root / "ckpt" / "step").write_text("1")
    (tree_root / "link").symlink_to(outside)
    (tree_root / "ckpt" / "dir-link").symlink_to(tmp_path / "host-dir")
    chown_tree(tree_root, 2_999_999, 2_999_998)
    for p in (tree_root, tree_root / "ckpt", tree_root / "ckpt" / "step", tree_root / "link", tree_root / "ckpt" / "dir-link"):
        st = os.lstat(p)
        assert (st.st_uid, st.st_gid) == (2_999_999, 2_999_998), p
    for p in (outside, tmp_path / "host-dir"):
        assert os.stat(p).st_uid == os.getuid()  # the targets stay whose they were
    (tmp_path / "root-link").symlink_to(tmp_path / "host-dir")
    with pytest.raises(NotADirectoryError):
        chown_tree(tmp_path / "root-link", 2_999_999, 2_999_999)


def test_list_and_open_only_regular_files_of_the_tree(tmp_path: Path) -> None:
    root = tmp_path / "output"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "w.bin").write_bytes(b"12345")
    (root / "top.txt").write_text("t")
    (root / "a" / "up").symlink_to("..")
    (root / "etc").symlink_to("/etc")
    os.mkfifo(root / "pipe")
    assert [(e.path, e.kind, e.size) for e in list_tree(root)] == [
        ("a", "dir", 0), ("a/b", "dir", 0), ("a/b/w.bin", "file", 5), ("top.txt", "file", 1)]
    with open_file(root, "a/b/w.bin") as f:
        assert f.read() == b"12345"
    for bad in ("a/up/top.txt", "etc/passwd", "etc", "pipe", "a", "../output/top.txt", "/top.txt", ""):
        with pytest.raises(PermissionError):
            open_file(root, bad)
    with pytest.raises(FileNotFoundError):
        open_file(root, "a/missing")
    assert list_tree(tmp_path / "missing") == [] and list_tree(root / "etc") == []


@pytest.mark.parametrize("task_id", ["../x", "a/b", ".", "..", "", "train-x.1", "/abs", "x" * 200])
def test_storage_paths_are_confined(tmp_path: Path, task_id: str) -> None:
    with pytest.raises(ValueError):
        OutputStore(tmp_path).instance_dir(task_id, 0)


def test_storage_layout_and_bad_index(tmp_path: Path) -> None:
    store = OutputStore(tmp_path / "storage")
    assert store.instance_dir("train-abc", 3) == (tmp_path / "storage" / "train" / "train-abc" / "3").resolve()
    for bad in (-1, True):
        with pytest.raises(ValueError):
            store.instance_dir("train-abc", bad)


def test_a_stale_attempt_cannot_overwrite_a_newer_one(tmp_path: Path) -> None:
    store = OutputStore(tmp_path / "storage")
    old, new = tmp_path / "attempt0", tmp_path / "attempt1"
    (old / "output").mkdir(parents=True)
    (old / "output" / "step").write_text("5")
    assert store.save("train-abc", 0, 0, old)
    assert store.restore("train-abc", 0, 1, new)  # attempt 1 resumes from attempt 0: it owns the storage now
    assert (new / "output" / "step").read_text() == "5"
    (old / "output" / "step").write_text("6")  # the stale attempt goes on writing, on a node that came back
    assert not store.save("train-abc", 0, 0, old)
    (new / "output" / "step").write_text("7")
    assert store.save("train-abc", 0, 1, new)
    assert (store.instance_dir("train-abc", 0) / "output" / "step").read_text() == "7"
    assert not store.restore("train-abc", 1, 1, tmp_path / "other")  # nothing saved for instance 1


def test_storage_root_defaults_to_the_data_dir_and_can_be_set(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CAPSTAN_DATA_DIR", str(tmp_path / "data"))
    # set, then removed, so that monkeypatch restores both after _apply_flags wrote them
    for name in ("CAPSTAN_STORAGE_DIR", "CAPSTAN_OUTPUT_SYNC_S"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    assert AgentSettings().storage_root == tmp_path / "data" / "storage"
    assert _apply_flags(["--storage-dir", str(tmp_path / "nfs"), "--output-sync-s", "5", "--ready-file", "r"]) == [
        "--ready-file", "r",
    ]
    settings = AgentSettings()
    assert (settings.storage_root, settings.output_sync_s) == (tmp_path / "nfs", 5.0)


# -- end to end: evicted on node A, resumed on node B ------------------------------------------------------
POLICY = {
    "ResourceRule": {"DefaultPriority": 5, "DefaultQueue": 0, "Preempted": 1},
    "TaskRules": [{"AttrRules": [{"ValueType": "Tag", "Key": "tier", "Value": "urgent"}], "ScheduleRule": {"Priority": 1}}],
}
# Counts steps, keeps the newest in a checkpoint directory, and on SIGTERM writes where it got to.
CHECKPOINTING = (
    "n=$(cat /opt/ml/output/step 2>/dev/null || echo 0); echo \"resume from $n on $NODE_MARK\"; "
    "mkdir -p /opt/ml/output/ckpt; "
    "trap 'echo checkpoint $n; echo $n > /opt/ml/output/step; exit 0' TERM; "
    "while [ $n -lt 30 ]; do n=$((n+1)); echo $n > /opt/ml/output/ckpt/latest; sleep 0.2; done; "
    "echo \"done at $n\"; echo weights-$n > /opt/ml/model/weights"
)


@pytest.fixture
async def two_nodes(platform: Any, tmp_path: Path) -> dict[str, Any]:
    rg = await platform.group("shared", POLICY)

    async def agent(name: str) -> Any:
        # Two agents from one data dir: two nodes sharing <data dir>/storage, each with its own agent dir.
        return await platform.agent(rg, name, output_sync_s=0.3)

    return {"t": platform.t, "rg": rg, "agent": agent, "storage": tmp_path / "storage"}


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")
async def test_an_evicted_task_resumes_on_another_node_from_storage(two_nodes: dict[str, Any], platform: Any) -> None:
    t, rg, storage = two_nodes["t"], two_nodes["rg"], two_nodes["storage"]
    a = await two_nodes["agent"]("node-a")
    res = common_pb2.Resources(cpu=2, memory_gib=1)
    low = await t.CreateTrainingTask(trainer_pb2.CreateTrainingTaskRequest(
        name="low", resource_group_id=rg, command=CHECKPOINTING.replace("$NODE_MARK", "$CAPSTAN_ATTEMPT"),
        resources=res, stop_grace_seconds=10))
    await platform.wait(low.id, "Running")
    saved = storage / "train" / low.id / "0" / "output" / "ckpt" / "latest"
    for _ in range(100):  # copied while the instance still runs, not only when it exits
        if saved.exists():
            break
        await asyncio.sleep(0.1)
    assert saved.exists() and (await platform.wait(low.id, "Running")).status == "Running"

    # A higher-priority task takes node A; the evicted task can only go to node B, which joins now.
    high = await t.CreateTrainingTask(trainer_pb2.CreateTrainingTaskRequest(
        name="high", resource_group_id=rg, command="sleep 4; echo urgent-done", resources=res,
        tags={"tier": "urgent"}))
    requeued = await platform.wait(low.id, "Queued", "Failed", "Succeeded")
    assert requeued.status == "Queued" and requeued.attempt == 1
    b = await two_nodes["agent"]("node-b")

    done = await platform.wait(low.id, "Succeeded", "Failed")
    assert done.status == "Succeeded" and done.attempt == 1
    assert done.instances[0].node_id == b.node_id != a.node_id
    high_done = await platform.wait(high.id, "Succeeded", "Failed")
    assert high_done.status == "Succeeded" and high_done.instances[0].node_id == a.node_id
    # attempt 1 ran on B only, and its directory there started from A's checkpoint
    assert not a.executor.log_path(f"{low.id}.1", 0).parent.exists()
    assert b.executor.log_path(f"{low.id}.1", 0).parent.exists()
    lines = [ln.line for ln in (await t.GetLogs(trainer_pb2.GetLogsRequest(task_id=low.id, instance_index=-1))).lines]
    checkpoints = [ln for ln in lines if ln.startswith("checkpoint ")]
    assert len(checkpoints) == 1 and int(checkpoints[0].split()[1]) > 0, lines
    step = checkpoints[0].split()[1]
    assert "resume from 0 on 0" in lines and f"resume from {step} on 1" in lines and "done at 30" in lines
    # what the last attempt left is in storage too, model included
    assert (storage / "train" / low.id / "0" / "model" / "weights").read_text().strip() == "weights-30"
    assert (storage / "train" / low.id / "0" / "attempt").read_text() == "1"
