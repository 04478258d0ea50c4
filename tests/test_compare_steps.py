"""The compare run's steps stage (bat_app/compare/steps.py): the earlier steps a training kept,
drawn on the preview's prompts and seeds, one picture per method; drawn once, read back after."""

from __future__ import annotations

import numpy as np
from PIL import Image

from bat_app.compare import CompareConfig, run_compare
from bat_app.compare import previews as compare_previews
from bat_app.compare import run as compare_run
from bat_app.images import load_user_images
from bat_app.preview import load_prompt_set
from bat_app.preview.step_pick import steps_picture
from bat_app.testing import TINY_RESOLUTION


def config(tiny_model_dir, tiny_pool_dir, tiny_clip_dir, step_choices: int) -> CompareConfig:
    return CompareConfig.from_dict(dict(
        token="sks", class_noun="disc", model=str(tiny_model_dir), pool=str(tiny_pool_dir),
        clip_model=str(tiny_clip_dir), methods=["none", "random"], prompt_set="object", num_prompts=1,
        seeds=[0, 1], train={"steps": 6, "lr": 5e-3, "checkpoint_every": 0, "step_choices": step_choices},
        selection={"m": 4}))


def test_the_kept_steps_are_drawn_beside_the_final_one_by_the_lanes_and_read_back(
        tiny_model_dir, tiny_pool_dir, tiny_clip_dir, subject_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(compare_run, "lane_count", lambda run, methods: 2)
    drawn = []  # (LoRA folder name) per column of samples drawn
    real_sample = compare_previews.sample_images
    monkeypatch.setattr(compare_previews, "sample_images",
                        lambda c, p, s, lora=None, **kw: drawn.append(getattr(lora, "name", None))
                        or real_sample(c, p, s, lora, **kw))
    events = []
    cfg = config(tiny_model_dir, tiny_pool_dir, tiny_clip_dir, step_choices=2)
    result = run_compare(cfg, subject_dir, tmp_path / "cmp", progress=events.append, resume=False)
    out = tmp_path / "cmp"
    # 6 steps, 2 choices: steps 4 and 5 of the last third kept, each a whole export
    for method in ("none", "random"):
        for step in (4, 5):
            folder = out / "methods" / method / "lora" / "steps" / f"step-{step:06d}"
            assert (folder / "pytorch_lora_weights.safetensors").is_file()
            assert (folder / "sks_disc_kohya.safetensors").is_file() and (folder / "README.md").is_file()
    # base, the two final columns, and the two earlier steps of each method: each drawn once
    assert sorted(d or "base" for d in drawn) == ["base", "lora", "lora", *["step-000004"] * 2, *["step-000005"] * 2]
    # the lead lane (none) reports its steps as a stage of their own; the stage itself has no method
    assert "none" in {e.method for e in events if e.stage == "steps"} <= {None, "none", "random"}
    prompt_set = load_prompt_set("object")
    texts = [p for _, p in prompt_set.prompts("sks", "disc", limit=1)] + [prompt_set.class_text("disc")]
    # the user's photos as the run checked them, on top of the picture to compare with
    photos = [u.image for u in load_user_images(subject_dir, resolution=TINY_RESOLUTION).images]
    for method in ("none", "random"):
        # the picture is the kept steps' samples and, as the last block, the method's preview column
        blocks = {step: out / "previews" / "steps" / method / f"step-{step:06d}" for step in (4, 5)}
        blocks[6] = out / "previews" / "samples" / method
        expected = steps_picture({step: [[Image.open(folder / f"p{p:02d}_s{s}.png") for s in (0, 1)]
                                         for p in range(len(texts))] for step, folder in blocks.items()},
                                 texts, 2, photos=photos)
        picture = Image.open(out / result.outputs[f"{method}:steps"])
        assert np.array_equal(np.asarray(picture.convert("RGB")), np.asarray(expected.convert("RGB")))
        earlier = np.asarray(Image.open(out / "previews" / "steps" / method / "step-000004" / "p00_s0.png"))
        final = np.asarray(Image.open(out / "previews" / "samples" / method / "p00_s0.png"))
        assert earlier.shape == final.shape and not np.array_equal(earlier, final)  # another LoRA draws it
    assert result.timings["steps"] > 0  # the cost the lanes' drawing had
    report = (out / "report.md").read_text()
    assert "## Earlier steps" in report and "![none: its steps side by side](previews/steps_none.png)" in report
    assert "- none:steps" not in report  # a picture to look at, not a download

    # a sequential rerun reads every step back: nothing drawn, same cost reported
    drawn.clear()
    monkeypatch.setattr(compare_run, "lane_count", lambda run, methods: 1)
    again = run_compare(cfg, subject_dir, out)
    assert drawn == [] and again.timings["steps"] == result.timings["steps"]
    assert again.outputs["none:steps"] == result.outputs["none:steps"]


def test_without_kept_steps_there_is_no_steps_picture(tiny_model_dir, tiny_pool_dir, tiny_clip_dir, subject_dir,
                                                       tmp_path, monkeypatch):
    monkeypatch.setattr(compare_run, "lane_count", lambda run, methods: 1)
    result = run_compare(config(tiny_model_dir, tiny_pool_dir, tiny_clip_dir, step_choices=0), subject_dir,
                         tmp_path / "cmp")
    assert not [k for k in result.outputs if k.endswith(":steps")]
    assert not list((tmp_path / "cmp" / "previews").glob("steps*"))
    assert result.timings["steps"] == 0
    assert "## Earlier steps" not in (tmp_path / "cmp" / "report.md").read_text()
