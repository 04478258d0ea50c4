"""Where a machine's CPU time goes during a time window, by kind of process (Linux /proc).

Used by take_screenshots.py --cpu to say which process (the job, the app server, the browser,
anything else on the machine) took the CPU while an example job ran. A thread samples every
process's cumulative CPU time; a window's figure per process is its last sample inside the
window minus its last sample before it (0 for a process born inside), so processes that end
inside the window (a job's runner) count up to their last sample.
"""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def _read(pid: str) -> tuple[str, float] | None:
    """(command line, CPU seconds used so far) of one process; None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state is field 0
    return cmdline or stat[stat.index("(") + 1:stat.rindex(")")], (int(fields[11]) + int(fields[12])) / TICKS


class CpuSampler:
    """Samples every process's CPU time until stopped; ``window`` sums it per group.

    ``classify(pid, cmdline)`` names a process's group (e.g. "job", "app", "browser", "other").
    """

    def __init__(self, classify, interval_s: float = 0.5):
        self.classify, self.interval_s = classify, interval_s
        self.samples: dict[int, list[tuple[float, float]]] = defaultdict(list)  # pid -> [(t, cpu)]
        self.groups: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="cpu-sampler")

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> None:
        now = time.perf_counter()
        for pid in filter(str.isdigit, os.listdir("/proc")):
            read = _read(pid)
            if read is None:
                continue
            cmdline, cpu = read
            key = int(pid)
            if key not in self.groups or self.samples[key] and cpu < self.samples[key][-1][1]:  # a reused pid
                self.samples[key] = []
                self.groups[key] = self.classify(key, cmdline)
            self.samples[key].append((now, cpu))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def window(self, start: float, end: float) -> dict[str, float]:
        """CPU seconds per group between two ``time.perf_counter()`` readings, largest first."""
        total: dict[str, float] = defaultdict(float)
        for pid, series in self.samples.items():
            inside = [cpu for t, cpu in series if start <= t <= end]
            if not inside:
                continue
            before = [cpu for t, cpu in series if t < start]
            total[self.groups[pid]] += inside[-1] - (before[-1] if before else 0.0)
        return {group: round(cpu, 1) for group, cpu in sorted(total.items(), key=lambda kv: -kv[1])}
