"""HPA under real load (issue #9, SPEC §6.4): on a platform started by ``capstan up`` (separate processes:
gateway, services, the inference agent running replicas in sandboxes), a service group's version runs a
custom command, a small HTTP server that answers ``/v1/chat/completions`` after ``hold_ms`` and names
the replica that answered. Real concurrent calls through the gateway's OpenAI route (with a service key)
fill the replica's per-replica concurrency limit and wait in the version's queue; the gateway publishes
that load (in flight and queued, ``capstan_serving_load``), the inference service's autoscaler scales the
version up to its max at a 100% utilisation target, the new replicas become Ready and serve calls. Then
the load drops to one caller and it scales back down to min, the retired replicas drained. Nothing is
written to the load bucket by hand.

Every call must succeed: calls over the concurrency limit wait in the version's queue (larger than the
number of client threads, with a timeout far above the wait), so no 429 is expected either; a 503 right
after the deploy or the scale-up would be a routing-table miss.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections import Counter

import httpx
import pytest

from .platform_harness import Platform, wait_service

pytestmark = [pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
              pytest.mark.timeout(600)]

# The replica: standard library only (it runs in the sandbox with the system's python3). It answers on
# $PORT, holds each call ``hold_ms`` and says which replica answered (CAPSTAN_REPLICA_ID, set by the agent).
UPSTREAM = r'''
import http.server, json, os, socketserver, time

REPLICA = os.environ.get("CAPSTAN_REPLICA_ID", "?")


class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the gateway's pooled client expects

    def _answer(self, code, doc):
        body = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._answer(200, {"status": "ok"} if self.path == "/health" else {"error": "no"})

    def do_POST(self):
        doc = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)) or b"{}")
        if self.path != "/v1/chat/completions":
            return self._answer(404, {"error": {"message": "no such route"}})
        time.sleep(float(doc.get("hold_ms", 0)) / 1000)
        self._answer(200, {
            "id": "chatcmpl-" + os.urandom(6).hex(), "object": "chat.completion", "created": int(time.time()),
            "model": doc.get("model"), "replica": REPLICA,
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                         "message": {"role": "assistant", "content": "served by " + REPLICA}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}})

    def log_message(self, *args):
        pass


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


print("replica", REPLICA, "listening on", os.environ["PORT"], flush=True)
Server(("0.0.0.0", int(os.environ["PORT"])), H).serve_forever()
'''

LIMIT = 2  # per-replica max concurrency
CLIENTS = 7  # > LIMIT x max: every replica stays full while the load runs
HOLD_MS = 250
MAX = 3
COOLDOWN_S = 4
TARGET = 100  # % of the per-replica max concurrency: scale when the replicas are full and calls wait


class Load:
    """``clients`` threads calling the chat route (``pause_s`` between a thread's calls); each answer's
    replica and every failure kept."""

    def __init__(self, url: str, secret: str, sid: str, clients: int = CLIENTS, pause_s: float = 0.0) -> None:
        self.url, self.secret, self.sid, self.pause_s = url, secret, sid, pause_s
        self.by_replica: Counter[str] = Counter()
        self.failed: list[str] = []
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        body = {"model": self.sid, "hold_ms": HOLD_MS, "messages": [{"role": "user", "content": "hello"}]}
        with httpx.Client(headers={"Authorization": f"Bearer {self.secret}"}, timeout=90) as c:
            while not self._stop.is_set():
                try:
                    r = c.post(self.url, json=body)
                    if r.status_code != 200:
                        raise AssertionError(f"{r.status_code} {r.text[:300]}")
                    doc = r.json()
                    assert doc["choices"][0]["message"]["content"] == f"served by {doc['replica']}", doc
                    with self.lock:
                        self.by_replica[doc["replica"]] += 1
                except Exception as exc:  # noqa: BLE001 - each failure is what the test counts
                    with self.lock:
                        self.failed.append(repr(exc))
                self._stop.wait(self.pause_s)

    def check(self) -> None:
        assert not self.failed, self.failed[:5]

    def wait_for(self, replica: str, n: int, timeout: float = 30) -> None:
        """Until ``replica`` has answered ``n`` more calls."""
        with self.lock:
            want = self.by_replica[replica] + n
        deadline = time.monotonic() + timeout
        while True:
            self.check()
            with self.lock:
                if self.by_replica[replica] >= want:
                    return
            assert time.monotonic() < deadline, (replica, dict(self.by_replica))
            time.sleep(0.05)

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(120)

    def __exit__(self, *exc: object) -> None:
        self.stop()


def test_hpa_scales_up_under_real_load_and_back_down_when_it_stops(platform: Platform) -> None:
    started = time.monotonic()
    model = platform.data_dir / "storage" / "models" / "upstream"
    model.mkdir(parents=True)
    (model / "serve.py").write_text(UPSTREAM)
    # readable by the replica's sandbox uid whatever this process's umask (`capstan up` run in-process
    # by an earlier test leaves 077)
    os.chmod(model, 0o755)
    os.chmod(model / "serve.py", 0o644)
    api = platform.client()
    spec = {"runtime": "custom", "command": "exec python3 /data/model/serve.py",
            "model": {"kind": "path", "path": "models/upstream"}, "port": 8601, "replicas": 1,
            "resources": {"cpu": 0.25, "memory_gib": 0.25}, "resource_group_id": platform.default_rg,
            "grace_period_s": 5, "probes": {"readiness": {"kind": "http", "path": "/health", "period_s": 1}},
            "rate_limit": {"kind": "concurrency", "value": LIMIT, "queue_size": 64, "queue_timeout_ms": 60_000}}
    r = api.post("/api/v1/services", json={"name": "hpa-load", "generate_key": True, "spec": spec})
    assert r.status_code == 201, r.text
    sid, secret, vid = r.json()["id"], r.json()["created_key"]["secret"], r.json()["versions"][0]["id"]
    r = api.put(f"/api/v1/services/{sid}/autoscaling", json={"version_id": vid, "autoscaling": {
        "mode": "hpa", "metric": "concurrency", "target": TARGET, "min": 1, "max": MAX, "cooldown_s": COOLDOWN_S}})
    assert r.status_code == 200, r.text
    first = wait_service(api, sid, lambda s: s["running_replicas"] == 1, "the first replica ready",
                         timeout=120)["instances"][0]["id"]
    deployed = time.monotonic()

    url = f"{platform.api}/{sid}/v1/chat/completions"
    with Load(url, secret, sid) as load:
        # the first replica is full and 5 calls wait (7 / LIMIT = 350% against 100%): 4 wanted, MAX set
        up = wait_service(api, sid, lambda s: s["versions"][0]["replicas"] == MAX and s["running_replicas"] == MAX,
                          f"{MAX} replicas ready under load", timeout=60, check=load.check)
        serving = {i["id"] for i in up["instances"] if i["state"] == "Ready"}
        assert first in serving and len(serving) == MAX, up["instances"]
        for rid in serving:  # the new replicas serve calls
            load.wait_for(rid, 5)
        scaled_up = time.monotonic()
    assert load.failed == [], load.failed[:5]
    assert set(load.by_replica) <= serving, (load.by_replica, serving)

    # the load drops to two callers, each in flight half of the time (about half of one replica's limit):
    # after the cooldown the version goes back to min; the replicas it retires were serving calls (a
    # caller that finds the first replica busy goes to another), they are drained first and no call is lost
    with Load(url, secret, sid, clients=2, pause_s=HOLD_MS / 1000) as trickle:
        down = wait_service(api, sid, lambda s: s["versions"][0]["replicas"] == 1 and len(s["instances"]) == 1
                            and s["running_replicas"] == 1, "back to one replica once the load stops", timeout=120,
                            check=trickle.check)
        trickle.wait_for(down["instances"][0]["id"], 5)
    scaled_down = time.monotonic()
    assert trickle.failed == [], trickle.failed[:5]
    assert len(trickle.by_replica) > 1, trickle.by_replica  # calls on replicas that were then retired
    assert down["versions"][0]["autoscaling"]["mode"] == "hpa"

    # the gateway's monitoring counted the same calls: every one succeeded, none throttled (429) or failed
    calls = sum(load.by_replica.values()) + sum(trickle.by_replica.values())
    deadline = time.monotonic() + 30
    while True:  # each gateway writes its samples every 2 s
        points = api.get(f"/api/v1/services/{sid}/metrics?minutes=10").json()["points"]
        seen = {k: sum(p[k] for p in points) for k in ("received", "succeeded", "failed", "throttled")}
        if seen["received"] >= calls:
            break
        assert time.monotonic() < deadline, (seen, calls)
        time.sleep(0.5)
    assert seen == {"received": calls, "succeeded": calls, "failed": 0, "throttled": 0}, (seen, calls)

    records = api.get(f"/api/v1/services/{sid}/records").json()["items"]
    auto = [x["message"] for x in records if x["by"] == "autoscaler"][::-1]  # oldest first
    counts = [int(m.split("replicas set to ")[1].split()[0]) for m in auto]
    assert counts and counts[-1] == 1 and MAX in counts, auto
    peak = counts.index(MAX)
    assert all(a < b for a, b in zip([1, *counts[:peak]], counts[:peak + 1], strict=True)), auto  # up, step by step
    # then down to min (in one step or two: a figure sampled as the load fell may still ask for two)
    assert all(a >= b for a, b in zip(counts[peak:], counts[peak + 1:], strict=False)), auto
    print(f"\nHPA under load: deploy {deployed - started:.1f}s, scale-up and serving {scaled_up - deployed:.1f}s, "
          f"scale-down {scaled_down - scaled_up:.1f}s; calls per replica {dict(load.by_replica)}, then "
          f"{dict(trickle.by_replica)}; records {auto}")
