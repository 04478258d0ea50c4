"""Earlier steps of a training, exported as users load them, and the CLIP and pixel scores that pick one."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw
from safetensors.torch import load_file

from bat_app.errors import InputError
from bat_app.export import DIFFUSERS_FILE
from bat_app.export.embeddings import find_embeddings
from bat_app.preview import sample_images
from bat_app.metrics.subject_match import appearance, sample_matches
from bat_app.preview.prompts import load_prompt_set
from bat_app.preview.step_pick import (appearance_steps, best_step, candidate_steps, score_steps, steps_grid,
                                       steps_picture)
from bat_app.train import TrainConfig, train_lora
from bat_app.train.checkpoint import saved_steps


def quick(**kw) -> TrainConfig:
    base = dict(token="sks", class_noun="disc", steps=6, checkpoint_every=0, lr=1e-2, seed=0,
                pivotal=True, embedding_lr=5e-2)
    return TrainConfig(**(base | kw))


def test_save_every_exports_earlier_steps_and_leaves_the_training_as_it_was(comps, images, tmp_path):
    plain = train_lora(comps, images, quick(), tmp_path / "plain")
    saved = train_lora(comps, images, quick(save_every=2), tmp_path / "saved")
    steps = saved_steps(tmp_path / "saved")
    assert list(steps) == [2, 4]  # the final step is the export itself
    for folder in steps.values():
        assert (folder / DIFFUSERS_FILE).is_file() and find_embeddings(folder) is not None
    # the same draws: the final LoRA is the one a run without save_every makes
    final_plain = load_file(plain.files["diffusers"])
    final_saved = load_file(saved.files["diffusers"])
    assert final_plain.keys() == final_saved.keys()
    assert all(np.array_equal(final_plain[k].numpy(), final_saved[k].numpy()) for k in final_plain)
    # an earlier step is another LoRA, and it draws another picture
    early = load_file(steps[2] / DIFFUSERS_FILE)
    assert any(not np.array_equal(early[k].numpy(), final_saved[k].numpy()) for k in early)
    prompt = ["a photo of sks disc"]
    at_2 = np.asarray(sample_images(comps, prompt, [0], steps[2])[0][0], dtype=float)
    at_6 = np.asarray(sample_images(comps, prompt, [0], tmp_path / "saved")[0][0], dtype=float)
    assert np.abs(at_2 - at_6).mean() > 0.5


def test_save_every_must_be_a_count():
    with pytest.raises(InputError, match="`save_every` must be an integer >= 0"):
        TrainConfig(save_every=-1)


class _ColourEmbedder:
    """Stands in for CLIP: an image's mean colour; a text's fixed direction. Enough to check the
    bookkeeping: which rows are scored against what."""

    def encode_images(self, images):
        rows = np.stack([np.asarray(im.convert("RGB"), dtype=float).mean(axis=(0, 1)) + 1.0 for im in images])
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    def encode_texts(self, texts):
        return np.tile(np.array([[1.0, 0.0, 0.0]]), (len(texts), 1))


def test_score_steps_scores_each_step_and_the_pick_takes_the_best(comps, images, tmp_path):
    train_lora(comps, images, quick(save_every=3), tmp_path / "run")
    folders = saved_steps(tmp_path / "run") | {6: tmp_path / "run"}
    seen = []
    scores = score_steps(comps, folders, [u.image for u in images], _ColourEmbedder(), "sks", "disc",
                         prompt_set="object", seeds=[0, 1], progress=lambda done, total: seen.append((done, total)))
    assert list(scores) == [3, 6] and seen == [(1, 2), (2, 2)]
    for s in scores.values():
        assert s["score"] == pytest.approx(s["clip_i"] + s["clip_t"], abs=2e-4)
        assert -1 <= s["clip_i"] <= 1 and -1 <= s["clip_t"] <= 1
    assert scores[3] != scores[6]  # other weights, other pictures, other scores
    assert best_step(scores) == max(scores, key=lambda k: scores[k]["score"])
    # the same LoRA twice scores the same (seeds fix the pictures): a tie keeps the later step
    again = score_steps(comps, {1: tmp_path / "run", 2: tmp_path / "run"}, [u.image for u in images],
                        _ColourEmbedder(), "sks", "disc", prompt_set="object", seeds=[0])
    assert again[1] == again[2] and best_step(again) == 2


def test_the_save_every_flag_reaches_the_training_config(tiny_model_dir, subject_dir):
    from bat_app.cli import build_parser, train_config_from_args

    base = ["train", "--images", str(subject_dir), "--class-noun", "disc", "--model", str(tiny_model_dir),
            "--out", "o"]
    assert train_config_from_args(build_parser().parse_args(base), 4).save_every == 0
    assert train_config_from_args(build_parser().parse_args([*base, "--save-every", "50"]), 4).save_every == 50
    # the step choices: the recipe's (a folder model gets the SD-sized recipe: none), or the flag's
    assert train_config_from_args(build_parser().parse_args(base), 4).step_choices == 0
    chosen = train_config_from_args(build_parser().parse_args([*base, "--step-choices", "2", "--steps", "300"]), 4)
    assert chosen.step_choices == 2 and chosen.export_steps() == [200, 250]
    shapes = train_config_from_args(build_parser().parse_args([*base[:-4], "--model", "shapes", "--out", "o"]), 5)
    assert shapes.step_choices == 2 and shapes.export_steps() == [200, 250]  # the shapes recipe's 300 steps


def _square(background, at, size, dot=True, fill=(200, 30, 30)):
    im = Image.new("RGB", (32, 32), background)
    draw = ImageDraw.Draw(im)
    draw.rectangle((at[0], at[1], at[0] + size - 1, at[1] + size - 1), fill=fill)
    if dot:
        c = size // 2
        draw.ellipse((at[0] + c - size // 5, at[1] + c - size // 5, at[0] + c + size // 5, at[1] + c + size // 5),
                     fill=(250, 250, 40))
    return im


def test_the_pixel_match_sees_a_lost_marking_wherever_the_subject_stands():
    photos = [_square("white", (4, 4), 12), _square((40, 90, 200), (14, 10), 16)]
    elsewhere = _square((30, 160, 60), (18, 2), 10)  # the subject, smaller, on another backdrop
    plain = _square((30, 160, 60), (18, 2), 10, dot=False)  # the same without its dot
    recoloured = _square("white", (8, 8), 14, fill=(30, 30, 200))
    off_every_edge = Image.new("RGB", (32, 32), "black")  # a ringed disc over every edge: no plain border
    ImageDraw.Draw(off_every_edge).ellipse((-3, -3, 34, 34), fill=(200, 30, 30), outline="white", width=3)
    noise = Image.effect_noise((32, 32), 80).convert("RGB")
    found = sample_matches([elsewhere, plain, recoloured, off_every_edge, noise], photos)
    assert found[3:] == [None, None]
    assert found[0] > 0.95 and found[0] > found[1] + 0.02 and found[1] > found[2] + 0.2
    # left out, not counted as 0: size is not a lost detail
    assert appearance([elsewhere, off_every_edge], photos) == pytest.approx(found[0])
    assert appearance([noise], photos) == 0.0
    with pytest.raises(ValueError, match="plain background"):
        sample_matches([elsewhere], [noise])


def test_appearance_steps_scores_every_subject_sample_of_every_step(comps, images, tmp_path):
    train_lora(comps, images, quick(save_every=3), tmp_path / "run")
    folders = saved_steps(tmp_path / "run") | {6: tmp_path / "run"}
    subject_prompts = [p for kind, p in load_prompt_set("object").prompts("sks", "disc") if kind == "subject"]
    photos = [_square("white", (4, 4), 12)]
    seen = []
    matches = appearance_steps(comps, folders, photos, "sks", "disc", prompt_set="object", seeds=[0, 1],
                               progress=lambda done, total: seen.append((done, total)))
    assert list(matches) == [3, 6] and seen == [(1, 2), (2, 2)]
    for scores in matches.values():
        assert len(scores) == 2 * len(subject_prompts)
        assert all(m is None or 0.0 <= m <= 1.0 for m in scores)


def test_the_steps_grid_shows_each_candidate_step_on_the_same_prompts_and_seeds(comps, images, tmp_path):
    train_lora(comps, images, quick(save_every=2), tmp_path / "run")
    folders = candidate_steps(saved_steps(tmp_path / "run"), 6, tmp_path / "run")
    assert sorted(folders) == [4, 6]  # the last third and the final export
    prompts = load_prompt_set("object").prompts("sks", "disc")
    seen = []
    grid = steps_grid(comps, folders, "sks", "disc", prompt_set="object", seeds=[0, 1], cell=32,
                      progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 2), (2, 2)]
    pad, cell, left, top = 4, 32, 260, 16 + 4
    assert grid.size == (left + 4 * (cell + pad) + pad, top + len(prompts) * (cell + pad) + pad)
    pixels = np.asarray(grid, dtype=float)

    def block(step_index):  # the first prompt's row, the step's two seeds
        x0 = left + pad + step_index * 2 * (cell + pad)
        return pixels[top + pad:top + pad + cell, x0:x0 + 2 * cell + pad]
    assert np.abs(block(0) - block(1)).mean() > 0.5  # other weights, same seeds: another picture


def test_the_steps_picture_puts_the_users_photos_on_top_to_compare_with():
    cell, pad, left, top = 32, 4, 260, 16 + 4
    step = lambda colour: [[Image.new("RGB", (cell, cell), colour)] * 2]  # noqa: E731  one prompt, two seeds
    samples = {200: step("red"), 300: step("blue")}
    photos = [Image.new("RGB", (cell, cell), "green") for _ in range(6)]  # more photos than the 4 columns
    plain = steps_picture(samples, ["a sks disc"], 2, cell)
    shown = np.asarray(steps_picture(samples, ["a sks disc"], 2, cell, photos=photos))
    assert shown.shape[0] == plain.size[1] + cell + pad and shown.shape[1] == plain.size[0]
    first_row = shown[top + pad:top + pad + cell, left + pad:]
    greens = [first_row[:, c * (cell + pad):c * (cell + pad) + cell] for c in range(4)]
    assert all((g == (0, 128, 0)).all() for g in greens)  # four photos, one per column
    # the samples keep their blocks, one row down
    assert (shown[top + 2 * pad + cell:top + 2 * pad + 2 * cell, left + pad:left + pad + cell] == (255, 0, 0)).all()
    one = np.asarray(steps_picture(samples, ["a sks disc"], 2, cell, photos=photos[:1]))
    assert (one[top + pad:top + pad + cell, left + 2 * pad + cell:left + 2 * pad + 2 * cell] == 255).all()  # blank
