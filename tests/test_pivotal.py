"""A trigger that means something: live token rows, pivotal tuning saved, reloaded and used."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from bat_app.errors import Cancelled
from bat_app.export.embeddings import find_embeddings
from bat_app.models import load_components
from bat_app.preview import sample_images
from bat_app.train import TrainConfig, train_lora


def quick(**kw) -> TrainConfig:
    base = dict(token="sks", class_noun="disc", steps=8, checkpoint_every=0, lr=1e-3, seed=0,
                pivotal=True, embedding_lr=5e-2)
    return TrainConfig(**(base | kw))


def _encode(comps, text: str) -> torch.Tensor:
    ids = comps.tokenizer([text], padding="max_length", max_length=comps.tokenizer.model_max_length,
                          return_tensors="pt").input_ids
    with torch.no_grad():
        return comps.text_encoder(ids)[0].flatten()


# --- the shipped shapes text encoder --------------------------------------------------------

def test_shapes_rare_tokens_are_alive_and_distinct():
    comps = load_components("shapes")
    table = comps.text_encoder.get_input_embeddings().weight.detach().float()
    sks, other = comps.tokenizer.convert_tokens_to_ids(["sks</w>", "zwx</w>"])
    kept_norm = table[comps.tokenizer("a red star on a blue background").input_ids].norm(dim=1).mean()
    assert table[sks].norm() > 0.5 * kept_norm            # not a dead (zero) row
    assert not torch.allclose(table[sks], table[other])   # each rare token its own row
    with_token = _encode(comps, "a photo of sks star")
    cos = torch.nn.functional.cosine_similarity(with_token, _encode(comps, "a photo of star"), dim=0)
    assert cos < 0.98  # measured 0.991 with the dead rows of the first build, 0.964 now


# --- pivotal tuning on the tiny model -------------------------------------------------------

def test_pivotal_vectors_are_trained_exported_and_the_model_is_left_as_it_was(comps, images, tmp_path):
    vocab = len(comps.tokenizer)
    table = comps.text_encoder.get_input_embeddings().weight.detach().clone()
    result = train_lora(comps, images, quick(), tmp_path / "out")
    assert len(comps.tokenizer) == vocab                                  # tokens removed again
    torch.testing.assert_close(comps.text_encoder.get_input_embeddings().weight, table)
    path, token = find_embeddings(tmp_path / "out")
    assert token == "sks" and path == result.files["embeddings"] and path.name == "sks.safetensors"
    saved = load_file(path)["emb_params"]
    assert saved.shape == (2, table.shape[1])
    torch.testing.assert_close(saved, result.embeddings["emb_params"])
    from bat_app.train.pivotal import initial_vectors

    start = initial_vectors(comps, 2, seed=0)
    assert (saved - start).norm() > 1e-3   # the vectors moved: they were trained
    assert (saved[0] - saved[1]).norm() > 1e-3


def test_retract_pulls_the_vectors_spread_toward_the_table(comps):
    from bat_app.train.pivotal import PivotalTokens

    table_std = float(comps.text_encoder.get_input_embeddings().weight.float().std())
    pivotal = PivotalTokens(comps, "sks", vectors=2, seed=0)
    try:
        with torch.no_grad():
            pivotal.params[0].mul_(5.0)  # as loud as the shapes backbone's trained trigger gets
        before = pivotal.params[0].detach().clone()
        pivotal.retract(0.0)
        torch.testing.assert_close(pivotal.params[0].detach(), before)   # 0: free
        pivotal.retract(0.5)
        ratio = table_std / float(before.std())
        torch.testing.assert_close(pivotal.params[0].detach(), before * ratio ** 0.5)
        for _ in range(60):
            pivotal.retract(0.5)
        assert abs(float(pivotal.params[0].detach().std()) / table_std - 1) < 1e-3
    finally:
        pivotal.remove()


def test_training_with_retract_keeps_the_trigger_as_loud_as_a_word(comps, images, tmp_path):
    table_std = float(comps.text_encoder.get_input_embeddings().weight.float().std())
    free = train_lora(comps, images, quick(embedding_lr=0.5), tmp_path / "free", export=False)
    pulled = train_lora(comps, images, quick(embedding_lr=0.5, embedding_retract=0.5), tmp_path / "pulled",
                        export=False)
    free_std, pulled_std = (float(r.embeddings["emb_params"].std()) for r in (free, pulled))
    assert free_std > 2 * table_std                     # unchecked, the vectors grow
    assert abs(pulled_std / table_std - 1) < abs(free_std / table_std - 1) / 2


def test_the_vectors_can_train_alone_before_the_lora_joins(comps, images, tmp_path):
    from bat_app.train.pivotal import initial_vectors

    seen = {}
    keep = lambda name: (2, lambda lora: seen.__setitem__(name, {k: v.clone() for k, v in lora.items()}))
    first = train_lora(comps, images, quick(steps=4, embeddings_only_steps=2), tmp_path / "first", export=False,
                       snapshot=keep("first"))
    train_lora(comps, images, quick(steps=4), tmp_path / "joint", export=False, snapshot=keep("joint"))
    moved = lambda lora: max(float(v.abs().max()) for k, v in lora.items() if "lora_B" in k)
    assert moved(seen["first"]) == 0.0   # after the vectors' two steps the LoRA is still its zero start
    assert moved(seen["joint"]) > 0.0    # trained together, it has moved by then
    assert moved(first.unet_lora) > 0.0  # and it joins for the last two steps
    start = initial_vectors(comps, 2, seed=0)
    assert (first.embeddings["emb_params"] - start).norm() > 1e-3
    # frozen when the LoRA joins: the vectors are those of the first stage's end (retract moves them no more)
    frozen = {n: train_lora(comps, images, quick(steps=n, embeddings_only_steps=2, freeze_embeddings_after=True,
                                                 embedding_retract=0.5),
                            tmp_path / f"frozen{n}", export=False) for n in (3, 4)}
    torch.testing.assert_close(frozen[4].embeddings["emb_params"], frozen[3].embeddings["emb_params"])
    frozen = frozen[4]
    assert not torch.allclose(frozen.embeddings["emb_params"], first.embeddings["emb_params"])
    assert moved(frozen.unet_lora) > 0.0


@pytest.mark.parametrize("kw, message", [({"pivotal": False, "embeddings_only_steps": 2}, "needs pivotal"),
                                         ({"embeddings_only_steps": -1}, "integer >= 0"),
                                         ({"freeze_embeddings_after": True}, "set those too")])
def test_embeddings_only_steps_that_cannot_work_are_refused(kw, message):
    from bat_app.errors import InputError

    with pytest.raises(InputError, match=message):
        quick(**kw)


def test_embeddings_only_steps_that_leave_the_lora_no_step_are_refused_before_training(comps, images, tmp_path):
    from bat_app.errors import InputError

    with pytest.raises(InputError, match="below `steps`"):
        train_lora(comps, images, quick(embeddings_only_steps=8), tmp_path / "o")
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_albats_surrogate_trains_the_lora_from_its_first_step():
    from bat_app.albat.surrogate import surrogate_config

    config = quick(steps=300, embeddings_only_steps=100)
    assert surrogate_config(config, 75).embeddings_only_steps == 0
    assert surrogate_config(config, 75).fingerprint() == surrogate_config(quick(steps=300), 75).fingerprint()


@pytest.mark.parametrize("bad", [-0.1, 1.5, "0.1"])
def test_embedding_retract_outside_0_to_1_is_refused(bad):
    from bat_app.errors import InputError

    with pytest.raises(InputError, match="embedding_retract"):
        quick(embedding_retract=bad)


def test_pivotal_embeddings_load_with_diffusers_and_change_the_output(comps, images, tmp_path):
    out = tmp_path / "out"
    train_lora(comps, images, quick(steps=6, embedding_lr=0.5), out)
    prompt = ["a photo of sks disc"]
    with_embeddings = sample_images(comps, prompt, [0], out)[0][0]
    # The same LoRA without its embeddings file: the trigger falls back to the plain token.
    (out / "sks.safetensors").rename(tmp_path / "aside.safetensors")
    without = sample_images(comps, prompt, [0], out)[0][0]
    assert np.abs(np.asarray(with_embeddings, float) - np.asarray(without, float)).mean() > 0.5
    assert len(comps.tokenizer) == 49408  # sampling unloads the embeddings again

    # As a diffusers user loads them: load_textual_inversion expands "sks" to "sks sks_1".
    from bat_app.models import build_pipeline

    pipe = build_pipeline(comps)
    pipe.load_textual_inversion(str(tmp_path / "aside.safetensors"), token="sks")
    assert pipe.maybe_convert_prompt("a photo of sks disc", pipe.tokenizer) == "a photo of sks sks_1 disc"
    pipe.unload_textual_inversion()


def test_pivotal_resume_matches_an_uninterrupted_run(comps, images, tmp_path):
    config = quick(steps=10, checkpoint_every=3)
    straight = train_lora(comps, images, config, tmp_path / "straight", export=False)
    calls = {"n": 0}

    def cancel_at_step_5():
        calls["n"] += 1
        return calls["n"] == 5

    with pytest.raises(Cancelled):
        train_lora(comps, images, config, tmp_path / "resumed", cancel=cancel_at_step_5, export=False)
    resumed = train_lora(comps, images, config, tmp_path / "resumed", resume=True, export=False)
    assert resumed.resumed_from == 4
    assert resumed.losses == pytest.approx(straight.losses, rel=1e-5, abs=1e-6)
    torch.testing.assert_close(resumed.embeddings, straight.embeddings, rtol=1e-5, atol=1e-6)


def test_pivotal_with_text_encoder_lora_and_augmentation(comps, images, tmp_path):
    from bat_app.train import examples_from_pairs

    augment = examples_from_pairs([(images[0].image, "a photo of a disc on grass")])
    result = train_lora(comps, images, quick(steps=3, train_text_encoder=True), tmp_path / "o", augment=augment)
    assert result.text_encoder_lora and result.embeddings is not None and len(comps.tokenizer) == 49408


def test_model_card_tells_how_to_load_the_embeddings():
    from bat_app.export import model_card

    card = model_card(quick(), "shapes", "sks_disc_kohya.safetensors")
    assert "pipe.load_textual_inversion('sks.safetensors', token='sks')" in card
    assert "embeddings/" in card and "embedding:sks" in card
    plain = model_card(quick(pivotal=False), "shapes", "sks_disc_kohya.safetensors")
    assert "load_textual_inversion" not in plain and "embedding:" not in plain


def test_the_results_tab_offers_the_trigger_vectors_for_download(tmp_path):
    from bat_app.export.embeddings import save_embeddings
    from bat_app.ui.loras import download_files

    lora = tmp_path / "methods" / "albat" / "lora"
    lora.mkdir(parents=True)
    (lora / "pytorch_lora_weights.safetensors").write_bytes(b"x")
    save_embeddings(lora, "sks", {"emb_params": torch.zeros(2, 4)})
    names = [Path(f).name for f in download_files(tmp_path, ["albat"])]
    assert names == ["albat_pytorch_lora_weights.safetensors", "albat_sks.safetensors"]


def test_loading_a_lora_for_previews_leaves_other_threads_modules_real(comps, images, tmp_path, monkeypatch):
    """A compare run's lanes draw previews while the other lane builds modules (the embedding
    ``unload_textual_inversion`` makes, adapters): loading the preview's LoRA must not patch
    ``nn.Module.register_parameter`` for the whole process (peft's init_empty_weights, which
    diffusers' default low_cpu_mem_usage turns on), or those modules get meta weights."""
    from peft.tuners.lora import LoraModel

    out = tmp_path / "out"
    train_lora(comps, images, quick(steps=2), out)
    made = []
    real = LoraModel._create_and_replace

    def spy(self, *args, **kwargs):  # a module "another thread" creates during the injection
        made.append(torch.nn.Embedding(3, 2).weight.device.type)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(LoraModel, "_create_and_replace", spy)
    sample_images(comps, ["a photo of sks disc"], [0], out)
    assert made and set(made) == {"cpu"}


def test_lora_strength_start_and_guidance_change_the_samples_as_asked(comps, images, tmp_path):
    out = tmp_path / "out"
    train_lora(comps, images, quick(steps=6, pivotal=False, lr=5e-2), out)
    prompt, pixels = ["a photo of disc"], lambda rows: np.asarray(rows[0][0], float)
    base = pixels(sample_images(comps, prompt, [0]))
    full = pixels(sample_images(comps, prompt, [0], out))
    off = pixels(sample_images(comps, prompt, [0], out, lora_scale=0.0))
    double = pixels(sample_images(comps, prompt, [0], out, lora_scale=2.0))
    assert np.abs(full - base).mean() > 0.5
    np.testing.assert_allclose(off, base, atol=1.0)        # strength 0: the base model's picture
    assert np.abs(double - base).mean() > np.abs(full - base).mean()  # twice the step away from base
    again = pixels(sample_images(comps, prompt, [0], out))  # the strength was for that call only
    np.testing.assert_array_equal(again, full)
    other_cfg = pixels(sample_images(comps, prompt, [0], guidance_scale=comps.spec.sampling["guidance_scale"] + 3))
    assert np.abs(other_cfg - base).mean() > 0.5
    # lora_start: the first steps without the LoRA (all of them: the base model's picture)
    np.testing.assert_array_equal(pixels(sample_images(comps, prompt, [0], out, lora_start=1.0)), base)
    late = pixels(sample_images(comps, prompt, [0], out, lora_start=0.5))
    assert np.abs(late - base).mean() > 0.5 and np.abs(late - full).mean() > 0.5
    np.testing.assert_array_equal(pixels(sample_images(comps, prompt, [0], out, lora_start=0.0)), full)
    np.testing.assert_array_equal(pixels(sample_images(comps, prompt, [0], out)), full)  # for that call only
