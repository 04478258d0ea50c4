"""Backdrop swaps: the user's photos on a plain background also shown on other plain colours."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from bat_app.errors import InputError
from bat_app.images.subject_mask import TOLERANCE, backdrop_colours, backdrop_region, new_backdrop
from bat_app.train import TrainConfig, train_lora
from bat_app.train.data import Example, with_backdrop_swaps

WHITE, BLUE = (250, 250, 250), (30, 90, 200)


def crescent(background=WHITE) -> Image.Image:
    """A blue crescent: its hollow opens onto the backdrop and belongs to it."""
    photo = Image.new("RGB", (64, 64), background)
    draw = ImageDraw.Draw(photo)
    draw.ellipse((12, 12, 52, 52), fill=BLUE)
    draw.ellipse((26, 8, 62, 44), fill=background)
    return photo


def test_the_backdrop_is_the_plain_colour_joined_to_the_border():
    region = backdrop_region(crescent())
    assert region[0, 0] and region[20, 45]  # a corner, and the crescent's hollow
    assert not region[40, 20]  # the crescent itself
    assert 0.3 < region.mean() < 0.9


def test_a_subject_that_wears_the_backdrops_colour_gets_no_swaps():
    checks = Image.new("RGB", (64, 64), WHITE)
    draw = ImageDraw.Draw(checks)
    draw.rectangle((12, 12, 51, 51), fill=BLUE)
    for y in range(12, 52, 8):
        for x in range(12 + (y // 8) % 2 * 8, 52, 16):
            draw.rectangle((x, y, x + 7, y + 7), fill=WHITE)  # white checks, some on the square's edge
    assert backdrop_region(checks) is None
    assert backdrop_region(Image.effect_noise((64, 64), 80).convert("RGB")) is None  # not plain


def test_a_new_backdrop_repaints_the_backdrop_and_nothing_else():
    photo = crescent()
    region = backdrop_region(photo)
    copy = np.asarray(new_backdrop(photo, (200, 40, 40), region))
    before = np.asarray(photo)
    assert (copy[region] == (200, 40, 40)).all()
    assert np.array_equal(copy[~region], before[~region])


def test_backdrop_colours_are_far_from_the_old_one_and_the_subject_and_follow_the_seed():
    photo = crescent()
    colours = backdrop_colours(photo, 8, np.random.default_rng(3))
    assert len(colours) == 8 and len(set(colours)) == 8
    for colour in colours:
        assert max(abs(c - o) for c, o in zip(colour, WHITE)) > 2 * TOLERANCE
        assert max(abs(c - s) for c, s in zip(colour, BLUE)) > 2 * TOLERANCE
    assert backdrop_colours(photo, 8, np.random.default_rng(3)) == colours


def test_every_photo_keeps_its_share_and_stated_contexts_stay_as_they_are():
    prompt = "a photo of sks moon"
    busy = Image.effect_noise((64, 64), 80).convert("RGB")
    examples = [Example(crescent(), prompt, name="plain.png"),
                Example(crescent(), f"{prompt} on a white background", name="captioned.png"),
                Example(busy, prompt, name="busy.png")]
    out, swapped = with_backdrop_swaps(examples, 3, prompt, seed=0)
    assert swapped == ["plain.png"]
    assert [e.name for e in out].count("plain.png") == 4
    assert [e.name for e in out].count("captioned.png") == 4 and [e.name for e in out].count("busy.png") == 4
    plain = [e for e in out if e.name == "plain.png"]
    assert len({e.key for e in plain}) == 4 and all(e.caption == prompt for e in plain)
    assert {e.key for e in out if e.name != "plain.png"} == {examples[1].key, examples[2].key}
    assert with_backdrop_swaps(examples, 0, prompt, seed=0) == (examples, [])
    assert [e.key for e in with_backdrop_swaps(examples, 3, prompt, seed=0)[0]] == [e.key for e in out]


def test_config_checks_the_swaps():
    with pytest.raises(InputError, match="`backdrop_swaps` must be an integer >= 0"):
        TrainConfig(backdrop_swaps=-1)
    assert TrainConfig().fingerprint() == TrainConfig(backdrop_swaps=0).fingerprint()  # old checkpoints resume
    assert TrainConfig().fingerprint() != TrainConfig(backdrop_swaps=4).fingerprint()


def quick(**kw) -> TrainConfig:
    return TrainConfig(**({"token": "sks", "class_noun": "disc", "steps": 6, "checkpoint_every": 0, "lr": 1e-3}
                          | kw))


def instance_encodes(events) -> int:
    """How many distinct instance images the trainer's VAE encoded."""
    return max(e.total for e in events if e.stage == "encode" and e.message == "instance images")


def test_the_trainer_shows_the_photos_on_new_backdrops_and_says_so(comps, images, tmp_path):
    events = []
    plain = train_lora(comps, images, quick(), tmp_path / "plain", export=False)
    swapped = train_lora(comps, images, quick(backdrop_swaps=4), tmp_path / "swapped", export=False,
                         progress=events.append, cache_root=tmp_path / "cache")
    assert swapped.losses != plain.losses
    assert "backdrop swaps: 3 of 3 photos also shown on 4 other plain colours" in [e.message for e in events]
    assert instance_encodes(events) == 3 * 5  # each photo as it is and on four new backdrops


def test_photos_without_a_plain_backdrop_train_as_before(comps, busy_images, tmp_path):
    events = []
    train_lora(comps, busy_images, quick(backdrop_swaps=2), tmp_path / "swapped", export=False, progress=events.append,
               cache_root=tmp_path / "cache")
    assert "backdrop swaps: 0 of 3 photos also shown on 2 other plain colours; as they are: busy0.png, busy1.png, " \
           "busy2.png" in [e.message for e in events]
    assert instance_encodes(events) == 3  # repeated for their share, never altered
