"""Aspect-ratio buckets (bat_app/images/buckets.py): the bucket list and choice, fitting a photo
to its bucket, the latent cache keyed by bucket, and a tiny SDXL trained on two photos of
different shapes: one denoiser batch per bucket, each example's time ids carrying its original
size and crop. SD keeps the square crop."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from bat_app.errors import InputError
from bat_app.images.buckets import bucket_sizes, choose_bucket, fit_to_bucket, place, split_by_bucket
from bat_app.models import load_components
from bat_app.models.families import get_family
from bat_app.testing import build_tiny_sdxl
from bat_app.train import TrainConfig, train_lora
from bat_app.train.data import Example
from bat_app.train.encode import LatentCache

WIDE = (70, 130)   # (h, w): about 1:1.86 -> the 48 x 80 bucket at 64 px, cropped 4 px each side
TALL = (100, 60)   # exactly 5:3 -> the 80 x 48 bucket, nothing cropped


def photo(hw: tuple[int, int], seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (*hw, 3), dtype=np.uint8), "RGB")


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    return load_components(str(build_tiny_sdxl(tmp_path_factory.mktemp("models") / "tiny-sdxl")))


# --- the buckets -----------------------------------------------------------------------------

@pytest.mark.parametrize("resolution", [512, 768, 1024])
def test_buckets_are_multiples_of_64_of_about_the_resolutions_area(resolution):
    buckets = bucket_sizes(resolution)
    assert (resolution, resolution) in buckets and len(set(buckets)) == len(buckets)
    for h, w in buckets:
        assert h % 64 == 0 and w % 64 == 0
        assert 0.9 * resolution ** 2 <= h * w <= resolution ** 2
        assert 0.5 <= h / w <= 2 and (w, h) in buckets  # 1:2 .. 2:1, both orientations


def test_sdxl_buckets_are_kohyas_standard_ones_from_1_2_to_2_1():
    assert bucket_sizes(1024) == [(1408, 704), (1344, 768), (1216, 832), (1152, 896), (1088, 960), (1024, 1024),
                                  (960, 1088), (896, 1152), (832, 1216), (768, 1344), (704, 1408)]


def test_bucket_choice_is_the_closest_aspect_ratio():
    buckets = bucket_sizes(1024)
    assert choose_bucket(1000, 1000, buckets) == (1024, 1024)
    assert choose_bucket(1080, 1920, buckets) == (768, 1344)     # 16:9
    assert choose_bucket(1920, 1080, buckets) == (1344, 768)
    assert choose_bucket(100, 10_000, buckets) == (704, 1408)    # beyond 2:1: the widest
    with pytest.raises(InputError, match="smaller than the bucket step 64"):
        bucket_sizes(32)


def test_place_covers_the_bucket_and_crops_centrally():
    p = place(*WIDE, bucket_sizes(64, step=16))
    assert p.bucket == (48, 80) and p.resized == (48, 89) and p.crop == (0, 4)
    assert p.time_ids == (70, 130, 0, 4, 48, 80)
    exact = place(*TALL, bucket_sizes(64, step=16))
    assert exact.time_ids == (100, 60, 0, 0, 80, 48)


def test_fit_to_bucket_is_resize_then_centre_crop():
    image = photo((300, 400))
    p = place(300, 400, bucket_sizes(1024))
    out = fit_to_bucket(image, p)
    assert (out.height, out.width) == p.bucket == (896, 1152) and out.mode == "RGB"
    (rh, rw), (top, left) = p.resized, p.crop
    reference = image.resize((rw, rh), Image.Resampling.LANCZOS).crop((left, top, left + 1152, top + 896))
    diff = np.abs(np.asarray(out, np.float32) - np.asarray(reference, np.float32))
    assert diff.mean() < 3  # same sampling up to sub-pixel rounding of the one-pass box
    with pytest.raises(InputError, match="placement was made for"):
        fit_to_bucket(photo((10, 10)), p)


def test_split_by_bucket_groups_positions_by_shape():
    assert split_by_bucket([(4, 8, 8)] * 3) == [[0, 1, 2]]
    assert split_by_bucket(["a", "b", "a", "c", "b"]) == [[0, 2], [1, 4], [3]]


# --- families and the latent cache ---------------------------------------------------------------

def test_which_families_use_buckets():
    assert get_family("sdxl").uses_buckets and get_family("flux").uses_buckets
    assert not get_family("sd").uses_buckets


def test_latent_cache_keys_carry_the_bucket(sdxl, tmp_path):
    wide, tall = Example(photo(WIDE), "a"), Example(photo(TALL, 1), "b")
    cache = LatentCache(sdxl, 64, tmp_path, buckets=True)
    stats = cache.get([wide, tall, wide])
    assert [tuple(m.shape) for m, _ in stats] == [(4, 24, 40), (4, 40, 24), (4, 24, 40)]  # VAE factor 2
    assert cache.encoded == 2 and cache.key(wide) == f"{wide.key}-48x80"
    assert sorted(p.name for p in cache.folder.iterdir()) == sorted([f"{wide.key}-48x80.safetensors",
                                                                     f"{tall.key}-80x48.safetensors"])
    square = LatentCache(sdxl, 64, tmp_path)  # the same folder, without buckets: its own files
    assert tuple(square.get([wide])[0][0].shape) == (4, 32, 32) and square.encoded == 1
    again = LatentCache(sdxl, 64, tmp_path, buckets=True)
    assert again.get([tall, wide]) and again.encoded == 0  # read back from disk


def test_sd_keeps_the_square_crop(comps):
    sd = comps
    cache = LatentCache(sd, 32, None, buckets=sd.family.uses_buckets)
    assert cache.buckets is None and cache.placement(Example(photo(WIDE), "a")) is None
    assert tuple(cache.get([Example(photo(WIDE), "a")])[0][0].shape) == (4, 32, 32)  # square (VAE factor 1)


# --- training ------------------------------------------------------------------------------------

def test_sdxl_trains_each_bucket_as_its_own_batch_with_its_time_ids(sdxl, tmp_path):
    """Instance photo 130 x 70 (w x h), an augmentation photo 60 x 100: every step draws one of
    each, and the UNet sees two single-shape batches whose time ids are the photos' own."""
    calls = []

    def record(module, args, kwargs):
        sample = kwargs.get("sample", args[0] if args else None)
        calls.append((tuple(sample.shape), kwargs["added_cond_kwargs"]["time_ids"].tolist()))

    hook = sdxl.denoiser.register_forward_pre_hook(record, with_kwargs=True)
    try:
        config = TrainConfig(token="sks", class_noun="disc", steps=2, batch_size=1, resolution=64, lr=1e-3,
                             checkpoint_every=0, seed=0)
        instance = SimpleNamespace(image=photo(WIDE), name="wide.png", source=None)
        result = train_lora(sdxl, [instance], config, tmp_path / "out", augment=[Example(photo(TALL, 1), "a photo")],
                            cache_root=tmp_path / "cache", export=False)
    finally:
        hook.remove()
    assert len(result.losses) == 2 and all(np.isfinite(result.losses))
    assert calls == [((1, 4, 24, 40), [[70, 130, 0, 4, 48, 80]]), ((1, 4, 40, 24), [[100, 60, 0, 0, 80, 48]])] * 2


def test_flux_trains_on_a_non_square_bucket(tmp_path):
    """Flux packs 2x2 latent patches: a 48 x 80 bucket (24 x 40 latents at the tiny VAE's factor 2)
    is 12 x 20 = 240 tokens; Flux has no size conditioning, so nothing else changes."""
    from bat_app.testing import build_tiny_flux

    flux = load_components(str(build_tiny_flux(tmp_path / "tiny-flux")))
    tokens = []
    hook = flux.denoiser.register_forward_pre_hook(
        lambda module, args, kwargs: tokens.append(tuple(kwargs["hidden_states"].shape)), with_kwargs=True)
    try:
        config = TrainConfig(token="sks", class_noun="disc", steps=1, resolution=64, checkpoint_every=0, pivotal=False)
        instance = SimpleNamespace(image=photo(WIDE), name="wide.png", source=None)
        result = train_lora(flux, [instance], config, tmp_path / "out", cache_root=tmp_path / "cache", export=False)
    finally:
        hook.remove()
    assert tokens == [(1, 240, 16)] and np.isfinite(result.losses[0])
