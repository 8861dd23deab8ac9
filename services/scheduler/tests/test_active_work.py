"""The cycle's copy of the active workloads follows the read model by reading only the rows changed since."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, update

from capstan_scheduler.active_work import ActiveWork
from capstan_scheduler.tables import allocations, metadata, workloads


def _row(wid: str, seq: int, status: str = "queued", group: str = "rg-a") -> dict[str, Any]:
    return dict(id=wid, kind="training", resource_group_id=group, status=status, cpu=1.0, memory_gib=1.0, gpu_type="",
                gpu=0.0, instance_count=1, submitted_seq=seq, submitted_at_ms=seq, ended=False, subject_seq=0,
                trace_parent="", reason="", tags="{}", started_at_ms=0, requeue=False, changed_seq=seq)


def test_only_changed_rows_are_read_and_the_copy_matches_the_table(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    metadata.create_all(engine)
    active = ActiveWork()
    with engine.begin() as conn:
        conn.execute(workloads.insert(), [_row("w1", 1), _row("w2", 2), _row("w3", 3, group="rg-b"),
                                          {**_row("w0", 0), "changed_seq": 0}])  # 0: written around the projection
    with engine.connect() as conn:
        assert active.refresh(conn) == 4
        assert active.refresh(conn) == 0  # nothing changed: nothing read
        rows, allocs = active.of(["rg-a"])
        assert [w["id"] for w in rows] == ["w0", "w1", "w2"] and allocs == []
    with engine.begin() as conn:  # as the projection: w1 placed (with its allocation), w2 released, w4 queued
        conn.execute(update(workloads).where(workloads.c.id == "w1").values(status="placed", changed_seq=5))
        conn.execute(allocations.insert().values(workload_id="w1", idx=0, node_id="n1", kind="training", cpu=1.0,
                                                 memory_gib=1.0, gpu_type="", gpu=0.0, cards="[]"))
        conn.execute(update(workloads).where(workloads.c.id == "w2").values(status="released", changed_seq=6))
        conn.execute(workloads.insert(), [_row("w4", 7)])
    with engine.connect() as conn:
        assert active.refresh(conn) == 3
        rows, allocs = active.of(["rg-a", "rg-b"])
        assert [(w["id"], w["status"]) for w in rows] == [("w0", "queued"), ("w1", "placed"), ("w3", "queued"),
                                                          ("w4", "queued")]
        assert [a["workload_id"] for a in allocs] == ["w1"]
    with engine.begin() as conn:  # written around the projection: only a read from scratch sees it
        conn.execute(update(workloads).where(workloads.c.id == "w3").values(ended=True, changed_seq=0))
    with engine.connect() as conn:
        assert active.refresh(conn) == 0 and [w["id"] for w in active.of(["rg-b"])[0]] == ["w3"]
        assert active.refresh(conn, reset=True) == 5 and active.of(["rg-b"]) == ([], [])


def test_objects_built_from_unchanged_rows_are_reused_and_forgotten_once_unread() -> None:
    from capstan_scheduler.snapshot import Reuse

    reuse = Reuse()
    made: list[str] = []

    def build(key: str) -> object:
        reuse.done()
        return reuse.get("item", "w1", key, lambda: made.append(key) or object())

    first = build("row v1")
    assert build("row v1") is first and made == ["row v1"]  # the same row: the same object, not made again
    second = build("row v2")
    assert second is not first and made == ["row v1", "row v2"]  # the row changed: made again
    for _ in range(Reuse.KEEP_BUILDS * 2):
        reuse.done()  # builds that do not meet it (other groups, or phases 1-2 with nothing to admit)
    assert build("row v2") is not second and made[-1] == "row v2"  # forgotten after that many builds
