"""ALBAT's loss-reduction score on the tiny model: exact zero for identical adapters, draws shared
by the two passes and by every candidate, stratified timesteps, per-stratum standardisation,
the prompt-specific variant, determinism per score seed, the surrogate cache and the cache of the
backbone's own losses."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bat_app.albat import SelectionContext, SelectionParams, get_score
from bat_app.albat.draws import SharedDraws, stratified_timesteps
from bat_app.albat.score import loss_matrix, loss_reduction, standardise_strata
from bat_app.albat.surrogate import surrogate_path, surrogate_snapshot, train_surrogate
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


def test_every_candidate_gets_the_same_draws(comps, images, tmp_path):
    """One item entered 6 times, in different batches, scores the same in every draw (up to
    float rounding, which differs with the batch size); with independent draws the copies scatter."""
    surrogate = train_surrogate(comps, images, CONFIG, 20, tmp_path)
    copies = candidates(images)[:1] * 6
    shared, _ = loss_matrix(comps, copies, 32, surrogate, CONFIG, draws=4, batch_size=4, cache_root=tmp_path)
    np.testing.assert_allclose(shared, np.repeat(shared[:, :1], 6, axis=1), rtol=1e-4)
    independent, _ = loss_matrix(comps, copies, 32, surrogate, CONFIG, draws=4, independent=True,
                                 cache_root=tmp_path)
    spread = lambda d: d.mean(axis=0).std() / abs(d.mean())
    assert spread(independent) > 0.05 > 100 * spread(shared), (spread(independent), spread(shared))


def test_the_two_passes_share_their_draw(comps, images, tmp_path, monkeypatch):
    """With the reference pass given its own noise and timestep, Delta scatters far more (the
    common-random-numbers argument of score.py)."""
    from bat_app.albat import score

    surrogate = train_surrogate(comps, images, CONFIG, 20, tmp_path)
    examples = candidates(images)
    shared, _ = loss_matrix(comps, examples, 32, surrogate, CONFIG, draws=12, cache_root=tmp_path)
    original = score._loss_with
    gen = torch.Generator().manual_seed(1000)

    def reference_redrawn(components, adapter, latents, cond, noise, t):
        if adapter is None:  # the backbone pass: its own noise and timestep
            noise = torch.randn(noise.shape, generator=gen)
            t = torch.randint(0, components.family.num_timesteps(components), t.shape, generator=gen)
        return original(components, adapter, latents, cond, noise, t)

    monkeypatch.setattr(score, "_loss_with", reference_redrawn)
    unshared, _ = loss_matrix(comps, examples, 32, surrogate, CONFIG, draws=12,
                              cache_root=tmp_path / "unshared")  # not the reference losses cached above
    assert shared.std(axis=0).mean() * 3 < unshared.std(axis=0).mean(), (shared.std(), unshared.std())


def test_timesteps_are_stratified_over_the_schedule():
    for count in (1, 4, 8, 16, 1000):
        t = stratified_timesteps(count, 1000, torch.Generator().manual_seed(count))
        strata = (t * count // 1000).tolist()
        assert strata == list(range(count)), (count, t)
    draws = SharedDraws.make(8, (4, 8, 8), 1000, seed=3)
    t, noise, eps = draws.batch(2, 5, 9)
    assert t.tolist() == [int(draws.timesteps[2])] * 4 and noise.shape == (4, 4, 8, 8)
    assert torch.equal(noise[0], noise[3]) and not torch.equal(noise[0], eps[0])


def test_standardise_divides_each_stratum_by_its_spread_and_keeps_signs():
    rng = np.random.default_rng(0)
    matrix = rng.normal(0.1, 1.0, (4, 50)) * np.array([[100.0], [1.0], [0.01], [5.0]])
    z = standardise_strata(matrix)
    np.testing.assert_allclose(z.std(axis=1), 1.0)
    assert np.array_equal(np.sign(z), np.sign(matrix))
    # without it the row with the largest values alone decides the ranking
    assert np.corrcoef(matrix.mean(axis=0), matrix[0])[0, 1] > 0.99
    assert np.corrcoef(z.mean(axis=0), matrix[0])[0, 1] < 0.9
    zeros = np.zeros((3, 5))
    assert np.array_equal(standardise_strata(zeros), zeros)


def test_prompt_specific_score_removes_the_empty_caption_part(comps, images, tmp_path):
    surrogate = train_surrogate(comps, images, CONFIG, 20, tmp_path)
    examples = candidates(images)
    params = SelectionParams(draws=3, standardise=False, score_seed=5)
    ctx = SelectionContext(comps, images, CONFIG, None, params=params, cache_root=tmp_path / "plain")
    plain = get_score("loss_reduction")(ctx, examples, surrogate)
    specific = get_score("prompt_specific")(replace(ctx, cache_root=tmp_path / "specific"), examples, surrogate)
    empty, _ = loss_matrix(comps, examples, 32, surrogate, CONFIG, draws=3, seed=5, captions=[""] * len(examples),
                           cache_root=tmp_path)
    # float32 losses summed in another order with more torch threads differ by ~1e-7
    tolerance = 1e-6
    assert np.abs(empty.mean(axis=0)).max() > 100 * tolerance  # the part removed is far above it
    np.testing.assert_allclose(specific.values, plain.values - empty.mean(axis=0), rtol=0, atol=tolerance)
    assert specific.forward_passes == 2 * plain.forward_passes == 4 * 3 * len(examples)
    np.testing.assert_array_equal(plain.delta, specific.delta)  # the reported Delta stays the plain one


def test_score_seed_is_what_the_score_uses(comps, images, tmp_path):
    surrogate = train_surrogate(comps, images, CONFIG, 10, tmp_path)
    run = lambda **kw: get_score("loss_reduction")(
        SelectionContext(comps, images, CONFIG, None, params=SelectionParams(draws=2, **kw), cache_root=tmp_path),
        candidates(images), surrogate).values
    assert np.array_equal(run(score_seed=1, seed=0), run(score_seed=1, seed=7))
    assert not np.array_equal(run(score_seed=1), run(score_seed=2))


def test_surrogate_is_cached(comps, images, tmp_path, monkeypatch):
    first = train_surrogate(comps, images, CONFIG, 3, tmp_path)
    from bat_app.albat import surrogate

    monkeypatch.setattr(surrogate, "train_lora", lambda *a, **k: pytest.fail("surrogate retrained"))
    again = train_surrogate(comps, images, CONFIG, 3, tmp_path)
    assert all(torch.equal(first[k], again[k]) for k in first)


def test_surrogate_cache_tells_vaes_apart(comps, images, tmp_path, monkeypatch):
    """Another VAE (a preset's `vae`, SDXL's fp16 fix) gives other latents: another surrogate."""
    import dataclasses

    from bat_app.albat import surrogate

    train_surrogate(comps, images, CONFIG, 3, tmp_path)
    trained = []
    real = surrogate.train_lora
    monkeypatch.setattr(surrogate, "train_lora", lambda *a, **k: trained.append(1) or real(*a, **k))
    other = dataclasses.replace(comps, spec=dataclasses.replace(comps.spec, vae="some/other-vae"))
    train_surrogate(other, images, CONFIG, 3, tmp_path)
    train_surrogate(comps, images, CONFIG, 3, tmp_path)
    assert trained == [1]


def test_a_plain_trainings_first_steps_are_the_surrogate(comps, images, tmp_path):
    """The compare pipeline takes ALBAT's surrogate from the plain LoRA's step 5: it must be the
    very adapter that training the surrogate on its own gives."""
    from dataclasses import replace

    from bat_app.train import train_lora

    config = replace(CONFIG, steps=12)
    snapshot = surrogate_snapshot(comps, images, config, 5, tmp_path / "a")
    assert snapshot is not None and snapshot[0] == 5
    train_lora(comps, images, config, tmp_path / "plain", cache_root=tmp_path / "a", export=False, snapshot=snapshot)
    taken = surrogate_path(comps, images, config, 5, tmp_path / "a")
    assert taken.is_file() and surrogate_snapshot(comps, images, config, 5, tmp_path / "a") is None  # cached now
    alone = train_surrogate(comps, images, config, 5, tmp_path / "b")
    from safetensors.torch import load_file

    taken = load_file(taken)
    assert taken.keys() == alone.keys()
    for key in alone:
        torch.testing.assert_close(taken[key], alone[key])
    assert any(v.abs().sum() > 0 for k, v in alone.items() if "lora_B" in k)  # trained, not the zero init
    # a run whose first steps differ from the surrogate's gives none
    for other in (replace(config, lr_schedule="cosine"), replace(config, train_text_encoder=True),
                  replace(config, warmup_steps=2, lr_schedule="constant_with_warmup"),
                  replace(config, prior=True, num_class_images=2),  # class images in every step
                  replace(config, pivotal=True, embeddings_only_steps=6)):  # the LoRA still zero at step 5
        assert surrogate_snapshot(comps, images, other, 5, tmp_path / "c") is None


def test_the_backbones_losses_are_kept_for_the_next_job(comps, images, tmp_path):
    """The reference half of Delta depends only on the weights, the item and the draw plan: a
    second scoring (another surrogate, as another job would have) reads it back, spends half
    the passes, and gets exactly what scoring without the cache gives."""
    first = train_surrogate(comps, images, CONFIG, 20, tmp_path)
    second = train_surrogate(comps, images, replace(CONFIG, seed=1), 20, tmp_path)
    examples = candidates(images)
    params = SelectionParams(draws=3, race=False, score_seed=5)
    ctx = SelectionContext(comps, images, CONFIG, None, params=params, cache_root=tmp_path / "cache")
    score = get_score("loss_reduction")
    cold = score(ctx, examples, first)
    warm = score(ctx, examples, second)
    uncached = score(replace(ctx, cache_root=tmp_path / "fresh"), examples, second)
    assert cold.forward_passes == 2 * 3 * len(examples) and cold.details["reference_passes_cached"] == 0
    assert warm.forward_passes == 3 * len(examples) == warm.details["reference_passes_cached"]
    np.testing.assert_array_equal(warm.values, uncached.values)
    other_seed = score(replace(ctx, params=replace(params, score_seed=6)), examples, second)
    assert other_seed.details["reference_passes_cached"] == 0  # other draws: nothing to reuse


@pytest.mark.parametrize("race, draws, first_round", [(False, 3, 3), (True, 8, 2)])
def test_prepare_spends_the_backbones_passes_before_the_surrogate(comps, images, tmp_path, race, draws, first_round):
    """``prepare`` (run while another lane trains the surrogate) computes the backbone's side of
    the first round and nothing else; the score then spends only the rest, with the same result."""
    surrogate = train_surrogate(comps, images, CONFIG, 10, tmp_path)
    examples = candidates(images)
    params = SelectionParams(draws=draws, race=race, m=2, score_seed=3)
    ctx = SelectionContext(comps, images, CONFIG, None, params=params, cache_root=tmp_path / "cache")
    score = get_score("loss_reduction")
    assert score.prepare(ctx, examples) == first_round * len(examples)
    prepared = score(ctx, examples, surrogate)
    plain = score(replace(ctx, cache_root=tmp_path / "fresh"), examples, surrogate)
    np.testing.assert_array_equal(prepared.values, plain.values)
    assert prepared.details["reference_passes_cached"] == first_round * len(examples)
    assert prepared.forward_passes == plain.forward_passes - first_round * len(examples)
    assert score.prepare(replace(ctx, cache_root=None), examples) == 0  # nowhere to keep them: nothing


def test_two_lanes_asking_for_one_surrogate_train_it_once(comps, images, tmp_path, monkeypatch):
    """The plain LoRA's lane trains ALBAT's surrogate while ALBAT's lane may ask for it too: the
    second waits and reads the first one's file."""
    import copy
    import threading

    from bat_app.albat import surrogate

    trained = []
    real = surrogate.train_lora
    monkeypatch.setattr(surrogate, "train_lora", lambda *a, **k: trained.append(1) or real(*a, **k))
    copies = [comps, copy.deepcopy(comps)]  # each lane has its own model copy
    results = [None, None]
    start = threading.Barrier(2)

    def lane(i):
        start.wait()
        results[i] = train_surrogate(copies[i], images, CONFIG, 4, tmp_path)

    threads = [threading.Thread(target=lane, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert trained == [1]
    assert results[0].keys() == results[1].keys()
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])


@pytest.mark.parametrize("race", [False, True])
def test_a_lent_model_shares_the_batches_with_the_same_result(comps, images, tmp_path, monkeypatch, race):
    """With another lane's model lent (``ctx.helper``, compare/lanes.py) each round's batches of
    candidates go to whichever copy is free: the scores, the passes spent and the progress bar's
    end are those of scoring alone, and the lent copy did score some of them."""
    import copy
    import threading

    from bat_app.albat import score as score_module
    from bat_app.lending import LaneHelp

    other_copy = copy.deepcopy(comps)
    used = []
    real = score_module.loss_matrix
    monkeypatch.setattr(score_module, "loss_matrix",
                        lambda components, *a, **k: used.append(components is other_copy) or real(components, *a, **k))
    surrogate = train_surrogate(comps, images, CONFIG, 10, tmp_path)
    examples = candidates(images)
    params = SelectionParams(draws=8, race=race, m=2, score_seed=3, batch_size=1)  # a batch per candidate
    events = []
    lending = LaneHelp()
    ctx = SelectionContext(comps, images, CONFIG, None, params=params, cache_root=tmp_path / "lent",
                           progress=events.append, helper=lending)
    ran = []
    lender = threading.Thread(target=lambda: ran.append(lending.serve(other_copy, lambda: False)))
    lender.start()
    score = get_score("loss_reduction")
    try:
        lent = score(ctx, examples, surrogate)
    finally:
        lending.close()
        lender.join(60)
    assert True in used and False in used  # both copies scored batches
    alone = score(replace(ctx, cache_root=tmp_path / "alone", helper=None, progress=None), examples, surrogate)
    np.testing.assert_allclose(lent.values, alone.values, rtol=1e-5, atol=1e-7)
    assert lent.forward_passes == alone.forward_passes
    assert ran == [3 if race else 1]  # one task per scoring round
    scored = [e for e in events if e.stage == "score"]
    assert scored[-1].step == scored[-1].total


def test_a_lender_that_never_comes_costs_the_borrower_nothing(comps, images, tmp_path):
    """The lending lane is still busy (or failed before serving): the borrower takes every batch
    itself and does not wait for it; what it queued fails once the lender ends."""
    from bat_app.errors import Cancelled
    from bat_app.lending import LaneHelp

    surrogate = train_surrogate(comps, images, CONFIG, 4, tmp_path)
    lending = LaneHelp()
    ctx = SelectionContext(comps, images, CONFIG, None, params=SelectionParams(draws=2, race=False, batch_size=2),
                           cache_root=tmp_path, helper=lending)
    result = get_score("loss_reduction")(ctx, candidates(images), surrogate)
    assert result.forward_passes == 2 * 2 * len(candidates(images))
    queued = lending(lambda components: None)
    lending.end()
    with pytest.raises(Cancelled):
        queued.result(timeout=1)


def test_the_surrogate_of_captioned_photos_is_keyed_by_their_captions(comps, subject_dir, tmp_path):
    """Same pixels, other captions: another surrogate (a cached one would have learned other text)."""
    import shutil

    from bat_app.images import load_user_images

    for photo in sorted(subject_dir.glob("*.png")):
        shutil.copy(photo, tmp_path / photo.name)
    photos = load_user_images(tmp_path).images
    captioned = replace(CONFIG, captions=True)

    def key(config, text):
        for photo in photos:
            Path(photo.source).with_suffix(".txt").write_text(text)
        return surrogate_path(comps, photos, config, 5, tmp_path / "cache")

    plain = key(CONFIG, "on the grass")
    assert key(CONFIG, "on the sand") == plain  # captions off: their text does not matter
    on_grass = key(captioned, "on the grass")
    assert on_grass != plain and key(captioned, "on the sand") != on_grass
    assert key(replace(captioned, caption_mix="all"), "on the grass") != on_grass
