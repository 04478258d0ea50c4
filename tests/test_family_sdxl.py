"""The SDXL family on a tiny random SDXL built in code: loading from model_index.json, the two
encoders' conditioning and time ids, training through the CLI with pivotal tuning and a LoRA on
both text encoders, the diffusers and kohya files loading in diffusers' StableDiffusionXLPipeline
with the same effect, the clip_l/clip_g embeddings file, resume, and ALBAT's score (identical
adapters give exactly zero)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from bat_app.errors import ModelLoadError
from bat_app.images import load_user_images
from bat_app.models import load_components
from bat_app.models.families import get_family
from bat_app.models.families.sdxl import StableDiffusionXL
from bat_app.testing import build_tiny_sdxl, make_subject_images
from bat_app.train import TrainConfig, train_lora
from bat_app.train.data import Example

REPO = Path(__file__).resolve().parents[1]
WIDTHS = {"clip_l": 16, "clip_g": 24}  # the tiny encoders' widths (768 and 1280 in the real model)
# kohya-ss's text-encoder keys, as AUTOMATIC1111 and ComfyUI (comfy/lora.py, model_lora_keys_clip)
# map them: lora_te_ (SD) or lora_te1_/lora_te2_ (SDXL), then the CLIP module path with text_model.
KOHYA_TE_KEY = re.compile(r"lora_te[12]?_text_model_encoder_layers_\d+_(self_attn_(q|k|v|out)_proj|mlp_fc[12])"
                          r"\.(lora_down\.weight|lora_up\.weight|alpha)")


@pytest.fixture(scope="session")
def sdxl_dir(tmp_path_factory):
    return build_tiny_sdxl(tmp_path_factory.mktemp("models") / "tiny-sdxl")


@pytest.fixture(scope="module")
def sdxl(sdxl_dir):
    return load_components(str(sdxl_dir))


@pytest.fixture(scope="module")
def trained(sdxl_dir, tmp_path_factory):
    """Trained through the CLI, as a user runs it: alpha != rank, pivotal tuning, a LoRA on both
    text encoders, a checkpoint at the end."""
    folder = tmp_path_factory.mktemp("sdxl-train")
    subject = make_subject_images(folder / "subject")
    out = folder / "out"
    env = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": os.environ.get("BAT_TORCH_THREADS", "1")}
    done = subprocess.run(
        [sys.executable, "-m", "bat_app", "train", "--images", str(subject), "--token", "sks", "--class-noun", "disc",
         "--model", str(sdxl_dir), "--out", str(out), "--steps", "6", "--rank", "4", "--alpha", "8", "--lr", "3e-2",
         "--pivotal", "--embedding-lr", "0.5", "--train-text-encoder", "--checkpoint-every", "6", "--seed", "0"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, subject


def sample(pipe, seed: int = 0) -> np.ndarray:
    return pipe("a photo of sks disc", num_inference_steps=2, height=32, width=32, guidance_scale=5.0,
                generator=torch.Generator().manual_seed(seed), output_type="np").images[0]


def fresh_pipe(sdxl_dir):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_trigger(pipe, path: Path) -> None:
    """As the model card tells a diffusers user: one tensor per text encoder."""
    state = load_file(path)
    pipe.load_textual_inversion(state["clip_l"], token="sks", text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(state["clip_g"], token="sks", text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)


def test_loads_as_sdxl_from_model_index(sdxl):
    assert sdxl.family is get_family("sdxl") and sdxl.family.display_name == "SDXL"
    assert type(sdxl.denoiser).__name__ == "UNet2DConditionModel"
    assert [type(t).__name__ for t in sdxl.text_encoders] == ["CLIPTextModel", "CLIPTextModelWithProjection"]
    assert len(sdxl.tokenizers) == 2 and sdxl.spec.resolution == 32
    ids = sdxl.family.tokenize(sdxl, ["a photo of sks dog", "a disc"])
    cond = sdxl.family.encode(sdxl, ids)
    assert cond["hidden"].shape == (2, 16, 16 + 24) and cond["pooled"].shape == (2, 16)


def test_conditioning_matches_the_pipelines_encode_prompt(sdxl):
    from bat_app.models import build_pipeline

    pipe = build_pipeline(sdxl)
    with torch.no_grad():
        cond = sdxl.family.encode(sdxl, sdxl.family.tokenize(sdxl, ["a photo of sks dog"]))
        hidden, _, pooled, _ = pipe.encode_prompt("a photo of sks dog", device="cpu", do_classifier_free_guidance=False)
    torch.testing.assert_close(cond["hidden"], hidden)
    torch.testing.assert_close(cond["pooled"], pooled)


def test_time_ids_default_to_the_square_image_and_can_be_given(sdxl):
    family = sdxl.family
    latents = torch.randn(2, 4, 16, 16)
    assert family.default_time_ids(sdxl, latents).tolist() == [[32, 32, 0, 0, 32, 32]] * 2
    with torch.no_grad():
        cond = family.encode(sdxl, family.tokenize(sdxl, ["a disc", "a disc"]))
        noise, t = torch.randn_like(latents), torch.tensor([300, 700])
        default = family.loss(sdxl, latents, cond, noise, t)
        same = family.loss(sdxl, latents, cond | {"time_ids": family.default_time_ids(sdxl, latents)}, noise, t)
        other = family.loss(sdxl, latents, cond | {"time_ids": torch.tensor([[64., 48, 8, 0, 32, 32]] * 2)}, noise, t)
    assert default.shape == (2,) and torch.equal(default, same) and not torch.allclose(default, other)


def test_cli_training_writes_every_file(trained):
    out, _ = trained
    names = {p.name for p in out.iterdir()}
    assert {"pytorch_lora_weights.safetensors", "sks_disc_kohya.safetensors", "sks.safetensors", "README.md"} <= names
    diffusers_file = load_file(out / "pytorch_lora_weights.safetensors")
    prefixes = {k.split(".")[0] for k in diffusers_file}
    assert prefixes == {"unet", "text_encoder", "text_encoder_2"}
    with safe_open(str(out / "sks_disc_kohya.safetensors"), "pt") as f:
        assert f.metadata()["ss_base_model_version"] == "sdxl_base_v1-0"
    card = (out / "README.md").read_text()
    assert "StableDiffusionXLPipeline" in card and "state['clip_g'], token='sks', text_encoder=pipe.text_encoder_2" in card


def test_the_diffusers_file_loads_and_changes_the_image(sdxl_dir, trained):
    out, _ = trained
    pipe = fresh_pipe(sdxl_dir)
    base = sample(pipe)
    pipe.load_lora_weights(out, weight_name="pytorch_lora_weights.safetensors")
    # alpha / rank = 2 from the adapter metadata, on the UNet and on both text encoders
    assert float(pipe.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q.scaling["default_0"]) == 2.0
    for te in (pipe.text_encoder, pipe.text_encoder_2):
        # The text-encoder halves really arrived. (Layer 0: SDXL conditions on the penultimate
        # hidden states, so text_encoder's last layer gets no gradient and keeps lora_B = 0.)
        ups = [p for n, p in te.named_parameters() if "lora_B" in n and "layers.0." in n]
        assert ups and all(p.abs().sum() > 0 for p in ups)
    assert np.abs(sample(pipe) - base).max() > 1e-3


def test_the_kohya_file_draws_the_same_image_as_the_diffusers_file(sdxl_dir, trained):
    out, _ = trained
    kohya = load_file(out / "sks_disc_kohya.safetensors")
    assert {k.split("_")[0] + "_" + k.split("_")[1] for k in kohya} == {"lora_unet", "lora_te1", "lora_te2"}
    assert any(".lora_down.weight" in k for k in kohya)
    alphas = [v for k, v in kohya.items() if k.endswith(".alpha")]
    assert alphas and all(float(a) == 8.0 for a in alphas)
    diffusers_file = load_file(out / "pytorch_lora_weights.safetensors")
    assert len(kohya) - len(alphas) == len(diffusers_file)
    te_keys = [k for k in kohya if k.startswith("lora_te")]
    assert te_keys and all(KOHYA_TE_KEY.fullmatch(k) for k in te_keys)

    images = []
    for name in ("pytorch_lora_weights.safetensors", "sks_disc_kohya.safetensors"):
        pipe = fresh_pipe(sdxl_dir)
        pipe.load_lora_weights(out, weight_name=name)
        for te in (pipe.text_encoder, pipe.text_encoder_2):  # the lora_te1_/lora_te2_ halves arrive too
            ups = [p for n, p in te.named_parameters() if "lora_B" in n and "layers.0." in n]
            assert ups and all(p.abs().sum() > 0 for p in ups)
        load_trigger(pipe, out / "sks.safetensors")
        images.append(sample(pipe))
    np.testing.assert_allclose(images[1], images[0], atol=1e-4)


def test_the_embeddings_file_has_clip_l_and_clip_g_and_changes_the_image(sdxl_dir, trained):
    out, _ = trained
    state = load_file(out / "sks.safetensors")
    assert {k: tuple(v.shape) for k, v in state.items()} == {k: (2, w) for k, w in WIDTHS.items()}
    pipe = fresh_pipe(sdxl_dir)
    pipe.load_lora_weights(out, weight_name="pytorch_lora_weights.safetensors")
    plain = sample(pipe)
    load_trigger(pipe, out / "sks.safetensors")
    assert pipe.maybe_convert_prompt("a photo of sks disc", pipe.tokenizer_2) == "a photo of sks sks_1 disc"
    assert np.abs(sample(pipe) - plain).max() > 1e-3


def test_previews_load_lora_and_both_embeddings(sdxl, trained):
    from bat_app.preview import sample_images

    out, _ = trained
    vocab = [len(t) for t in sdxl.tokenizers]
    with_embeddings = sample_images(sdxl, ["a photo of sks disc"], [0], out)[0][0]
    assert [len(t) for t in sdxl.tokenizers] == vocab  # unloaded from both tokenizers again
    assert with_embeddings.size == (32, 32)


def test_pivotal_resume_and_the_model_left_as_it_was(sdxl, tmp_path):
    from bat_app.errors import Cancelled

    images = load_user_images(make_subject_images(tmp_path / "subject")).images
    tables = [te.get_input_embeddings().weight.detach().clone() for te in sdxl.text_encoders]
    config = TrainConfig(token="sks", class_noun="disc", steps=6, checkpoint_every=2, lr=1e-2, seed=0, pivotal=True,
                         embedding_lr=5e-2, train_text_encoder=True, text_encoder_lr=1e-2)
    straight = train_lora(sdxl, images, config, tmp_path / "straight", export=False, cache_root=tmp_path / "c")
    assert set(straight.embeddings) == {"clip_l", "clip_g"}
    assert {k for k in straight.text_encoder_lora if k.startswith("text_encoder_2.")}
    calls = {"n": 0}

    def cancel_at_step_4():
        calls["n"] += 1
        return calls["n"] == 4

    with pytest.raises(Cancelled):
        train_lora(sdxl, images, config, tmp_path / "resumed", cancel=cancel_at_step_4, export=False,
                   cache_root=tmp_path / "c")
    resumed = train_lora(sdxl, images, config, tmp_path / "resumed", resume=True, export=False,
                         cache_root=tmp_path / "c")
    assert resumed.resumed_from == 3  # cancelled before step 4: a checkpoint of step 3
    assert resumed.losses == pytest.approx(straight.losses, rel=1e-5, abs=1e-6)
    torch.testing.assert_close(resumed.embeddings, straight.embeddings, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(resumed.text_encoder_lora, straight.text_encoder_lora, rtol=1e-5, atol=1e-6)
    assert [len(t) for t in sdxl.tokenizers] == [49408, 49408]
    for te, table in zip(sdxl.text_encoders, tables):
        torch.testing.assert_close(te.get_input_embeddings().weight, table)
        assert not getattr(te, "peft_config", None) or "bat" not in te.peft_config


def test_albat_identical_adapters_give_exactly_zero(sdxl, tmp_path):
    from PIL import Image

    from bat_app.albat.score import loss_reduction
    from bat_app.albat.surrogate import train_surrogate

    images = load_user_images(make_subject_images(tmp_path / "subject")).images
    config = TrainConfig(token="sks", class_noun="disc", steps=4, lr=5e-3, rank=4, checkpoint_every=0)
    surrogate = train_surrogate(sdxl, images, config, 3, tmp_path)
    examples = [Example(u.image, config.prompt) for u in images] + [Example(Image.new("RGB", (32, 32), (0, 0, 255)),
                                                                            "a blue square")]
    same = loss_reduction(sdxl, examples, 32, surrogate, config, reference=surrogate, draws=2, cache_root=tmp_path)
    assert np.array_equal(same, np.zeros(len(examples)))
    against_base = loss_reduction(sdxl, examples, 32, surrogate, config, draws=2, cache_root=tmp_path)
    assert np.all(np.isfinite(against_base)) and np.any(against_base != 0)


def test_the_sdxl_preset():
    from bat_app.models import resolve_model
    from bat_app.models.presets import presets

    spec = resolve_model("sdxl")
    assert spec.family == "sdxl" and spec.resolution == 1024 and spec.license == "openrail++"
    assert spec.sampling == {"steps": 30, "guidance_scale": 5.0}
    assert presets()["sdxl"]["vae"] == spec.vae == "madebyollin/sdxl-vae-fp16-fix"
    assert StableDiffusionXL.pivotal_embedding_keys == ((0, "clip_l"), (1, "clip_g"))


@pytest.mark.parametrize("model, prefixes", [("tiny_model_dir", {"lora_te"}), ("sdxl_dir", {"lora_te1", "lora_te2"})])
def test_kohya_text_encoder_keys_carry_text_model(model, prefixes, request):
    """transformers 5's CLIPTextModel has no ``text_model`` level; the kohya file still names it
    (``lora_te1_text_model_encoder_layers_0_self_attn_q_proj``), or A1111/ComfyUI would not match it."""
    from bat_app.train.adapters import add_adapters, lora_state_dicts, remove_adapters

    comps = load_components(str(request.getfixturevalue(model)))
    config = TrainConfig(train_text_encoder=True).resolve_targets(comps.family)
    add_adapters(comps, config)
    try:
        unet_lora, te_lora = lora_state_dicts(comps, config)
    finally:
        remove_adapters(comps)
    assert not any(k.startswith("text_model.") for k in te_lora)  # transformers 5: no text_model level
    keys = [k for k in comps.family.to_kohya(unet_lora, te_lora, 4.0) if k.startswith("lora_te")]
    assert keys and all(KOHYA_TE_KEY.fullmatch(k) for k in keys)
    assert {k.split("_text_model_")[0] for k in keys} == prefixes


def test_a_vae_from_a_folder_replaces_the_models_own(sdxl_dir, sdxl, tmp_path):
    from diffusers import AutoencoderKL

    from bat_app.train.encode import vae_fingerprint

    torch.manual_seed(1)
    other = AutoencoderKL.from_config(sdxl.vae.config)
    other.save_pretrained(tmp_path / "fp16-fix")
    comps = load_components(str(sdxl_dir), vae=tmp_path / "fp16-fix")
    assert comps.spec.vae == (tmp_path / "fp16-fix").resolve()
    torch.testing.assert_close(comps.vae.state_dict(), other.state_dict())
    assert vae_fingerprint(comps) != vae_fingerprint(sdxl)  # its own latent cache
    assert comps.family.pipeline(comps).vae is comps.vae  # previews decode with it too
    # A diffusers model folder gives its vae/.
    own = load_components(str(sdxl_dir), vae=str(sdxl_dir))
    torch.testing.assert_close(own.vae.state_dict(), sdxl.vae.state_dict())

    AutoencoderKL.from_config({**sdxl.vae.config, "latent_channels": 8}).save_pretrained(tmp_path / "wide")
    with pytest.raises(ModelLoadError, match="has 8 latent channels but model .* own VAE has 4"):
        load_components(str(sdxl_dir), vae=tmp_path / "wide")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_components(str(sdxl_dir), vae=tmp_path / "empty")


def test_a_hub_vae_offline_says_how_to_get_it(sdxl_dir, monkeypatch):
    from bat_app.models import loading

    monkeypatch.setattr(loading, "_in_hub_cache", lambda *a: False)
    monkeypatch.setattr(loading, "_hub_reachable", lambda *a: False)
    with pytest.raises(ModelLoadError, match=r"hf download madebyollin/sdxl-vae-fp16-fix.*the preset's `vae` or --vae"):
        load_components(str(sdxl_dir), vae="madebyollin/sdxl-vae-fp16-fix")


@pytest.mark.parametrize("command", ["train", "select"])
def test_the_vae_flag_reaches_the_loader(command, monkeypatch, tmp_path):
    from bat_app import cli, models

    class Loaded(Exception):
        pass

    def load(model, **kwargs):
        raise Loaded(kwargs["vae"])

    monkeypatch.setattr(models, "load_components", load)
    extra = ["--pool", str(tmp_path)] if command == "select" else []
    args = cli.build_parser().parse_args([command, "--images", str(tmp_path), "--class-noun", "disc", "--model", "shapes",
                                          "--out", str(tmp_path / "out"), "--vae", "org/my-vae", *extra])
    with pytest.raises(Loaded, match="org/my-vae"):
        cli._prepare(args)
