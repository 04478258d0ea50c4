"""The model's safety checker on previews: a tiny checker that flags everything hides every
preview (and the report counts them); off, or a model without one, the images are as drawn."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from bat_app.compare import CompareConfig, run_compare
from bat_app.errors import InputError
from bat_app.models import load_components
from bat_app.preview import sample_images
from bat_app.preview.safety import GREY, NO_CHECKER, check_images, check_rows, has_safety_checker, hidden_image


def add_tiny_safety_checker(folder, flag_all: bool = True):
    """A 2-layer CLIP safety checker (32 px input) and its processor, saved and listed in
    model_index.json as diffusers does; ``flag_all``: thresholds so low every image is flagged."""
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    torch.manual_seed(0)
    small = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2)
    config = CLIPConfig(text_config=dict(small, vocab_size=99, max_position_embeddings=16),
                        vision_config=dict(small, image_size=32, patch_size=8), projection_dim=16)
    checker = StableDiffusionSafetyChecker(config)
    with torch.no_grad():  # cosine >= -1 > threshold: flagged; cosine <= 1 < threshold: never
        checker.concept_embeds_weights.fill_(-10.0 if flag_all else 10.0)
        checker.special_care_embeds_weights.fill_(10.0)
    checker.save_pretrained(folder / "safety_checker")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        folder / "feature_extractor")
    index = json.loads((folder / "model_index.json").read_text())
    index["safety_checker"] = ["stable_diffusion", "StableDiffusionSafetyChecker"]
    index["feature_extractor"] = ["transformers", "CLIPImageProcessor"]
    (folder / "model_index.json").write_text(json.dumps(index, indent=1))
    return folder


@pytest.fixture(scope="module")
def checked_model_dir(tiny_model_dir, tmp_path_factory):
    return add_tiny_safety_checker(shutil.copytree(tiny_model_dir, tmp_path_factory.mktemp("m") / "tiny-sd-safe"))


def is_hidden(image: Image.Image) -> bool:
    return np.array_equal(np.asarray(image), np.asarray(hidden_image(image.size)))


def test_a_flagging_checker_hides_every_image_and_counts_them(checked_model_dir):
    comps = load_components(str(checked_model_dir))
    assert has_safety_checker(comps.spec)
    rows = sample_images(comps, ["a photo of disc", "a disc"], [0, 1])
    checked, hidden = check_rows(comps, rows)
    assert hidden == 4 and all(is_hidden(im) for row in checked for im in row)
    assert [[im.size for im in row] for row in checked] == [[im.size for im in row] for row in rows]
    assert comps.safety is not None and comps.safety.present  # loaded once, kept on the components
    cached = comps.safety
    check_images(comps, rows[0])
    assert comps.safety is cached


def test_a_model_without_a_checker_passes_images_through(comps):
    assert not has_safety_checker(comps.spec)  # saved with safety_checker=None: [null, null]
    images = sample_images(comps, ["a disc"], [0, 1])[0]
    out, hidden = check_images(comps, images)
    assert hidden == 0 and all(a is b for a, b in zip(out, images))


def test_the_hidden_image_is_grey_with_its_text():
    image = hidden_image((128, 128))
    pixels = np.asarray(image)
    assert tuple(pixels[0, 0]) == GREY and (pixels != GREY).any()  # the text is drawn


def cfg(model_dir, tiny_clip_dir, **kw) -> CompareConfig:
    return CompareConfig.from_dict(dict(
        token="sks", class_noun="disc", model=str(model_dir), pool=None, clip_model=str(tiny_clip_dir),
        methods=["none"], prompt_set="object", num_prompts=1, seeds=[0], train={"steps": 2}) | kw)


def test_compare_previews_are_checked_and_the_report_says_so(checked_model_dir, tiny_clip_dir, subject_dir,
                                                             tmp_path):
    out = tmp_path / "on"
    run_compare(cfg(checked_model_dir, tiny_clip_dir), subject_dir, out)
    metrics = json.loads((out / "metrics.json").read_text())
    # one prompt of the set + the class prompt, one seed: 2 previews per column
    assert metrics["safety_checker"] == {"enabled": True, "present": True, "hidden": {"base": 2, "none": 2}}
    assert all(is_hidden(Image.open(p).convert("RGB")) for p in (out / "previews" / "samples").rglob("*.png"))
    assert "Safety checker: on: it hid 4 preview(s) (base 2, none 2)." in (out / "report.md").read_text()

    # off: the same run draws the images as they are (the checked ones are not reused)
    run_compare(cfg(checked_model_dir, tiny_clip_dir, safety_checker=False), subject_dir, out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["safety_checker"] == {"enabled": False, "present": True, "hidden": {"base": 0, "none": 0}}
    assert not any(is_hidden(Image.open(p).convert("RGB")) for p in (out / "previews" / "samples").rglob("*.png"))
    assert "Safety checker: off" in (out / "report.md").read_text()


def test_a_model_without_a_checker_says_so_in_the_report(tiny_model_dir, tiny_clip_dir, subject_dir, tmp_path):
    run_compare(cfg(tiny_model_dir, tiny_clip_dir), subject_dir, tmp_path / "none")
    metrics = json.loads((tmp_path / "none" / "metrics.json").read_text())
    assert metrics["safety_checker"]["present"] is False and metrics["safety_checker"]["hidden"] == {"base": 0, "none": 0}
    assert NO_CHECKER in (tmp_path / "none" / "report.md").read_text()


def test_the_setting_is_checked_at_the_door():
    with pytest.raises(InputError, match="safety_checker"):
        CompareConfig(safety_checker="no")


def test_a_generated_pool_scores_flagged_samples_unsafe(checked_model_dir, tmp_path):
    from bat_app.pool.generate import sample_images as draw
    from bat_app.preview.sample import backbone_sampler

    comps = load_components(str(checked_model_dir))
    sampler, key = backbone_sampler(comps, steps=2)
    assert json.loads(key)["safety"] == "checked"
    draw(sampler, ["a disc", "a disc in a box"], tmp_path / "gen")
    assert [json.loads((tmp_path / "gen" / f"{i:06d}.json").read_text()) for i in range(2)] == [{"punsafe": 1.0}] * 2
    assert is_hidden(Image.open(tmp_path / "gen" / "000000.png").convert("RGB"))
    _, unchecked = backbone_sampler(comps, steps=2, safety_checker=False)
    assert "safety" not in json.loads(unchecked)


def test_try_it_checks_when_the_operator_has_it_on(checked_model_dir, monkeypatch):
    from bat_app.ui import tryit
    from bat_app.ui.settings import AppSettings

    comps = load_components(str(checked_model_dir))
    monkeypatch.setattr(tryit, "_components", lambda model: comps)
    monkeypatch.setattr(tryit, "lora_dir", lambda settings, job, method: (None, {"model": "x"}))
    on = AppSettings.from_env(model="x")
    assert on.safety_checker
    base, tuned = tryit.try_prompt(on, "job", "none", "a sks disc")
    assert base.getpixel((0, 0)) == GREY and tuned.getpixel((0, 0)) == GREY  # enlarged grey cells
    monkeypatch.setenv("BAT_SAFETY_CHECKER", "0")
    base, _ = tryit.try_prompt(AppSettings.from_env(model="x"), "job", "none", "a sks disc")
    assert base.getpixel((0, 0)) != GREY
