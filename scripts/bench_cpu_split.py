"""Where the CPU goes while ``bench_platform.py`` runs measure 3 (200 trivial tasks from 16 clients):
CPU-seconds per platform process, read from ``/proc/<pid>/stat`` at the start and the end of the
measure, and the rest of the machine's busy time (``/proc/stat``), which is the short-lived processes:
the instance runners, their ``ip``/``nft`` calls, bwrap and the launchers. Linux only; run it alone.

    .venv/bin/python scripts/bench_cpu_split.py
"""

from __future__ import annotations

import os
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


def main() -> int:
    log = Path(tempfile.mkdtemp(prefix="capstan-cpu-split-")) / "bench.log"
    with log.open("w") as out:
        bench = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "bench_platform.py"), "--skip", "1,2,4,5"],
                                 stdout=out, stderr=subprocess.STDOUT)
    while "3. throughput" not in log.read_text():
        if bench.poll() is not None:
            print(log.read_text())
            return 1
        time.sleep(0.1)
    before, busy0, t0 = per_process(), busy_ticks(), time.monotonic()
    while bench.poll() is None and "tasks/s" not in log.read_text():
        time.sleep(0.2)
    after, busy1, t1 = per_process(), busy_ticks(), time.monotonic()
    bench.wait()
    hz = os.sysconf("SC_CLK_TCK")
    split: dict[str, int] = {}
    for pid, (cmd, ticks) in after.items():
        name = next((n for n in NAMES if n in cmd), None)
        if name is not None:
            split[name] = split.get(name, 0) + ticks - (before[pid][1] if pid in before else 0)
    total = (busy1 - busy0) / hz
    tasks = 200
    print(f"measure 3: {t1 - t0:.1f} s, machine busy {total:.1f} CPU-s ({total / tasks * 1000:.0f} ms per task)")
    for name, ticks in sorted(split.items(), key=lambda kv: -kv[1]):
        print(f"  {name:24s} {ticks / hz:6.1f} CPU-s  {ticks / hz / tasks * 1000:5.0f} ms/task")
    rest = total - sum(split.values()) / hz
    print(f"  {'short-lived processes':24s} {rest:6.1f} CPU-s  {rest / tasks * 1000:5.0f} ms/task "
          "(runners, ip/nft, bwrap, launchers)")
    print(next(line for line in log.read_text().splitlines() if "tasks/s" in line).strip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
