"""scripts/cpu_by_process.py: the CPU a process took inside a window is counted for its group,
also when the process ends inside the window, and nothing outside the window is."""

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# waits for a line, then burns 0.6 s of CPU and exits; the marker names its group
BURNER = ("# cpu-test-burner\nimport sys, time\nsys.stdin.readline()\n"
          "end = time.process_time() + 0.6\nwhile time.process_time() < end: pass\n")


def _sampler_module():
    spec = importlib.util.spec_from_file_location("cpu_by_process", REPO / "scripts" / "cpu_by_process.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_burning_process_is_counted_in_its_window_only():
    sampler = _sampler_module().CpuSampler(
        lambda pid, cmdline: "burner" if "cpu-test-burner" in cmdline else "rest", interval_s=0.05)
    with sampler:
        proc = subprocess.Popen([sys.executable, "-c", BURNER], stdin=subprocess.PIPE)
        time.sleep(0.5)  # started and waiting: its start-up CPU falls before both windows
        quiet_start = time.perf_counter()
        time.sleep(0.3)
        start = quiet_end = time.perf_counter()
        proc.communicate(b"go\n")  # it exits inside the window: its last samples stand for it
        time.sleep(0.2)
        end = time.perf_counter()
    assert 0.3 <= sampler.window(start, end).get("burner", 0.0) <= 1.0
    assert sampler.window(quiet_start, quiet_end).get("burner", 0.0) <= 0.05
