"""Earlier steps of a training, exported as users load them, and the CLIP score that picks one."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.torch import load_file

from bat_app.errors import InputError
from bat_app.export import DIFFUSERS_FILE
from bat_app.export.embeddings import find_embeddings
from bat_app.preview import sample_images
from bat_app.preview.step_pick import best_step, score_steps
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
