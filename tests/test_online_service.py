"""An online service end to end on a platform started by ``capstan up`` (separate processes), with real
parts only: the project's tiny GPT (Hugging Face layout) placed on the platform storage is deployed as a
service group with the transformers engine; the inference agent runs its replicas in sandboxes, probes
them and reports them ready; the official ``openai`` SDK calls it through the gateway (chat, streaming,
completions, models, errors). Then, under steady load, the version is rolled to a new spec and an
instance is isolated: not one request fails (issue #9, points 9 and 10)."""

from __future__ import annotations

import shutil
import threading
import time

import openai
import pytest

from capstan_finetune import staging, tinygpt

from .platform_harness import Platform, wait_service

pytestmark = [pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
              pytest.mark.timeout(900)]


class Load:
    """Steady traffic from a few client threads; every failure is kept with its error."""

    def __init__(self, client: openai.OpenAI, threads: int = 3) -> None:
        self.client, self.ok, self.failed = client, 0, []  # type: ignore[var-annotated]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                r = self.client.chat.completions.create(model="ignored", max_tokens=4,
                                                        messages=[{"role": "user", "content": "who are you?"}])
                assert r.choices[0].message.content is not None
                with self._lock:
                    self.ok += 1
            except Exception as exc:  # noqa: BLE001 - each failure is what the test counts
                with self._lock:
                    self.failed.append(repr(exc))

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def wait_for(self, n: int, timeout: float = 120) -> None:
        start, deadline = self.ok, time.monotonic() + timeout
        while self.ok < start + n:
            assert time.monotonic() < deadline and not self.failed, (self.ok, self.failed[:3])
            time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)


def test_deploy_call_with_the_sdk_roll_and_isolate_without_dropping_a_request(platform: Platform) -> None:
    base = tinygpt.ensure_base_model(staging.models_root())
    shutil.copytree(base, platform.data_dir / "storage" / "models" / "tiny")
    api = platform.client()
    spec = {"runtime": "transformers", "model": {"kind": "path", "path": "models/tiny"}, "replicas": 2,
            "resources": {"cpu": 0.5, "memory_gib": 1}, "resource_group_id": platform.default_rg,
            "max_surge_pct": 50, "max_unavailable_pct": 0, "grace_period_s": 30}
    r = api.post("/api/v1/services", json={"name": "tiny-chat", "generate_key": True, "spec": spec})
    assert r.status_code == 201, r.text
    sid, secret = r.json()["id"], r.json()["created_key"]["secret"]
    vid = r.json()["versions"][0]["id"]
    wait_service(api, sid, lambda s: s["running_replicas"] == 2, "two ready replicas")

    sdk = openai.OpenAI(base_url=f"{platform.api}/{sid}/v1", api_key=secret, max_retries=0, timeout=60)
    chat = sdk.chat.completions.create(model=sid, max_tokens=8, messages=[{"role": "user", "content": "hello"}])
    assert chat.object == "chat.completion" and chat.usage is not None and 0 < chat.usage.completion_tokens <= 8
    chunks = list(sdk.chat.completions.create(model=sid, max_tokens=8, stream=True,
                                              messages=[{"role": "user", "content": "hello"}]))
    assert chunks and all(c.object == "chat.completion.chunk" for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    text = sdk.completions.create(model=sid, prompt="Capstan is", max_tokens=5)
    assert text.object == "text_completion" and text.choices[0].text is not None
    assert [m.id for m in sdk.models.list().data]
    # one base URL for every service: model = ms-id
    one = openai.OpenAI(base_url=f"{platform.api}/v1", api_key=secret, max_retries=0)
    assert one.chat.completions.create(model=sid, max_tokens=2, messages=[{"role": "user", "content": "hi"}]).choices

    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{platform.api}/{sid}/v1", api_key="sk-wrong", max_retries=0).models.list()
    with pytest.raises(openai.NotFoundError):
        openai.OpenAI(base_url=f"{platform.api}/ms-zzzzzzzz/v1", api_key=secret, max_retries=0).models.list()
    with pytest.raises(openai.APIStatusError) as big:
        sdk.chat.completions.create(model=sid, max_tokens=2, messages=[{"role": "user", "content": "x" * 700_000}])
    assert big.value.status_code == 413

    with Load(sdk) as load:
        load.wait_for(5)
        # a rolling update: a new spec revision replaces both replicas, one at a time beside the old ones
        old = {i["id"] for i in api.get(f"/api/v1/services/{sid}").json()["instances"]}
        r = api.patch(f"/api/v1/services/{sid}/versions/{vid}", json={"spec": {"env": {"ROLLED": "1"}}})
        assert r.status_code == 200, r.text
        rolled = wait_service(api, sid, lambda s: s["running_replicas"] == 2 and len(s["instances"]) == 2
                       and all(i["state"] == "Ready" and i["id"] not in old for i in s["instances"]),
                       "two new replicas ready, the old ones gone")
        load.wait_for(5)
        # isolate one instance: it stays up and gets no new traffic
        victim = rolled["instances"][0]["id"]
        r = api.post(f"/api/v1/services/{sid}/instances/{victim}/isolate")
        assert r.status_code == 200, r.text
        load.wait_for(10)
    assert load.failed == [] and load.ok >= 20, (load.ok, load.failed[:5])
