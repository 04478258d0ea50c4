"""ALBAT's loss-reduction score on the tiny model: exact zero for identical adapters, shared
draws, determinism, and a positive score where the surrogate learned."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bat_app.albat.score import loss_reduction, train_surrogate
from bat_app.train import TrainConfig
from bat_app.train.data import Example


CONFIG = TrainConfig(token="sks", class_noun="disc", steps=40, lr=5e-3, rank=4, checkpoint_every=0)


def candidates(images) -> list[Example]:
    """The subject's own photos (instance prompt) and unrelated flat colours."""
    own = [Example(u.image, CONFIG.prompt) for u in images]
    flat = [Example(Image.new("RGB", (32, 32), c), f"a {n} square") for c, n in
            [((0, 0, 255), "blue"), ((0, 200, 0), "green"), ((250, 250, 0), "yellow")]]
    return own + flat


def test_identical_adapters_give_exactly_zero(comps, images, tmp_path):
    surrogate = train_surrogate(comps, images, CONFIG, 5, tmp_path)
    deltas = loss_reduction(comps, candidates(images), 32, surrogate, CONFIG, reference=surrogate, draws=3,
                            cache_root=tmp_path)
    assert np.array_equal(deltas, np.zeros(len(deltas)))


def test_zero_adapter_against_the_backbone_is_exactly_zero(comps, images, tmp_path):
    surrogate = train_surrogate(comps, images, CONFIG, 2, tmp_path)
    zero = {k: torch.zeros_like(v) for k, v in surrogate.items()}
    deltas = loss_reduction(comps, candidates(images), 32, zero, CONFIG, draws=3, cache_root=tmp_path)
    assert np.array_equal(deltas, np.zeros(len(deltas)))


def test_surrogate_lowers_the_loss_of_its_own_images(comps, images, tmp_path):
    surrogate = train_surrogate(comps, images, CONFIG, 40, tmp_path)
    deltas = loss_reduction(comps, candidates(images), 32, surrogate, CONFIG, draws=8, cache_root=tmp_path)
    own = deltas[:len(images)]
    assert own.mean() > 0 and (own > 0).all(), deltas


def test_score_is_deterministic_for_a_seed_and_varies_with_it(comps, images, tmp_path):
    surrogate = train_surrogate(comps, images, CONFIG, 10, tmp_path)
    run = lambda seed: loss_reduction(comps, candidates(images), 32, surrogate, CONFIG, draws=2, seed=seed,
                                      cache_root=tmp_path)
    a, b, c = run(0), run(0), run(1)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_shared_draws_reduce_variance(comps, images, tmp_path):
    """With independent draws for the two losses the estimate scatters far more."""
    from bat_app.albat import score

    surrogate = train_surrogate(comps, images, CONFIG, 20, tmp_path)
    examples = candidates(images)[:1] * 12  # one item, scored 12 times with different draws
    shared = loss_reduction(comps, examples, 32, surrogate, CONFIG, draws=1, cache_root=tmp_path)

    real = score.draw_noise
    calls = {"n": 0}
    # Independent draws: the reference and adapted passes each get their own noise and t.
    original = score._loss_with

    def unshared(unet, adapter, scheduler, latents, hidden, noise, t):
        calls["n"] += 1
        gen = torch.Generator().manual_seed(1000 + calls["n"])
        noise, t = real(latents.shape, gen, scheduler.config.num_train_timesteps)
        return original(unet, adapter, scheduler, latents, hidden, noise, t)

    score._loss_with = unshared
    try:
        unshared_deltas = loss_reduction(comps, examples, 32, surrogate, CONFIG, draws=1, cache_root=tmp_path,
                                         batch_size=1)
    finally:
        score._loss_with = original
    assert shared.std() * 3 < unshared_deltas.std(), (shared.std(), unshared_deltas.std())


def test_surrogate_is_cached(comps, images, tmp_path, monkeypatch):
    first = train_surrogate(comps, images, CONFIG, 3, tmp_path)
    from bat_app.albat import score

    monkeypatch.setattr(score, "train_lora", lambda *a, **k: pytest.fail("surrogate retrained"))
    again = train_surrogate(comps, images, CONFIG, 3, tmp_path)
    assert all(torch.equal(first[k], again[k]) for k in first)
