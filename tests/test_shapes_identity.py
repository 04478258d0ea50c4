"""The identity network (the shapes world's DINO): its training data, loss, files, and the
step scores read from the app's steps picture."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from bat_app.preview.step_pick import best_step, picture_scores
from bat_app.shapes.identity import (IDENTITY, IdentityEmbedder, IdentityNet, gate, load_identity, nt_xent,
                                     object_views, save_identity, train_identity)
from bat_app.shapes.world import render


def test_object_views_pair_each_object_with_a_sibling_one_attribute_away():
    views, identities, changed = object_views(seed=3, n_pairs=40)
    assert views.shape == (80, 2, 32, 32, 3) and views.dtype == np.uint8
    for i, key in enumerate(changed):
        base, twin = identities[2 * i], identities[2 * i + 1]
        assert [k for k in IDENTITY if base[k] != twin[k]] == [key]
    # the two views of one object are drawn apart (own background, size, position)
    assert np.mean([not np.array_equal(v[0], v[1]) for v in views]) > 0.9
    assert set(changed) == set(IDENTITY)


def test_nt_xent_is_low_when_each_view_finds_its_twin_and_high_when_it_does_not():
    z = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    aligned = nt_xent(torch.cat([z, z]))
    shuffled = nt_xent(torch.cat([z, z[torch.randperm(8, generator=torch.Generator().manual_seed(0))]]))
    assert aligned < 0.1 < shuffled


def test_a_short_training_learns_something_and_its_files_reload_to_the_same_embeddings(tmp_path):
    views, identities, changed = object_views(seed=5, n_pairs=128)
    untrained = IdentityEmbedder(IdentityNet())
    torch.manual_seed(0)
    trained = train_identity(views, steps=60, pairs_per_batch=32, progress=False)
    before, after = (gate(net, views, changed, identities, gallery=64) for net in (untrained, trained))
    assert after["identity_top1"] > before["identity_top1"] + 0.2
    emb = trained.encode_images([Image.fromarray(v) for v in views[:4, 0]])
    assert emb.shape == (4, 64) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    save_identity(trained, tmp_path / "identity", {"gate": after})
    again = load_identity(tmp_path / "identity")
    assert again.meta["gate"] == after
    # fp16 on disk: the same embeddings to half precision
    assert np.allclose(again.encode_images(views[:4, 0]), emb, atol=2e-2)


class _Colour:
    """An embedder that sees only the mean colour: enough to tell the steps apart in a test."""

    def encode_images(self, images):
        arr = np.stack([np.asarray(im, dtype=np.float32).reshape(-1, 3).mean(0) + 1 for im in images])
        return arr / np.linalg.norm(arr, axis=1, keepdims=True)

    def encode_texts(self, texts):
        return np.tile(np.array([[1.0, 0.0, 0.0]]), (len(texts), 1))


def test_picture_scores_read_the_drawn_samples_and_the_pick_keeps_the_step_like_the_photos():
    red = {"shape": "star", "colour": "red", "pattern": "solid", "background": "white"}
    photos = [render(red)]
    like = render(red)
    unlike = render({**red, "colour": "blue", "background": "yellow"})
    pairs = [("subject", "a photo of sks star"), ("context", "a sks star on a red background"),
             ("class", "a photo of star")]
    samples = {200: [[unlike, unlike], [like, like], [like, like]],
               300: [[like, like], [like, like], [unlike, unlike]]}
    scores = picture_scores(samples, pairs, photos, _Colour(), _Colour(), "sks")
    # the class prompt has no trigger: its samples count for neither term
    assert scores[300]["subject"] > scores[200]["subject"]
    assert scores[300]["clip_t"] == scores[200]["clip_t"]
    assert best_step(scores) == 300


def test_the_shipped_identity_network_passes_its_gate_on_fresh_objects():
    from diffusers import AutoencoderKL

    from bat_app.shapes import shapes_paths
    from bat_app.shapes.identity import with_vae_views

    net = load_identity()
    vae = AutoencoderKL.from_pretrained(shapes_paths().backbone, subfolder="vae").eval()
    views, identities, changed = object_views(seed=999, n_pairs=300)
    figures = gate(net, with_vae_views(vae, views), changed, identities)
    assert figures["same_identity_top1"] >= 0.8 and figures["marking"] >= 0.9


def test_the_cli_builds_an_identity_network_with_its_gate(tmp_path):
    from bat_app.cli import main

    assert main(["shapes", "identity", "--out", str(tmp_path / "id"), "--pairs", "300", "--steps", "3",
                 "--threads", "1"]) == 0
    net = load_identity(tmp_path / "id")
    assert net.meta["steps"] == 3 and net.meta["train_objects"] == 600
    assert {"identity_top1", "same_identity_top1", "marking"} <= net.meta["gate"].keys()
