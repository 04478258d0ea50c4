"""The shipped Shapes-world models: backbone via the preset, CLIP, classifier, a short LoRA run."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from bat_app.shapes import ShapesWorld, load_attribute_classifier, load_shapes_clip, shapes_paths

PATHS = shapes_paths()
needs_assets = pytest.mark.skipif(not (PATHS.backbone / "model_index.json").exists(),
                                  reason="shapes assets not built (python -m bat_app shapes build)")
pytestmark = needs_assets


@pytest.fixture(scope="module")
def classifier():
    return load_attribute_classifier()


def test_assets_are_small_safetensors():
    files = [p for p in PATHS.root.rglob("*") if p.is_file()]
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".ckpt", ".pth")]
    assert weights and all(p.suffix == ".safetensors" for p in weights)
    total = sum(p.stat().st_size for p in files) + sum(
        p.stat().st_size for p in PATHS.subjects.rglob("*") if p.is_file())
    assert total <= 30 * 2**20, f"assets take {total / 2**20:.1f} MiB"


def test_classifier_reads_generator_images(classifier):
    items = ShapesWorld(seed=99, pretraining=False).sample(300)
    pred = classifier.predict([i.image for i in items])
    for key in ("shape", "colour", "background", "pattern"):
        acc = np.mean([p[key] == i.attributes[key] for p, i in zip(pred, items)])
        assert acc >= 0.9, (key, acc)


def test_classifier_reads_upload_sized_subject_photos(classifier):
    from bat_app.shapes import SUBJECTS, subject_photos

    for subject in SUBJECTS:
        images = [im for im, _ in subject_photos(subject, n=3)]
        for p in classifier.predict(images):
            assert p["shape"] == subject.class_noun
            assert all(p[k] == v for k, v in subject.trait.items()), (subject.name, p)


def test_shapes_clip_matches_images_to_their_captions():
    model, preprocess, tokenizer = load_shapes_clip()
    items = ShapesWorld(seed=7).sample(16)
    with torch.no_grad():
        img = model.encode_image(torch.stack([preprocess(i.image) for i in items]), normalize=True)
        txt = model.encode_text(tokenizer([i.caption for i in items]), normalize=True)
    top1 = (txt @ img.T).argmax(1)
    assert (top1 == torch.arange(16)).float().mean() >= 0.6


def test_text_encoder_is_the_clip_text_tower():
    from transformers import CLIPTextModel

    from bat_app.shapes.clip import text_tower_to_transformers

    model, _, tokenizer = load_shapes_clip()
    shipped = CLIPTextModel.from_pretrained(PATHS.backbone / "text_encoder")
    assert next(shipped.parameters()).dtype == torch.float32
    ids = tokenizer(["a red star on a teal background"])
    with torch.no_grad():
        a = shipped(ids).last_hidden_state
        b = text_tower_to_transformers(model)(ids).last_hidden_state
    assert torch.allclose(a, b, atol=1e-5)


def test_backbone_loads_with_stable_diffusion_pipeline_and_samples_in_seconds():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(PATHS.backbone)
    settings = json.loads((PATHS.backbone / "bat_shapes.json").read_text())
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.scheduler.config.rescale_betas_zero_snr
    assert pipe.unet.dtype == torch.float32 and pipe.text_encoder.dtype == torch.float32
    pipe.set_progress_bar_config(disable=True)
    t0 = time.time()
    out = pipe(["a red star on a teal background"] * 2, num_inference_steps=settings["num_inference_steps"],
               guidance_scale=settings["guidance_scale"], height=32, width=32,
               generator=torch.Generator().manual_seed(0), output_type="np").images
    assert time.time() - t0 < 20
    assert out.shape == (2, 32, 32, 3) and np.isfinite(out).all() and out.std() > 0.05


def test_backbone_loads_through_the_shapes_preset():
    from bat_app.models import load_components

    components = load_components("shapes", device="cpu")
    assert components.spec.resolution == 32
    assert components.noise_scheduler.config.prediction_type == "v_prediction"
    assert components.denoiser.config.in_channels == components.vae.config.latent_channels == 8


def test_short_lora_run_changes_samples(tmp_path):
    from bat_app.images import load_user_images
    from bat_app.models import build_pipeline, load_components
    from bat_app.train import TrainConfig, train_lora

    files = sorted((PATHS.subjects / "dot_star").glob("*.png"))[:3]
    images = load_user_images(files, resolution=32).images
    components = load_components("shapes", device="cpu")
    config = TrainConfig(class_noun="star", steps=8, lr=1e-3, rank=4, resolution=32,
                         checkpoint_every=0, mixed_precision="no")

    def sample():
        pipe = build_pipeline(components)
        return pipe("a photo of sks star", num_inference_steps=5, guidance_scale=4.0, height=32,
                    width=32, generator=torch.Generator().manual_seed(0), output_type="np").images

    before = sample()
    result = train_lora(components, images, config, tmp_path / "lora", cache_root=tmp_path / "cache")
    pipe = build_pipeline(components)
    pipe.load_lora_weights(str(result.files["diffusers"]))
    after = pipe("a photo of sks star", num_inference_steps=5, guidance_scale=4.0, height=32,
                 width=32, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert np.abs(after - before).mean() > 1e-3


def test_refined_latents_keep_the_outline_the_encoder_blurs_away():
    """The shapes VAE's encoder loses outlined_circle's 1-px outline on light backgrounds (the
    judge misses it on at least one photo's decoding); decoder inversion brings it back on every
    photo, without an anchor (50 steps) and with the trainer's default one (100 steps, anchor 1),
    which stays nearer the encoder's latents."""
    from bat_app.images import load_user_images
    from bat_app.models import load_components
    from bat_app.shapes import get_subject
    from bat_app.train.data import Example
    from bat_app.train.encode import LatentCache, to_pixels

    subject = get_subject("outlined_circle")
    files = sorted((PATHS.subjects / subject.name).glob("*.png"))[:5]
    examples = [Example(u.image, "a photo of sks circle") for u in load_user_images(files, resolution=32).images]
    components = load_components("shapes", device="cpu")
    vae, judge = components.vae, load_attribute_classifier(PATHS.classifier)
    pixels = torch.stack([to_pixels(e, 32) for e in examples])
    with torch.no_grad():
        mean = vae.encode(pixels).latent_dist.mean

    def refined(steps, anchor):  # the trainer's own path: encode, then refine each photo's mean
        stats = LatentCache(components, 32, None).get(examples, refine=steps, anchor=anchor)
        return torch.stack([m for m, _ in stats])

    def decoded(z):
        with torch.no_grad():
            return vae.decode(z).sample

    def outlined(images):
        arrays = ((images.permute(0, 2, 3, 1).numpy() + 1) * 127.5).clip(0, 255).round().astype(np.uint8)
        return [p["marking"] == "outline" for p in judge.predict(arrays)]

    def error(z):
        return torch.nn.functional.mse_loss(decoded(z), pixels)

    free, anchored = refined(50, 0.0), refined(100, 1.0)
    assert not all(outlined(decoded(mean)))
    assert all(outlined(decoded(free))) and all(outlined(decoded(anchored)))
    assert error(free) < error(anchored) < 0.6 * error(mean)
    assert (anchored - mean).norm() < 0.5 * (free - mean).norm()
