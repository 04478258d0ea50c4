"""The DreamBooth-LoRA trainer on the tiny model: learning, determinism, resume, caches."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from bat_app.errors import Cancelled, CheckpointError, InputError
from bat_app.models import build_pipeline, load_components
from bat_app.train import TrainConfig, examples_from_pairs, train_lora
from bat_app.train import prior as prior_module
from bat_app.train.encode import LatentCache, sample_latents
from bat_app.train.data import instance_examples
from bat_app.models.families import stack_cond
from bat_app.train.objective import draw_noise
from bat_app.train.encode import TextCache


def quick(**kw) -> TrainConfig:
    base = dict(token="sks", class_noun="disc", steps=8, checkpoint_every=0, lr=1e-3, seed=0)
    return TrainConfig(**(base | kw))


def instance_loss(comps, images, config, draws: int = 16) -> float:
    """Diffusion loss on the instance images with fixed (t, noise) draws (seed 123)."""
    examples = instance_examples(images, config.prompt, config.token)
    stats = LatentCache(comps, 32, None).get(examples)
    cond = stack_cond(TextCache(comps).get([e.caption for e in examples]))
    gen = torch.Generator().manual_seed(123)
    total = 0.0
    with torch.no_grad():
        for _ in range(draws):
            latents = sample_latents(comps, stats, gen)
            noise, t = draw_noise(latents.shape, gen, 1000)
            total += comps.family.loss(comps, latents, cond, noise, t).mean().item()
    return total / draws


# --- config ------------------------------------------------------------------------------

def test_config_round_trip_and_unknown_keys():
    cfg = TrainConfig(token="sks", class_noun="dog", steps=10, rank=8, alpha=4)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(InputError, match="Unknown training setting 'stpes'"):
        TrainConfig.from_dict({"stpes": 10})


@pytest.mark.parametrize("kw,message", [
    ({"steps": 0}, "`steps` must be a positive integer, got 0"),
    ({"lr": 3.0}, "`lr` must be a number in"),
    ({"resolution": 100}, "multiple of 8"),
    ({"token": "two words"}, "must be one word"),
    ({"class_noun": " "}, "class_noun is empty"),
    ({"mixed_precision": "fp8"}, "mixed_precision"),
    ({"instance_prompt": "a photo of a dog"}, "does not contain the token"),
])
def test_config_rejects_bad_values(kw, message):
    with pytest.raises(InputError, match=message):
        TrainConfig(**kw)


def test_unknown_target_modules_are_refused(comps, images, tmp_path):
    with pytest.raises(InputError, match="None of target_modules"):
        train_lora(comps, images, quick(target_modules=["nonexistent"]), tmp_path)


# --- learning ----------------------------------------------------------------------------

def test_training_lowers_the_instance_loss(comps, images, tmp_path):
    config = quick(steps=80, rank=8, lr=5e-3)
    before = instance_loss(comps, images, config)
    result = train_lora(comps, images, config, tmp_path / "run")
    pipe = build_pipeline(comps)
    pipe.load_lora_weights(str(result.files["diffusers"].parent), weight_name=result.files["diffusers"].name)
    after = instance_loss(comps, images, config)
    pipe.unload_lora_weights()
    assert after < before * 0.97, (before, after)
    # The trainer leaves the shared modules clean: no adapter, no trainable parameter.
    assert not getattr(comps.denoiser, "peft_config", None) or "bat" not in comps.denoiser.peft_config
    assert instance_loss(comps, images, config) == pytest.approx(before, rel=1e-6)


def test_same_seed_same_result_and_different_seed_differs(comps, images, tmp_path):
    a = train_lora(comps, images, quick(), tmp_path / "a", export=False)
    b = train_lora(comps, images, quick(), tmp_path / "b", export=False)
    c = train_lora(comps, images, quick(seed=1), tmp_path / "c", export=False)
    assert a.losses == b.losses
    assert all(torch.equal(a.unet_lora[k], b.unet_lora[k]) for k in a.unet_lora)
    assert a.losses != c.losses


def test_resume_matches_an_uninterrupted_run(comps, images, tmp_path):
    config = quick(steps=12, checkpoint_every=4)
    straight = train_lora(comps, images, config, tmp_path / "straight", export=False)

    calls = {"n": 0}

    def cancel_at_step_7():
        calls["n"] += 1
        return calls["n"] == 7

    with pytest.raises(Cancelled, match="cancelled at step 6/12"):
        train_lora(comps, images, config, tmp_path / "resumed", cancel=cancel_at_step_7, export=False)
    assert (tmp_path / "resumed" / "checkpoints" / "step-000006").is_dir()
    resumed = train_lora(comps, images, config, tmp_path / "resumed", resume=True, export=False)
    assert resumed.resumed_from == 6
    assert resumed.losses == pytest.approx(straight.losses, rel=1e-5, abs=1e-6)
    for key, value in straight.unet_lora.items():
        torch.testing.assert_close(resumed.unet_lora[key], value, rtol=1e-5, atol=1e-6)


def test_resume_refuses_other_settings(comps, images, tmp_path):
    train_lora(comps, images, quick(steps=4, checkpoint_every=2), tmp_path, export=False)
    with pytest.raises(CheckpointError, match="different training settings"):
        train_lora(comps, images, quick(steps=4, checkpoint_every=2, rank=8), tmp_path, resume=True, export=False)


def test_checkpoints_keep_only_the_newest(comps, images, tmp_path):
    train_lora(comps, images, quick(steps=8, checkpoint_every=2, keep_checkpoints=2), tmp_path, export=False)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000006", "step-000008"]


def test_progress_reports_every_step_with_eta(comps, images, tmp_path):
    events = []
    train_lora(comps, images, quick(steps=5), tmp_path, progress=events.append, export=False)
    steps = [e for e in events if e.stage == "train"]
    assert [e.step for e in steps] == [1, 2, 3, 4, 5] and all(e.total == 5 for e in steps)
    assert all(e.loss is not None and e.loss > 0 for e in steps)
    assert steps[-1].it_per_s > 0 and steps[-1].eta_s == 0
    assert any(e.stage == "encode" for e in events)


def test_v_prediction_model_trains(tiny_vpred_model_dir, images, tmp_path):
    comps = load_components(str(tiny_vpred_model_dir))
    assert comps.noise_scheduler.config.prediction_type == "v_prediction"
    result = train_lora(comps, images, quick(steps=3), tmp_path, export=False)
    assert len(result.losses) == 3 and all(torch.isfinite(torch.tensor(result.losses)))


def test_text_encoder_lora(comps, images, tmp_path):
    result = train_lora(comps, images, quick(steps=3, train_text_encoder=True), tmp_path, export=False)
    assert result.text_encoder_lora and all("lora_" in k for k in result.text_encoder_lora)
    assert any("q_proj" in k for k in result.text_encoder_lora)


def test_augmentation_examples_enter_the_loss(comps, images, tmp_path):
    from PIL import Image

    pairs = [(Image.new("RGB", (32, 32), c), f"a {n} square") for c, n in [((0, 0, 255), "blue"), ((0, 255, 0), "green")]]
    augment = examples_from_pairs(pairs)
    plain = train_lora(comps, images, quick(steps=3), tmp_path / "plain", export=False)
    mixed = train_lora(comps, images, quick(steps=3, aug_weight=0.5), tmp_path / "mixed", augment=augment, export=False)
    off = train_lora(comps, images, quick(steps=3, aug_weight=0.0), tmp_path / "off", augment=augment, export=False)
    assert mixed.losses != plain.losses
    assert off.losses == plain.losses  # lambda = 0 switches the augmentation group off


# --- caches ------------------------------------------------------------------------------

def test_latents_are_encoded_once_across_runs(comps, images, tmp_path, monkeypatch):
    calls = {"n": 0}
    encode = comps.vae.encode

    def counting_encode(*a, **kw):
        calls["n"] += 1
        return encode(*a, **kw)

    monkeypatch.setattr(comps.vae, "encode", counting_encode)
    train_lora(comps, images, quick(steps=2), tmp_path / "one", cache_root=tmp_path / "cache", export=False)
    first = calls["n"]
    assert first >= 1
    train_lora(comps, images, quick(steps=4, seed=3), tmp_path / "two", cache_root=tmp_path / "cache", export=False)
    assert calls["n"] == first  # every latent came from the cache


def test_refined_latents_decode_closer_to_the_photos_and_are_cached_apart(comps, images, tmp_path):
    from bat_app.train.encode import to_pixels

    examples = instance_examples(images[:2], "a photo of sks disc", "sks")
    cache = LatentCache(comps, 32, tmp_path)
    plain = cache.get(examples)
    refined = cache.get(examples, refine=10)
    assert cache.encoded == 4  # the refined means are their own cache entries, not the plain ones
    assert cache.key(examples[0], 10) != cache.key(examples[0])
    pixels = torch.stack([to_pixels(e, 32) for e in examples])

    def error(stats):
        with torch.no_grad():
            return torch.nn.functional.mse_loss(comps.vae.decode(torch.stack([m for m, _ in stats])).sample, pixels)

    assert error(refined) < error(plain)
    assert all(torch.equal(a[1], b[1]) for a, b in zip(plain, refined))  # the std is the encoder's
    assert all(p.grad is None for p in comps.vae.parameters())  # only the latent got gradients
    again = LatentCache(comps, 32, tmp_path).get(examples, refine=10)  # from disk
    assert all(torch.equal(a[0], b[0]) for a, b in zip(refined, again))


def test_refinement_can_weight_the_subjects_pixels(comps, images, busy_images, tmp_path):
    from bat_app.images.subject_mask import subject_mask
    from bat_app.train.encode import subject_pixel_weights, to_pixels, training_image

    examples = instance_examples(images[:2], "a photo of sks disc", "sks")
    cache = LatentCache(comps, 32, tmp_path)
    alike = cache.get(examples, refine=10, anchor=1.0)
    weighted = cache.get(examples, refine=10, anchor=1.0, subject_weight=16)
    assert cache.encoded == 4 and cache.key(examples[0], 10, 1.0, 16).endswith("-refine10-anchor1-subject16")
    pixels = torch.stack([to_pixels(e, 32) for e in examples])
    subject = torch.stack([torch.from_numpy(np.asarray(subject_mask(training_image(e, 32)), dtype=np.float32) / 255)
                           for e in examples])[:, None]

    def subject_error(stats):
        with torch.no_grad():
            error = (comps.vae.decode(torch.stack([m for m, _ in stats])).sample - pixels).pow(2)
        return float((error * subject).sum() / (subject.sum() * 3))

    assert subject_error(weighted) < subject_error(alike)
    weights = subject_pixel_weights(examples[0], 32, None, 16)
    assert sorted(weights.unique().tolist()) == [1.0, 16.0]
    assert subject_pixel_weights(examples[0], 32, None, 1) is None
    busy = instance_examples(busy_images[:1], "a photo of sks disc", "sks")[0]
    assert subject_pixel_weights(busy, 32, None, 16) is None  # no plain backdrop: every pixel alike
    with pytest.raises(InputError, match="refine_subject_weight"):
        quick(refine_subject_weight=-1)


def test_refine_latents_trains_and_changes_only_the_photos_latents(comps, images, tmp_path):
    cache = tmp_path / "cache"
    train_lora(comps, images, quick(steps=2, refine_latents=5), tmp_path / "lora", cache_root=cache, export=False)
    names = sorted(p.name for p in (cache / "latents").rglob("*.safetensors"))
    assert len(names) == len(images) and all(n.endswith("-refine5-anchor1.safetensors") for n in names)
    with pytest.raises(InputError, match="refine_latents"):
        quick(refine_latents=-1)
    with pytest.raises(InputError, match="refine_anchor"):
        quick(refine_anchor=-0.5)


def test_class_images_are_cached_and_topped_up(comps, tmp_path, monkeypatch):
    made = []
    real = prior_module.build_pipeline

    def counting_pipeline(components):
        pipe = real(components)
        original = pipe.__call__

        class Wrapped:
            def __call__(self, prompts, **kw):
                made.extend(prompts)
                return original(prompts, **kw)

        return Wrapped()

    monkeypatch.setattr(prior_module, "build_pipeline", counting_pipeline)
    first = prior_module.ensure_class_images(comps, "a photo of disc", 2, 32, tmp_path)
    assert len(made) == 2 and all(p.is_file() for p in first)
    again = prior_module.ensure_class_images(comps, "a photo of disc", 2, 32, tmp_path)
    assert again == first and len(made) == 2  # reused, nothing generated
    more = prior_module.ensure_class_images(comps, "a photo of disc", 3, 32, tmp_path)
    assert more[:2] == first and len(made) == 3  # only the missing one
    other = prior_module.ensure_class_images(comps, "a photo of cat", 1, 32, tmp_path)
    assert other[0].parent != first[0].parent

    # two lanes of a compare run reaching the same class images at once: each image drawn once
    import threading

    made.clear()
    lanes = [threading.Thread(target=prior_module.ensure_class_images,
                              args=(comps, "a photo of star", 2, 32, tmp_path)) for _ in range(2)]
    [lane.start() for lane in lanes]
    [lane.join() for lane in lanes]
    assert made == ["a photo of star"] * 2


def test_prior_preservation_trains_on_class_images(comps, images, tmp_path):
    events = []
    result = train_lora(comps, images, quick(steps=3, prior=True, num_class_images=2), tmp_path / "run",
                        cache_root=tmp_path / "cache", progress=events.append, export=False)
    assert len(result.losses) == 3
    assert [e.step for e in events if e.stage == "class_images"][-1] == 2
    assert len(list((tmp_path / "cache" / "class_images").glob("*/*.png"))) == 2


def test_the_drop_schedule_trains_the_last_fifth_at_a_tenth_of_the_lr():
    from bat_app.train.loop import make_optimizer

    param = [torch.nn.Parameter(torch.zeros(2))]
    optimizer, scheduler = make_optimizer(param, [], quick(steps=10, lr_schedule="drop"))
    used = []
    for _ in range(10):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert used == pytest.approx([1e-3] * 8 + [1e-4] * 2)
    with pytest.raises(InputError, match="lr_drop_fraction"):
        quick(lr_schedule="drop", lr_drop_fraction=1.0)
