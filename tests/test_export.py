"""Exported LoRA files: keys, diffusers round trip, kohya file loads with the same effect, card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from bat_app.errors import ExportError
from bat_app.images import load_user_images
from bat_app.models import build_pipeline, load_components
from bat_app.train import TrainConfig, train_lora


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """A LoRA with alpha != rank and a text-encoder part, trained hard enough to show."""
    from conftest import make_subject_images

    folder = tmp_path_factory.mktemp("export")
    images = load_user_images(make_subject_images(folder / "subject")).images
    comps = load_components(str(tiny_model_dir))
    config = TrainConfig(token="sks", class_noun="disc", steps=12, lr=2e-2, rank=4, alpha=8,
                         train_text_encoder=True, text_encoder_lr=2e-2, checkpoint_every=0)
    result = train_lora(comps, images, config, folder / "out", cache_root=folder / "cache")
    return comps, config, result


def sample(pipe, seed: int = 0) -> np.ndarray:
    return pipe("a photo of sks disc", num_inference_steps=3, height=32, width=32, guidance_scale=3.0,
                generator=torch.Generator().manual_seed(seed), output_type="np").images[0]


def text_encoder_lora_loaded(comps) -> bool:
    """The text-encoder half really arrived (not silently dropped by a key mismatch)."""
    ups = [p for n, p in comps.text_encoder.named_parameters() if "lora_B" in n]
    return bool(ups) and all(p.abs().sum() > 0 for p in ups)


def test_all_files_are_written(trained):
    _, _, result = trained
    assert set(result.files) == {"diffusers", "kohya", "card", "loss_curve", "log"}
    assert all(path.is_file() and path.stat().st_size > 0 for path in result.files.values())
    assert result.files["diffusers"].name == "pytorch_lora_weights.safetensors"


def test_diffusers_keys_and_metadata(trained):
    _, _, result = trained
    keys = set(load_file(result.files["diffusers"]))
    assert any(k.startswith("unet.") and "to_q" in k for k in keys)
    assert any(k.startswith("text_encoder.") and "q_proj" in k for k in keys)
    assert not any(k.startswith(("lora_unet", "lora_te")) for k in keys)
    with safe_open(result.files["diffusers"], "pt") as f:
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
    assert meta["unet.lora_alpha"] == 8 and meta["unet.r"] == 4 and meta["text_encoder.lora_alpha"] == 8


def test_kohya_keys_alpha_and_shapes(trained):
    _, config, result = trained
    sd = load_file(result.files["kohya"])
    unet_down = [k for k in sd if k.startswith("lora_unet_") and k.endswith(".lora_down.weight")]
    te_down = [k for k in sd if k.startswith("lora_te_") and k.endswith(".lora_down.weight")]
    assert unet_down and te_down
    assert "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight" in sd
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight" in sd
    for key in unet_down + te_down:
        module = key.split(".")[0]
        assert sd[f"{module}.alpha"].item() == pytest.approx(config.lora_alpha)
        assert sd[key].shape[0] == config.rank and sd[f"{module}.lora_up.weight"].shape[1] == config.rank
    assert not any(k.startswith("lora_te1_") for k in sd)


def test_diffusers_round_trip_changes_then_restores(trained):
    comps, _, result = trained
    pipe = build_pipeline(comps)
    base = sample(pipe)
    pipe.load_lora_weights(str(result.out_dir), weight_name=result.files["diffusers"].name)
    with_lora = sample(pipe)
    assert np.abs(with_lora - base).mean() > 1e-3
    pipe.unload_lora_weights()
    np.testing.assert_allclose(sample(pipe), base, atol=1e-5)


def test_kohya_file_loads_with_the_same_effect(trained):
    comps, _, result = trained
    pipe = build_pipeline(comps)
    pipe.load_lora_weights(str(result.out_dir), weight_name=result.files["diffusers"].name)
    assert text_encoder_lora_loaded(comps)
    via_diffusers = sample(pipe)
    pipe.unload_lora_weights()
    pipe.load_lora_weights(str(result.out_dir), weight_name=result.files["kohya"].name)
    assert text_encoder_lora_loaded(comps)
    via_kohya = sample(pipe)
    pipe.unload_lora_weights()
    np.testing.assert_allclose(via_kohya, via_diffusers, atol=1e-4)


def test_model_card(trained):
    _, config, result = trained
    card = result.files["card"].read_text()
    assert card.startswith("---\n") and 'instance_prompt: "a photo of sks disc"' in card
    for needle in ("pipe.load_lora_weights", "AUTOMATIC1111", "ComfyUI", "models/Lora/",
                   result.files["kohya"].name, "| rank | 4 |", "| alpha | 8 |"):
        assert needle in card, needle
    assert "**Captions:**" not in card  # trained on the instance prompt alone


def test_the_card_of_a_captioned_training_says_how_to_prompt_it():
    from dataclasses import replace

    from bat_app.export.model_card import model_card
    from bat_app.train import TrainConfig

    config = TrainConfig(token="sks", class_noun="dog", captions=True)
    card = model_card(config, "stable-diffusion-v1-5/stable-diffusion-v1-5", "sks_dog_kohya.safetensors")
    assert "**Captions:** trained on a caption per photo (each photo also with the plain trigger prompt)" in card
    assert "after `a photo of sks dog` steer the scene" in card
    assert "(each photo also twice with the plain trigger prompt)" in model_card(
        replace(config, caption_mix="third"), "stable-diffusion-v1-5/stable-diffusion-v1-5", "x.safetensors")
    assert "also with the plain" not in model_card(replace(config, caption_mix="all"),
                                                   "stable-diffusion-v1-5/stable-diffusion-v1-5", "x.safetensors")


def test_full_disk_is_a_clear_error(trained, tmp_path, monkeypatch):
    from bat_app import export

    comps, config, result = trained
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 1000))
    with pytest.raises(ExportError, match="MiB free.*Free some disk space"):
        export.export_lora(comps, config, tmp_path, result.unet_lora, result.text_encoder_lora)
    assert not (tmp_path / "pytorch_lora_weights.safetensors").exists()


SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"


def test_card_kohya_metadata_and_log_name_the_real_model_not_the_preset(trained, tmp_path):
    import dataclasses

    from bat_app.export import export_lora
    from bat_app.models.presets import resolve_model

    comps, config, result = trained
    as_sd15 = dataclasses.replace(comps, spec=resolve_model("sd15"))  # the card reads only the spec
    files = export_lora(as_sd15, config, tmp_path, result.unet_lora, result.text_encoder_lora)
    card = files["card"].read_text()
    front = card.split("---\n")[1]
    assert f"base_model: {SD15}\n" in front
    assert f"from_pretrained({SD15!r}" in card and "sd15'" not in card
    # the preset's guidance, as its previews drew (diffusers' own default differs per pipeline)
    assert "on the beach', guidance_scale=7.5).images[0]" in card
    with safe_open(files["kohya"], "pt") as f:
        meta = f.metadata()
    assert meta["bat_base_model"] == SD15 and meta["ss_sd_model_name"] == SD15
    assert json.loads(files["log"].read_text())["base_model"] == SD15


def test_a_cached_hub_snapshot_is_named_with_its_revision(tmp_path):
    from bat_app.export.model_card import base_model_of, model_card
    from bat_app.models.presets import ModelSpec

    sha = "0123456789abcdef0123456789abcdef01234567"
    folder = tmp_path / "hub" / "models--someone--tiny-sd" / "snapshots" / sha
    base = base_model_of(ModelSpec(str(folder), folder))
    assert (base.hub_id, base.revision) == ("someone/tiny-sd", sha)
    card = model_card(TrainConfig(token="sks", class_noun="dog"), base, "sks_dog_kohya.safetensors")
    assert "base_model: someone/tiny-sd\n" in card
    assert f"from_pretrained('someone/tiny-sd', revision='{sha}')" in card
    assert "on the beach').images[0]" in card  # a folder's own scheduler config: no guidance to name
    # a plain local folder has no hub id: no base_model line, and the card names the folder
    local = base_model_of(ModelSpec("my-model", tmp_path / "my-model"))
    card = model_card(TrainConfig(token="sks", class_noun="dog"), local, "k.safetensors")
    assert local.hub_id is None and "base_model:" not in card and str(tmp_path / "my-model") in card


def test_hub_push_of_an_older_folder_names_the_real_model(tmp_path):
    """training_log.json written before this fix says "sd15": the pushed card still names SD 1.5."""
    from bat_app.export.hub import push_lora

    folder = tmp_path / "lora"
    folder.mkdir()
    (folder / "pytorch_lora_weights.safetensors").write_bytes(b"weights")
    config = TrainConfig(token="sks", class_noun="dog", steps=10)
    (folder / "training_log.json").write_text(json.dumps({"config": config.to_dict(), "base_model": "sd15",
                                                          "method": "albat", "losses": [0.1]}))
    uploaded = {}

    class Api:
        def whoami(self, token=None):
            return {"name": "alice"}

        def create_repo(self, repo_id, **kw):
            pass

        def upload_folder(self, *, repo_id, folder_path, **kw):
            uploaded["card"] = (Path(folder_path) / "README.md").read_text()

    push_lora(folder, "dog-lora", "hf_token", api=Api())
    assert f"base_model: {SD15}\n" in uploaded["card"] and f"from_pretrained({SD15!r}" in uploaded["card"]
