"""Model loading: presets, local folders, hub ids offline, the offline tokenizer, clear errors."""

from __future__ import annotations

import json
import shutil

import open_clip
import pytest
import torch

from bat_app.errors import ModelLoadError
from bat_app.models import load_components, offline_clip_tokenizer, presets, resolve_model
from bat_app.models.presets import default_preset
from tiny_model import build_tiny_model

# Ids from SD 1.x's own tokenizer (openai/clip-vit-large-patch14, as shipped in
# stable-diffusion-v1-5/tokenizer), recorded once; "sks" -> 48136 is DreamBooth's well-known id.
SD_TOKENIZER_IDS = {
    "a photo of sks dog": [49406, 320, 1125, 539, 48136, 1929, 49407],
    "a photo of dog": [49406, 320, 1125, 539, 1929, 49407],
    "A red striped star on a teal background": [49406, 320, 736, 22192, 1565, 525, 320, 22821, 5994, 49407],
}


@pytest.mark.parametrize("text,ids", SD_TOKENIZER_IDS.items())
def test_offline_tokenizer_matches_sd_tokenizer_ids(text, ids):
    assert offline_clip_tokenizer()(text).input_ids == ids


def test_offline_tokenizer_agrees_with_open_clip_on_varied_text():
    tok = offline_clip_tokenizer()
    texts = ["naïve café 123 ☃ <html>", "photorealistic supercalifragilistic", "UPPER lower MiXeD!!",
             "a dog, in the jungle; at night?", "emoji 🐶 and tabs\tand  spaces"]
    for text in texts:
        expected = [int(i) for i in open_clip.tokenize([text])[0] if i != 0]
        assert tok(text).input_ids == expected, text


def test_offline_tokenizer_pads_like_sd():
    ids = offline_clip_tokenizer()("hi", padding="max_length", max_length=6).input_ids
    assert ids[0] == 49406 and ids[2:] == [49407] * 4


def test_loads_local_folder(tiny_model_dir):
    comps = load_components(str(tiny_model_dir))
    assert comps.spec.is_local and comps.spec.resolution == 32
    assert comps.dtype == torch.float32 and comps.device.type == "cpu"
    assert not any(p.requires_grad for p in comps.denoiser.parameters())
    assert comps.noise_scheduler.config.prediction_type == "epsilon"
    assert comps.tokenizer.model_max_length == 16


def test_folder_without_tokenizer_uses_offline_tokenizer(tmp_path):
    folder = build_tiny_model(tmp_path / "no-tok", with_tokenizer=False)
    comps = load_components(str(folder))
    assert comps.tokenizer("a photo of sks dog").input_ids == SD_TOKENIZER_IDS["a photo of sks dog"]
    assert comps.tokenizer.model_max_length == comps.text_encoder.config.max_position_embeddings


def test_missing_folder_names_the_model(tmp_path):
    with pytest.raises(ModelLoadError, match="neither a preset"):
        load_components(str(tmp_path / "nope" / "deeper"))


def test_folder_that_is_not_sd(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(ModelLoadError, match=r"not a diffusers SD 1.x/2.x folder \(missing vae/, text_encoder/"):
        load_components(str(tmp_path))


def test_a_family_we_do_not_train_is_refused_with_reason(tiny_model_dir, tmp_path):
    folder = tmp_path / "kandinsky"
    shutil.copytree(tiny_model_dir, folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = "KandinskyV22Pipeline"
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="KandinskyV22Pipeline.*StableDiffusionPipeline"):
        load_components(str(folder))


def test_corrupt_weights_are_reported(tiny_model_dir, tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, folder)
    for f in (folder / "unet").glob("*.safetensors"):
        f.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="unet"):
        load_components(str(folder))


def test_hub_id_offline_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as info:
        load_components("some-org/some-model")
    text = str(info.value)
    assert "offline" in text and "hf download some-org/some-model" in text and "shapes" in text


def test_presets_are_data():
    assert presets()["sd15"]["source"] == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    spec = resolve_model("sd15")
    assert not spec.is_local and spec.resolution == 512 and spec.preset == "sd15"
    shapes = resolve_model("shapes")
    assert shapes.is_local and shapes.source.parts[-2:] == ("shapes", "backbone")


def test_default_preset_follows_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_preset() == "shapes"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_preset() == "sd15"


def test_unknown_spec_is_explained():
    with pytest.raises(ModelLoadError, match="neither a preset.*shapes"):
        resolve_model("sd-15")
