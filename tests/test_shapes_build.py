"""The Shapes build pipeline, run end to end at toy sizes (the GPU script on the CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bat_app.shapes.build import BuildConfig, config_from_json, rendered

ROOT = Path(__file__).resolve().parents[1]


def test_rendered_data_is_cached_and_identical(tmp_path):
    first = rendered(tmp_path, 3, 12, pretraining=False)
    assert (tmp_path / "data-seed3-n12-full.npz").exists()
    again = rendered(tmp_path, 3, 12, pretraining=False)
    assert (first[0] == again[0]).all() and first[1] == again[1] and first[2] == again[2]


def test_config_round_trips_through_the_recorded_strings(tmp_path):
    cfg = BuildConfig(out=tmp_path / "o", work=tmp_path / "w", device="cuda", unet_steps=1234,
                      unet_lr=7e-4, time_budget_min=4.5)
    path = tmp_path / "build.json"
    path.write_text(json.dumps({k: str(v) for k, v in cfg.__dict__.items()}))
    again = config_from_json(path)
    assert again == cfg
    path.write_text(json.dumps({"unet_stepz": 3}))
    with pytest.raises(ValueError, match="unknown build settings \\['unet_stepz'\\]"):
        config_from_json(path)


def test_gpu_build_script_builds_a_loadable_backbone_at_toy_size(tmp_path):
    """Its --quick mode (test_scripts.py leaves this script to this test)."""
    work = tmp_path / "work"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_shapes_build.py"), "--quick",
                    "--work", str(work), "--evals", "2"], check=True, cwd=tmp_path,
                   env={**os.environ, "BAT_TORCH_THREADS": "1"}, timeout=600)
    out = work / "shapes"
    record = json.loads((out / "gpu_build.json").read_text())
    assert record["steps"] == {"vae": 10, "classifier": 10, "clip": 10, "unet": 10}
    cfg = config_from_json(out / "build.json")
    assert (cfg.unet_steps, cfg.unet_batch, cfg.n_train) == (10, 8, 64)
    meta = json.loads((out / "backbone" / "bat_shapes.json").read_text())
    assert meta["unet_train"][0]["steps_done"] == 10
    assert [h["step"] for h in meta["eval_history"]] == [5, 10]

    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(out / "backbone")
    image = pipe("a red circle on a blue background", num_inference_steps=2, height=32, width=32,
                 output_type="np").images[0]
    assert image.shape == (32, 32, 3)
    assert json.loads((out / "classifier" / "classifier.json").read_text())["steps"] == 10
