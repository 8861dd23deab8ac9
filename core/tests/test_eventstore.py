"""Contract tests of the event store, against a real nats-server started per test."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest
from nats.aio.client import Client
from nats.js.errors import APIError

from capstan_core.errors import Conflict, InvalidArgument
from capstan_core.events import Event, NewerEventVersion, UnknownEvent, decode, encode, event, upcaster
from capstan_core.eventstore import EventStore, PoisonCommit, decode_commit, encode_commit
from capstan_core.metrics import SKIPPED_ON_LOAD, Counters
from capstan_core.streams import EVENTS_STREAM, MAX_COMMIT_BYTES, ensure_streams, event_subject
from capstan_core.testing import poison_messages, publish_poison


@event("TestThingCreated", version=1)
class ThingCreated(Event):
    name: str


@event("TestThingRenamed", version=2)
class ThingRenamed(Event):
    """v1 had ``new`` ; v2 calls it ``name`` and adds ``reason``."""

    name: str
    reason: str


@upcaster("TestThingRenamed", from_version=1)
def _renamed_v1_v2(data: dict) -> dict:
    return {"name": data["new"], "reason": "unknown"}


class EventStoreContract:
    """The store's contract. Subclass with a ``store`` fixture for each backend."""

    async def test_append_then_load_in_order(self, store: EventStore) -> None:
        subj = event_subject("thing", "t1")
        r1 = await store.append(subj, [ThingCreated(name="a")], expected_seq=0)
        r2 = await store.append(subj, [ThingRenamed(name="b", reason="x"), ThingRenamed(name="c", reason="y")], expected_seq=r1.seq)
        events, last = await store.load(subj)
        assert [type(e.event) for e in events] == [ThingCreated, ThingRenamed, ThingRenamed]
        assert [e.event.name for e in events] == ["a", "b", "c"]  # type: ignore[attr-defined]
        assert last == r2.seq
        assert [e.seq for e in events] == [r1.seq, r2.seq, r2.seq]
        assert [e.index for e in events] == [0, 0, 1]

    async def test_load_of_unknown_aggregate_is_empty(self, store: EventStore) -> None:
        assert await store.load(event_subject("thing", "nope")) == ([], 0)

    async def test_expected_sequence_conflict_is_typed_and_appends_nothing(self, store: EventStore) -> None:
        subj = event_subject("thing", "t2")
        r1 = await store.append(subj, [ThingCreated(name="a")], expected_seq=0)
        with pytest.raises(Conflict):
            await store.append(subj, [ThingCreated(name="dup")], expected_seq=0)
        await store.append(subj, [ThingRenamed(name="b", reason="")], expected_seq=r1.seq)
        with pytest.raises(Conflict):
            await store.append(subj, [ThingRenamed(name="stale", reason="")], expected_seq=r1.seq)
        events, _ = await store.load(subj)
        assert [e.event.name for e in events] == ["a", "b"]  # type: ignore[attr-defined]

    async def test_other_subjects_do_not_affect_expected_sequence(self, store: EventStore) -> None:
        a, b = event_subject("thing", "a"), event_subject("thing", "b")
        ra = await store.append(a, [ThingCreated(name="a")], expected_seq=0)
        await store.append(b, [ThingCreated(name="b")], expected_seq=0)
        await store.append(a, [ThingRenamed(name="a2", reason="")], expected_seq=ra.seq)

    async def test_retry_with_same_msg_id_appends_nothing_more(self, store: EventStore) -> None:
        subj = event_subject("thing", "t3")
        r1 = await store.append(subj, [ThingCreated(name="a")], expected_seq=0, msg_id="cmd-1")
        r2 = await store.append(subj, [ThingCreated(name="a")], expected_seq=0, msg_id="cmd-1")
        assert r2.duplicate and r2.seq == r1.seq
        events, _ = await store.load(subj)
        assert len(events) == 1

    async def test_concurrent_writers_exactly_one_wins(self, store: EventStore) -> None:
        subj = event_subject("thing", "race")
        r0 = await store.append(subj, [ThingCreated(name="0")], expected_seq=0)
        results = await asyncio.gather(
            *[store.append(subj, [ThingRenamed(name=str(i), reason="")], expected_seq=r0.seq) for i in range(10)],
            return_exceptions=True,
        )
        assert sum(1 for r in results if not isinstance(r, Exception)) == 1
        assert all(isinstance(r, Conflict) for r in results if isinstance(r, Exception))

    async def test_upcasting_old_versions(self, store: EventStore, nc: Client) -> None:
        # A v1 event as an older service would have written it.
        subj = event_subject("thing", "old")
        old = {"t": 1, "events": [{"type": "TestThingRenamed", "version": 1, "data": {"new": "z"}}]}
        import json

        await nc.jetstream().publish(subj, json.dumps(old).encode(), stream=EVENTS_STREAM)
        events, _ = await store.load(subj)
        assert events[0].event == ThingRenamed(name="z", reason="unknown")

    async def test_unknown_event_types_are_skippable(self, store: EventStore, nc: Client) -> None:
        subj = event_subject("thing", "future")
        body = {"t": 1, "events": [{"type": "FromTheFuture", "version": 3, "data": {"x": 1}}]}
        import json

        await nc.jetstream().publish(subj, json.dumps(body).encode(), stream=EVENTS_STREAM)
        events, _ = await store.load(subj)
        assert isinstance(events[0].event, UnknownEvent) and events[0].event.type_name == "FromTheFuture"

    async def test_loads_see_appends_by_another_store_instance(self, store: EventStore, nc: Client) -> None:
        subj = event_subject("thing", "shared")
        other = EventStore(nc.jetstream())
        r1 = await store.append(subj, [ThingCreated(name="a")], expected_seq=0)
        assert len((await other.load(subj))[0]) == 1  # warms other's cache
        await store.append(subj, [ThingRenamed(name="b", reason="")], expected_seq=r1.seq)
        events, last = await other.load(subj)
        assert len(events) == 2 and last > r1.seq

    async def test_load_skips_an_undecodable_commit_so_commands_still_work(self, store: EventStore, nc: Client) -> None:
        """Every kind of poison on an aggregate's subject: load skips it the same way every time, reports
        the subject's real last sequence (so the next append lands), and counts it."""
        subj = event_subject("thing", "poisoned")
        r1 = await store.append(subj, [ThingCreated(name="a")], expected_seq=0)
        poisons = poison_messages(("TestThingCreated", {"name": "b"}), ("TestThingCreated", {"name": ["not", "str"]}))
        for poison in poisons:
            await publish_poison(nc.jetstream(), subj, poison)
        fresh = EventStore(nc.jetstream(), counters=Counters())
        events, last = await fresh.load(subj)
        assert [e.seq for e in events] == [r1.seq] and last == await store.last_seq()
        r2 = await fresh.append(subj, [ThingRenamed(name="c", reason="")], expected_seq=last)
        events, _ = await fresh.load(subj)
        assert [e.seq for e in events] == [r1.seq, r2.seq]
        assert fresh._counters.get(SKIPPED_ON_LOAD) == len(poisons)
        assert {s.labels["kind"] for s in fresh._counters.samples()} == {p.kind for p in poisons}

    async def test_a_commit_over_the_size_limit_is_refused_by_the_store_and_the_stream(
        self, store: EventStore, nc: Client
    ) -> None:
        subj = event_subject("thing", "big")
        with pytest.raises(InvalidArgument, match="too large to record"):
            await store.append(subj, [ThingCreated(name="x" * MAX_COMMIT_BYTES)], expected_seq=0)
        with pytest.raises(APIError, match="maximum"):
            await nc.jetstream().publish(subj, b"x" * (MAX_COMMIT_BYTES + 1), stream=EVENTS_STREAM)
        assert await store.load(subj) == ([], 0)

    async def test_trace_context_rides_in_headers(self, store: EventStore) -> None:
        from opentelemetry.sdk.trace import TracerProvider

        tracer = TracerProvider().get_tracer("t")
        subj = event_subject("thing", "traced")
        with tracer.start_as_current_span("cmd") as span:
            await store.append(subj, [ThingCreated(name="a")], expected_seq=0)
            trace_id = format(span.get_span_context().trace_id, "032x")
        events, _ = await store.load(subj)
        assert trace_id in events[0].headers.get("traceparent", "")


class TestJetStreamEventStore(EventStoreContract):
    @pytest.fixture
    async def store(self, nc: Client) -> EventStore:
        js = nc.jetstream()
        await ensure_streams(js)
        return EventStore(js)


def test_event_codec_roundtrip() -> None:
    ev = ThingCreated(name="ü")
    assert decode(encode(ev)) == ev
    assert b'"TestThingCreated"' in encode_commit([ev], 5)


def test_registering_a_name_twice_is_refused() -> None:
    with pytest.raises(ValueError):

        @event("TestThingCreated")
        class Other(Event):
            pass


def test_commit_encoding_roundtrips_unicode_and_nested_models() -> None:
    from capstan_core.contracts.common import ResourceSpec
    from capstan_core.contracts.training import TrainingTaskSubmitted
    from capstan_core.eventstore import decode_commit

    ev = TrainingTaskSubmitted(
        task_id="train-1", name="训练-ü", resource_group_id="rsg-1", command='echo "hi"\nexit 0',
        hyperparameters={"lr": 0.5, "nested": {"a": [1, 2]}}, resources=ResourceSpec(cpu=2, gpu_type="A100", gpu=0.5),
        instance_count=2, tags={"k": "v"}, creator="bob", stop_grace_seconds=30, at_ms=5,
    )
    data = encode_commit([ev, ThingCreated(name="x")], 7)
    recs = decode_commit(3, "capstan.evt.train.train-1", data, {})
    assert [r.event for r in recs] == [ev, ThingCreated(name="x")]
    assert [r.time_ms for r in recs] == [7, 7] and [r.index for r in recs] == [0, 1]


def test_fields_a_newer_writer_added_are_dropped_by_an_older_reader() -> None:
    newer = {"type": "TestThingCreated", "version": 1, "data": {"name": "a", "colour": "red"}}
    assert decode(newer) == ThingCreated(name="a")
    with pytest.raises(ValueError):  # building one in code still refuses an unknown field
        ThingCreated(name="a", colour="red")  # type: ignore[call-arg]


async def test_an_older_stream_gets_the_size_limit_at_start(nc: Client) -> None:
    js = nc.jetstream()
    await ensure_streams(js)
    info = await js.stream_info(EVENTS_STREAM)
    await js.update_stream(dataclasses.replace(info.config, max_msg_size=-1))
    await ensure_streams(js)
    assert (await js.stream_info(EVENTS_STREAM)).config.max_msg_size == MAX_COMMIT_BYTES


def test_a_known_type_at_a_newer_version_is_refused_not_guessed() -> None:
    with pytest.raises(NewerEventVersion, match="TestThingRenamed v3 is newer than this service reads \\(v2\\)"):
        decode({"type": "TestThingRenamed", "version": 3, "data": {"name": "a", "reason": "b"}})
    data = json.dumps({"t": 1, "events": [{"type": "TestThingRenamed", "version": 3, "data": {}}]}).encode()
    with pytest.raises(PoisonCommit) as e:
        decode_commit(1, "capstan.evt.thing.x", data, {})
    assert e.value.kind == "newer_version"


@pytest.mark.parametrize(
    ("payload", "kind"),
    [
        (b"\xff\xfe not utf-8", "undecodable"),
        (b"[1, 2]", "undecodable"),
        (b'{"t": "yesterday", "events": [{"type": "TestThingCreated", "data": {"name": "a"}}]}', "undecodable"),
        (b'{"t": 1, "events": []}', "undecodable"),
        (b'{"t": 1, "events": [42]}', "undecodable"),
        (b"[" * 100_000 + b"]" * 100_000, "undecodable"),
        (b'{"t": 1, "events": [{"type": "TestThingCreated", "version": "1", "data": {"name": "a"}}]}', "invalid"),
        (b'{"t": 1, "events": [{"type": "TestThingCreated", "data": {"name": null}}]}', "invalid"),
        (b'{"t": 1, "events": [{"type": "TestThingRenamed", "version": 1, "data": {}}]}', "invalid"),
    ],
    ids=["not-utf8", "a-list", "time-not-int", "no-events", "event-not-object", "nested-deep", "version-str",
         "null-field", "upcaster-fails"],
)
def test_anything_that_is_not_a_commit_is_a_poison_commit(payload: bytes, kind: str) -> None:
    with pytest.raises(PoisonCommit) as e:
        decode_commit(1, "capstan.evt.thing.x", payload, {})
    assert e.value.kind == kind


def test_unknown_types_stay_skippable_whatever_their_data() -> None:
    ev = decode({"type": "FromTheFuture", "version": 1, "data": {"type_name": "spoof", "type_version": "x"}})
    assert isinstance(ev, UnknownEvent) and ev.type_name == "FromTheFuture" and ev.type_version == 1
