"""Where the CPU goes while ``bench_platform.py`` runs measure 3 (200 trivial tasks from 16 clients):
CPU-seconds per platform process, read from ``/proc/<pid>/stat`` at the start and the end of the
measure, and the rest of the machine's busy time (``/proc/stat``), which is the short-lived processes:
the instance runners, their ``ip``/``nft`` calls, bwrap and the launchers. Linux only; run it alone.

    .venv/bin/python scripts/bench_cpu_split.py
    .venv/bin/python scripts/bench_cpu_split.py --spy /tmp/spy   # and a py-spy profile of each service
    .venv/bin/python scripts/bench_cpu_split.py --measure 1      # measure 1 instead (400 submits)

With ``--spy DIR`` (py-spy installed), each long-lived platform process is sampled during the measure
and its collapsed stacks written to ``DIR/<name>.txt``; the top functions by own time are printed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NAMES = ("capstan-scheduler", "capstan-trainer serve", "capstan-registry", "capstan-inference", "capstan-gateway",
         "nats-server", "trainer-agent", "bench_platform")


def per_process() -> dict[int, tuple[str, int]]:
    """pid -> (command line, user + system clock ticks)."""
    out = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        out[int(p)] = (cmd, int(fields[11]) + int(fields[12]))
    return out


def busy_ticks() -> int:
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(v) - v[3] - v[4]  # all but idle and iowait


def spy(pids: dict[int, tuple[str, int]], out_dir: Path) -> list[tuple[str, subprocess.Popen[bytes]]]:
    out_dir.mkdir(parents=True, exist_ok=True)
    spies = []
    for pid, (cmd, _) in pids.items():
        name = next((n for n in NAMES if n in cmd), None)
        if name is None or name in ("nats-server", "bench_platform"):
            continue
        out = out_dir / (name.replace(" ", "-") + ".txt")
        spies.append((name, subprocess.Popen([shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid), "--format", "raw", "--rate", "50",
                                              "--output", str(out), "--nonblocking"],
                                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
    return spies


def top(path: Path, n: int = 12) -> list[tuple[int, str]]:
    """The functions with the most samples anywhere on their stacks (inclusive), from collapsed stacks."""
    counts: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, num = line.rpartition(" ")
        total += int(num)
        for frame in set(stack.split(";")):
            counts[frame] = counts.get(frame, 0) + int(num)
    return [(total, "(all)")] + sorted(((c, f) for f, c in counts.items()), reverse=True)[1:n]


def main() -> int:
    spy_dir = Path(sys.argv[sys.argv.index("--spy") + 1]) if "--spy" in sys.argv else None
    measure = sys.argv[sys.argv.index("--measure") + 1] if "--measure" in sys.argv else "3"
    # what to run, where it starts and ends in the bench's output, how many units it does
    skip, start, end, units, unit = {
        "1": ("2,3,4,5", "1. submissions", "submits/s", 400, "submit"),
        "3": ("1,2,4,5", "3. throughput", "tasks/s", 200, "task"),
    }[measure]
    log = Path(tempfile.mkdtemp(prefix="capstan-cpu-split-")) / "bench.log"
    with log.open("w") as out:
        bench = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "bench_platform.py"), "--skip", skip, "--batch", "0"],
                                 stdout=out, stderr=subprocess.STDOUT)
    while start not in log.read_text():
        if bench.poll() is not None:
            print(log.read_text())
            return 1
        time.sleep(0.1)
    before, busy0, t0 = per_process(), busy_ticks(), time.monotonic()
    spies = spy(before, spy_dir) if spy_dir is not None else []
    while bench.poll() is None and end not in log.read_text():
        time.sleep(0.2)
    after, busy1, t1 = per_process(), busy_ticks(), time.monotonic()
    for _, p in spies:
        p.send_signal(2)
    for _, p in spies:
        p.wait()
    bench.wait()
    hz = os.sysconf("SC_CLK_TCK")
    split: dict[str, int] = {}
    for pid, (cmd, ticks) in after.items():
        name = next((n for n in NAMES if n in cmd), None)
        if name is not None:
            split[name] = split.get(name, 0) + ticks - (before[pid][1] if pid in before else 0)
    total = (busy1 - busy0) / hz
    print(f"measure {measure}: {t1 - t0:.1f} s, machine busy {total:.1f} CPU-s ({total / units * 1000:.1f} ms per {unit})")
    for name, ticks in sorted(split.items(), key=lambda kv: -kv[1]):
        print(f"  {name:24s} {ticks / hz:6.1f} CPU-s  {ticks / hz / units * 1000:6.1f} ms/{unit}")
    rest = total - sum(split.values()) / hz
    print(f"  {'short-lived processes':24s} {rest:6.1f} CPU-s  {rest / units * 1000:6.1f} ms/{unit} "
          "(runners, ip/nft, bwrap, launchers)")
    print(next(line for line in log.read_text().splitlines() if end in line).strip())
    for name, _ in spies:
        assert spy_dir is not None
        path = spy_dir / (name.replace(" ", "-") + ".txt")
        if path.exists():
            print(f"\n{name}: frames with the most samples (inclusive)")
            for count, frame in top(path):
                print(f"  {count:6d}  {frame[:150]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
