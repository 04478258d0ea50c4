"""The Flux family on a tiny random Flux built in code: loading from model_index.json, the
flow-matching objective, training, both exported files loading in diffusers' FluxPipeline with
the same effect, and ALBAT's score (identical adapters give exactly zero)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from bat_app.errors import ModelLoadError
from bat_app.images import load_user_images
from bat_app.models import load_components
from bat_app.models.families import get_family
from bat_app.models.families.flux import Flux, pack_latents
from bat_app.testing import build_tiny_flux, make_subject_images
from bat_app.train import TrainConfig, train_lora
from bat_app.train.data import Example

FLUX_TARGETS = list(Flux.lora_targets)


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory):
    return build_tiny_flux(tmp_path_factory.mktemp("models") / "tiny-flux")


@pytest.fixture(scope="module")
def flux(flux_dir):
    return load_components(str(flux_dir))


@pytest.fixture(scope="module")
def trained(flux, tmp_path_factory):
    """A LoRA with alpha != rank and a CLIP text-encoder part, on the family's default targets."""
    folder = tmp_path_factory.mktemp("flux-train")
    images = load_user_images(make_subject_images(folder / "subject")).images
    config = TrainConfig(token="sks", class_noun="disc", steps=6, lr=3e-2, rank=4, alpha=8,
                         train_text_encoder=True, text_encoder_lr=3e-2, checkpoint_every=0, pivotal=False)
    result = train_lora(flux, images, config, folder / "out", cache_root=folder / "cache")
    return config, result, images


def sample(pipe, seed: int = 0) -> np.ndarray:
    return pipe("a photo of sks disc", num_inference_steps=2, height=32, width=32, guidance_scale=3.5,
                max_sequence_length=32, generator=torch.Generator().manual_seed(seed), output_type="np").images[0]


def test_loads_as_flux_from_model_index(flux):
    assert flux.family is get_family("flux") and flux.family.display_name == "Flux"
    assert type(flux.denoiser).__name__ == "FluxTransformer2DModel"
    assert [type(t).__name__ for t in flux.text_encoders] == ["CLIPTextModel", "T5EncoderModel"]
    assert type(flux.noise_scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    assert flux.spec.resolution == 32 and flux.family.supports_pivotal is False
    ids = flux.family.tokenize(flux, ["a photo of sks dog"])
    cond = flux.family.encode(flux, ids)
    assert cond["hidden"].shape == (1, 32, 32) and cond["pooled"].shape == (1, 32)


def test_a_folder_without_tokenizer_2_is_refused(flux_dir, tmp_path):
    import shutil

    folder = tmp_path / "no-t5-tok"
    shutil.copytree(flux_dir, folder)
    shutil.rmtree(folder / "tokenizer_2")
    with pytest.raises(ModelLoadError, match=r"not a diffusers Flux folder \(missing tokenizer_2/\)"):
        load_components(str(folder))


def test_flow_matching_objective(flux):
    """sigma = (t + 1) / N (dynamic shifting: no static shift); at sigma = 1 the input is pure
    noise, so the loss is the transformer's error on the flow noise - x0 from noise alone."""
    family = flux.family
    sigmas = family.sigmas(flux, torch.tensor([0, 499, 999]))
    assert torch.allclose(sigmas, torch.tensor([0.001, 0.5, 1.0]))
    cond = family.encode(flux, family.tokenize(flux, ["a red disc", "a blue square"]))
    g = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 4, 16, 16, generator=g)
    loss = family.loss(flux, latents, cond, noise, torch.tensor([999, 999]))
    assert loss.shape == (2,) and loss.dtype == torch.float32
    # At sigma = 1 the noisy input does not depend on x0: another x0 changes only the target.
    other = family.loss(flux, torch.zeros_like(latents), cond, noise, torch.tensor([999, 999]))
    assert not torch.allclose(loss, other)
    assert pack_latents(latents).shape == (2, 64, 16)


def test_the_loss_weights_follow_the_packed_patches(flux):
    """Masked training on Flux: the latent grid's weights are packed like the latents. At sigma = 1
    x0 changes only the target, so changing it where the weight is 0 leaves the loss as it is."""
    family = flux.family
    cond = family.encode(flux, family.tokenize(flux, ["a red disc", "a blue square"]))
    g = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 4, 16, 16, generator=g)
    t = torch.tensor([999, 999])
    weight = torch.zeros(2, 1, 16, 16)
    weight[:, :, :6, :10] = 1.0  # a corner of whole and half patches
    elsewhere = latents.clone()
    elsewhere[:, :, 6:, :] += 3.0
    elsewhere[:, :, :, 10:] -= 3.0
    loss = family.loss(flux, latents, cond, noise, t, weight)
    assert torch.allclose(family.loss(flux, elsewhere, cond, noise, t, weight), loss)
    assert not torch.allclose(family.loss(flux, elsewhere, cond, noise, t), family.loss(flux, latents, cond, noise, t))
    assert torch.allclose(family.loss(flux, latents, cond, noise, t, torch.ones(2, 1, 16, 16)),
                          family.loss(flux, latents, cond, noise, t))


def test_trains_and_the_lora_changes_the_image(flux, flux_dir, trained):
    from diffusers import FluxPipeline

    config, result, _ = trained
    assert len(result.losses) == config.steps and all(np.isfinite(result.losses))
    trained_modules = {k.split(".lora_")[0].rsplit(".", 1)[-1] for k in result.unet_lora}
    assert {"to_q", "add_q_proj", "proj_mlp", "to_add_out"} <= trained_modules
    assert any(".ff.net.0.proj." in k for k in result.unet_lora)
    assert result.text_encoder_lora

    pipe = FluxPipeline.from_pretrained(flux_dir)
    pipe.set_progress_bar_config(disable=True)
    base = sample(pipe)
    pipe.load_lora_weights(result.files["diffusers"].parent, weight_name=result.files["diffusers"].name)
    with_lora = sample(pipe)
    assert np.abs(with_lora - base).max() > 1e-3


def test_the_comfyui_file_draws_the_same_image_as_the_diffusers_file(flux_dir, trained):
    from diffusers import FluxPipeline

    _, result, _ = trained
    kohya = load_file(result.files["kohya"])
    assert all(k.startswith(("transformer.", "text_encoder.text_model.")) for k in kohya)
    alphas = [v for k, v in kohya.items() if k.endswith(".alpha")]
    assert alphas and all(float(a) == 8.0 for a in alphas)
    diffusers_file = load_file(result.files["diffusers"])
    assert {k for k in kohya if not k.endswith(".alpha")} == set(diffusers_file)

    images = []
    for path in (result.files["diffusers"], result.files["kohya"]):
        pipe = FluxPipeline.from_pretrained(flux_dir)
        pipe.set_progress_bar_config(disable=True)
        pipe.load_lora_weights(path.parent, weight_name=path.name)
        # alpha / rank = 2 from the diffusers file's metadata and from the ComfyUI file's .alpha tensors
        assert float(pipe.transformer.transformer_blocks[0].attn.to_q.scaling["default_0"]) == 2.0
        images.append(sample(pipe))
    assert np.abs(images[0] - images[1]).max() < 1e-4


def test_albat_identical_adapters_give_exactly_zero(flux, trained, tmp_path):
    from PIL import Image

    from bat_app.albat.score import loss_reduction

    config, result, images = trained
    examples = [Example(u.image, config.prompt) for u in images] + [Example(Image.new("RGB", (32, 32), (0, 0, 255)),
                                                                            "a blue square")]
    surrogate = result.unet_lora
    same = loss_reduction(flux, examples, 32, surrogate, config, reference=surrogate, draws=2, cache_root=tmp_path)
    assert np.array_equal(same, np.zeros(len(examples)))
    against_base = loss_reduction(flux, examples, 32, surrogate, config, draws=2, cache_root=tmp_path)
    assert np.all(np.isfinite(against_base)) and np.any(against_base != 0)


def test_pivotal_tuning_is_refused_on_flux(flux, tmp_path):
    from bat_app.errors import InputError

    images = load_user_images(make_subject_images(tmp_path / "subject")).images
    with pytest.raises(InputError, match="Pivotal tuning is not supported for Flux"):
        train_lora(flux, images, TrainConfig(steps=1, pivotal=True, checkpoint_every=0), tmp_path / "out")
