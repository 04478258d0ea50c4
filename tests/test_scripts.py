"""Every script in scripts/ runs: its ``--quick`` mode, as a user would start it.

Scripts use the installed package (no sys.path edits, nothing from tests/), so they are run
from a neutral folder with a plain environment. Quick modes that take more than about a
minute of CPU time are marked slow (wall time on a shared machine can be several times that). scripts/bench_albat.py is tested by its owner.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"

QUICK = [
    pytest.param("bench_faiss.py", "recall@k", id="bench_faiss"),
    pytest.param("bench_ivfpq.py", "recall", id="bench_ivfpq"),
    pytest.param("bench_trainer.py", "speed-up of caching", id="bench_trainer"),
    pytest.param("gpu_check.py", "gpu_check: 15 measurements", id="gpu_check"),
    pytest.param("shapes_personalize.py", "lora_trait_mean", id="shapes_personalize"),
    pytest.param("bench_selection.py", "Mean over subjects", id="bench_selection"),
    pytest.param("bench_racing.py", "| checkered_square |", id="bench_racing"),
    pytest.param("bench_generated_pool.py", "generated - real over 1 pairs", id="bench_generated_pool"),
    pytest.param("bench_example_job.py", "again: ", id="bench_example_job"),
    pytest.param("bench_compare.py", "Convergence", id="bench_compare", marks=pytest.mark.slow),
    pytest.param("bench_jobs.py", "kill_heartbeat_only", id="bench_jobs", marks=pytest.mark.slow),
    pytest.param("take_screenshots.py", "quick: page loaded and example applied", id="take_screenshots",
                 marks=[pytest.mark.browser, pytest.mark.skipif(shutil.which("chromium") is None,
                                                                 reason="Debian's chromium is not installed")]),
]


def test_every_script_is_covered():
    # bench_albat.py and gpu_shapes_build.py run their --quick modes in their own test files;
    # cpu_by_process.py is a module of take_screenshots.py, with its own test file
    covered = {p.values[0] for p in QUICK} | {"bench_albat.py", "gpu_shapes_build.py", "cpu_by_process.py"}
    assert {p.name for p in SCRIPTS.glob("*.py")} <= covered


def test_scripts_use_the_installed_package():
    for script in SCRIPTS.glob("*.py"):
        if script.name == "bench_albat.py":
            continue
        text = script.read_text()
        for needle in ("sys.path", "conftest", "from tiny_model", "import tiny_model"):
            assert needle not in text, f"{script.name}: {needle}"
        if "__main__" in text:  # a script, not a module of one (cpu_by_process.py)
            assert "--quick" in text, f"{script.name} has no --quick mode"


@pytest.mark.parametrize(("script", "expected"), QUICK)
def test_quick_mode_runs(script, expected, tmp_path):
    if script in ("shapes_personalize.py", "bench_selection.py", "bench_compare.py", "bench_racing.py",
                  "bench_generated_pool.py", "bench_example_job.py"):
        from bat_app.paths import assets_dir

        if not (assets_dir() / "shapes" / "backbone" / "model_index.json").is_file():
            pytest.skip("shapes backbone not built")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env |= {"BAT_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1", "BAT_TORCH_THREADS": "1"}
    args = ["--threads", "1"] if script in ("bench_trainer.py", "shapes_personalize.py", "bench_faiss.py",
                                            "bench_example_job.py") else []
    args += ["--shortlist", "5"] if script == "bench_racing.py" else []
    out = subprocess.run([sys.executable, str(SCRIPTS / script), "--quick", *args], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert expected in out.stdout + out.stderr
