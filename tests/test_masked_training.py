"""Masked training: the subject's mask on a plain background, and the loss weighted by it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from bat_app.errors import InputError
from bat_app.images.subject_mask import subject_mask
from bat_app.models.families.base import weighted_mean
from bat_app.shapes import SUBJECTS, shapes_paths
from bat_app.train import TrainConfig, train_lora
from bat_app.train.data import Example
from bat_app.train.encode import loss_weight_map


def product_shot(size=64, box=(20, 20, 43, 43), background=(250, 250, 250), noise=0, seed=0) -> Image.Image:
    photo = Image.new("RGB", (size, size), background)
    ImageDraw.Draw(photo).ellipse(box, fill=(30, 90, 200))
    if noise:
        pixels = np.asarray(photo, dtype=np.int16) + np.random.default_rng(seed).integers(-noise, noise + 1,
                                                                                          (size, size, 3))
        photo = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    return photo


def test_a_subject_on_a_plain_background_is_masked():
    mask = np.asarray(subject_mask(product_shot(noise=8)))  # JPEG-like noise stays background
    assert mask[32, 32] == 255 and mask[2, 2] == 0 and mask[60, 5] == 0
    assert 0.1 < (mask > 0).mean() < 0.2  # the disc: pi * 12^2 / 64^2 = 0.11
    # A subject running off one edge still leaves a plain enough border.
    cut = np.asarray(subject_mask(product_shot(box=(20, 40, 43, 80))))
    assert cut[63, 32] == 255 and cut[0, 32] == 0


def test_a_busy_or_empty_photo_gets_no_mask():
    busy = Image.effect_noise((64, 64), 80).convert("RGB")
    assert subject_mask(busy) is None
    assert subject_mask(Image.new("RGB", (64, 64), "white")) is None


def test_every_shapes_example_photo_is_on_a_plain_background():
    for subject in SUBJECTS:
        for path in sorted((shapes_paths().subjects / subject.name).glob("*.png")):
            mask = subject_mask(Image.open(path))
            assert mask is not None, path
            assert 0.1 < (np.asarray(mask) > 0).mean() < 0.6, path


def test_the_weight_map_is_one_on_every_cell_that_holds_subject():
    example = Example(product_shot(box=(0, 0, 15, 15)), "a photo of sks disc")  # top-left quarter only
    weights = loss_weight_map(example, 64, None, (8, 8), 0.1)
    assert weights.shape == (1, 8, 8)
    assert torch.all(weights[0, :2, :2] == 1.0)
    assert weights[0, 4:, 4:].allclose(torch.tensor(0.1))
    assert loss_weight_map(Example(Image.effect_noise((64, 64), 80).convert("RGB"), "x"), 64, None, (8, 8),
                           0.1) is None


def test_weighted_mean_is_the_mean_over_the_weighted_cells():
    error = torch.arange(2 * 4 * 2 * 2, dtype=torch.float32).view(2, 4, 2, 2)
    assert torch.equal(weighted_mean(error, None), error.mean(dim=(1, 2, 3)))
    assert weighted_mean(error, torch.ones(2, 1, 2, 2)).allclose(error.mean(dim=(1, 2, 3)))
    only_first = torch.zeros(2, 1, 2, 2)
    only_first[:, :, 0, 0] = 1.0
    assert weighted_mean(error, only_first).allclose(error[:, :, 0, 0].mean(dim=1))


def test_config_checks_the_background_weight():
    with pytest.raises(InputError, match="`background_weight` must be a number in \\[0, 1\\]"):
        TrainConfig(background_weight=1.5)
    # Off (1) hashes as before, so checkpoints made before the setting still resume.
    assert TrainConfig().fingerprint() == TrainConfig(background_weight=1.0).fingerprint()
    assert TrainConfig().fingerprint() != TrainConfig(background_weight=0.1).fingerprint()


def quick(**kw) -> TrainConfig:
    return TrainConfig(**({"token": "sks", "class_noun": "disc", "steps": 6, "checkpoint_every": 0, "lr": 1e-3}
                          | kw))


def test_masked_training_changes_the_loss_and_says_what_it_masked(comps, images, tmp_path):
    events = []
    whole = train_lora(comps, images, quick(), tmp_path / "whole", export=False)
    masked = train_lora(comps, images, quick(background_weight=0.1), tmp_path / "masked", export=False,
                        progress=events.append)
    again = train_lora(comps, images, quick(background_weight=1.0), tmp_path / "again", export=False)
    assert again.losses == whole.losses  # off is the unmasked training, draw for draw
    assert masked.losses != whole.losses
    assert any(not torch.equal(masked.unet_lora[k], whole.unet_lora[k]) for k in whole.unet_lora)
    assert any("masked training: 3 of 3 photos on a plain background" == (e.message or "") for e in events)


def test_photos_without_a_plain_background_train_whole(comps, busy_images, tmp_path):
    events = []
    whole = train_lora(comps, busy_images, quick(), tmp_path / "whole", export=False)
    masked = train_lora(comps, busy_images, quick(background_weight=0.1), tmp_path / "masked", export=False,
                        progress=events.append)
    assert masked.losses == whole.losses
    message = next(e.message for e in events if (e.message or "").startswith("masked training"))
    assert message == "masked training: 0 of 3 photos on a plain background; trained whole: busy0.png, busy1.png, " \
                      "busy2.png"
