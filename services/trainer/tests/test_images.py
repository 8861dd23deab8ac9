"""Images (SPEC §3.1, §3.6): a small image built here, with no network (the host's dash and libc in a
layer, a marker and a whiteout in a second one), saved as ``docker save`` and as an OCI layout archive,
imported (unpacked once, cached by digest) and used as a task's ``/``."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import grpc
import pytest

from capstan_agentkit.images import image_command
from capstan_agentkit.sandbox import testing as sandbox_testing
from capstan_agentkit.sandbox.probe import missing
from capstan_proto import common_pb2, trainer_pb2
from capstan_trainer.images import DEFAULT_IMAGE, ImageStore, builtin_images

contained = pytest.mark.skipif(
    shutil.which("bwrap") is None or bool(missing(sandbox_testing.CONFIG)), reason="this machine cannot contain sandboxes")


def _tar(files: dict[str, bytes | str], modes: dict[str, int] | None = None) -> bytes:
    """A layer: path -> content (bytes), or -> "dir"."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path, content in files.items():
            info = tarfile.TarInfo(path)
            if content == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                assert isinstance(content, bytes)
                info.size, info.mode = len(content), (modes or {}).get(path, 0o644)
                tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def _layers() -> list[bytes]:
    libs = re.findall(r"(/\S+\.so[.\d]*)", subprocess.run(["ldd", "/bin/dash"], capture_output=True,
                                                          text=True).stdout)
    files: dict[str, bytes | str] = {"bin": "dir", "etc": "dir", "tmp": "dir"}
    files["bin/sh"] = Path("/bin/dash").read_bytes()
    for lib in libs:
        files[lib.lstrip("/")] = Path(lib).read_bytes()
    files["etc/remove-me"] = b"from layer one\n"
    one = _tar(files, {"bin/sh": 0o755, **{lib.lstrip("/"): 0o755 for lib in libs}})  # the loader is executed
    two = _tar({"etc/image-release": b"capstan test image 1\n", "etc/.wh.remove-me": b"",
                "../escape": b"never written\n"})
    return [one, two]


CONFIG = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"},
                     "config": {"Entrypoint": ["/bin/sh", "-c"], "Cmd": ["cat /etc/image-release"]}}).encode()


def docker_save(path: Path) -> Path:
    layers = _layers()
    config = CONFIG
    with tarfile.open(path, "w") as tar:
        names = []
        for i, layer in enumerate(layers):
            names.append(f"l{i}/layer.tar")
            _add(tar, names[-1], layer)
        _add(tar, "config.json", config)
        _add(tar, "manifest.json", json.dumps([{"Config": "config.json", "Layers": names}]).encode())
    return path


def oci_archive(path: Path) -> Path:
    layers = _layers()
    config = CONFIG

    def desc(data: bytes, media: str) -> dict[str, Any]:
        return {"mediaType": media, "digest": f"sha256:{hashlib.sha256(data).hexdigest()}", "size": len(data)}

    manifest = json.dumps({"schemaVersion": 2, "config": desc(config, "application/vnd.oci.image.config.v1+json"),
                           "layers": [desc(x, "application/vnd.oci.image.layer.v1.tar") for x in layers]}).encode()
    with tarfile.open(path, "w") as tar:
        for blob in (config, manifest, *layers):
            _add(tar, f"blobs/sha256/{hashlib.sha256(blob).hexdigest()}", blob)
        _add(tar, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        index = {"schemaVersion": 2, "manifests": [desc(manifest, "application/vnd.oci.image.manifest.v1+json")]}
        _add(tar, "index.json", json.dumps(index).encode())
    return path


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_both_archive_formats_unpack_to_the_same_cached_image(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "storage")
    a = store.import_archive(docker_save(tmp_path / "a.tar"))
    b = store.import_archive(oci_archive(tmp_path / "b.tar"))
    assert a == b and a.startswith("sha256:")  # the same config: the same image, unpacked once
    rootfs = store.rootfs(a)
    assert rootfs is not None
    assert (rootfs / "etc" / "image-release").read_text() == "capstan test image 1\n"
    assert not (rootfs / "etc" / "remove-me").exists()  # the second layer's whiteout
    assert not (tmp_path / "storage" / "images" / "escape").exists() and not (rootfs.parent / "escape").exists()
    assert [i.name for i in store.list()] == [a]
    # what it runs by default (a service's sidecar without a command of its own runs this)
    assert image_command(tmp_path / "storage", a) == ["/bin/sh", "-c", "cat /etc/image-release"]
    assert image_command(tmp_path / "storage", DEFAULT_IMAGE) == []
    with pytest.raises(FileNotFoundError, match="has not been imported"):
        store.rootfs("sha256:" + "0" * 64)
    assert builtin_images()[0].name == DEFAULT_IMAGE and "DDP" in builtin_images()[0].modes


@contained
async def test_a_task_runs_in_an_imported_image(platform: Any, tmp_path: Path) -> None:
    image = ImageStore(platform.tmp / "storage").import_archive(docker_save(tmp_path / "img.tar"))
    rg = await platform.group("img")
    await platform.agent(rg, "img-0", reconcile_s=0.3)
    command = ('read line < /etc/image-release; echo "$line"; test ! -e /etc/remove-me && echo whiteout-ok; '
               'test ! -e /usr/bin/python3 && echo not-the-host; echo ran > /opt/ml/output/ran')
    task = await platform.t.CreateTrainingTask(trainer_pb2.CreateTrainingTaskRequest(
        name="in-image", resource_group_id=rg, command=command, image=image,
        resources=common_pb2.Resources(cpu=1, memory_gib=1)))
    got = await platform.wait(task.id, "Succeeded", "Failed", timeout=60)
    lines = await platform.lines(task.id)
    assert got.status == "Succeeded", (got.failure_reason, lines)
    assert {"capstan test image 1", "whiteout-ok", "not-the-host"} <= set(lines)
    assert await platform.output(task.id, 0, "output/ran") == b"ran\n"
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await platform.t.CreateTrainingTask(trainer_pb2.CreateTrainingTaskRequest(
            name="nope", resource_group_id=rg, command="true", image="sha256:" + "1" * 64))
    assert "has not been imported" in (e.value.details() or "")
    listed = await platform.t.ListImages(trainer_pb2.ListImagesRequest())
    assert [i.name for i in listed.items] == [DEFAULT_IMAGE, image]
