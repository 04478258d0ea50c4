"""Shared fixtures: a tiny SD model folder, offline hub settings, user images on disk."""

from __future__ import annotations

import os
from pathlib import Path

# Tests never touch the network: a hub id must fail fast with our offline message.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# One torch thread per process: tests start workers and servers beside the test process, and
# on 2 cores torch's default (a thread per core in every process) runs tiny models ~50x slower.
os.environ.setdefault("BAT_TORCH_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", os.environ["BAT_TORCH_THREADS"])

import pytest
import torch

from bat_app.testing import (  # noqa: F401  (make_subject_images: tests import it from here)
    build_tiny_model,
    build_tiny_pool,
    make_subject_images,
    make_tiny_clip_dir,
    share_shapes_pool,
)

DREAMBENCH = Path(__file__).resolve().parents[2] / "shared" / "dreambench"
# The shapes pool every end-to-end test on the shapes backbone shares (rendered once a session).
SHAPES_TEST_POOL_SIZE = 1000


def pytest_collection_modifyitems(config, items):
    """Slow tests run only with RUN_SLOW=1 or when selected with -m slow."""
    if os.environ.get("RUN_SLOW") == "1" or "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow: set RUN_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_data(tmp_path_factory, monkeypatch):
    """Every test gets its own BAT_HOME/cache so caches never leak between tests."""
    home = tmp_path_factory.mktemp("bat-home")
    monkeypatch.setenv("BAT_HOME", str(home))
    monkeypatch.delenv("BAT_CACHE", raising=False)
    torch.set_num_threads(int(os.environ["BAT_TORCH_THREADS"]))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="session")
def tiny_vpred_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sd-v", prediction_type="v_prediction")


@pytest.fixture
def subject_dir(tmp_path) -> Path:
    return make_subject_images(tmp_path / "subject")


@pytest.fixture
def comps(tiny_model_dir):
    """The tiny model's components, loaded fresh for each test (tests add adapters to them)."""
    from bat_app.models import load_components

    return load_components(str(tiny_model_dir))


@pytest.fixture
def images(subject_dir):
    """Three checked user images of the synthetic subject."""
    from bat_app.images import load_user_images

    return load_user_images(subject_dir).images


@pytest.fixture
def busy_images(tmp_path):
    """Three checked user images with no plain background (noise): busy0.png ... busy2.png."""
    from PIL import Image

    from bat_app.images import load_user_images

    folder = tmp_path / "busy"
    folder.mkdir()
    for i in range(3):
        Image.effect_noise((64, 64), 60 + 10 * i).convert("RGB").save(folder / f"busy{i}.png")
    return load_user_images(folder).images


# --- a tiny CLIP and a small pool (for selection and compare tests) -------------------------

@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    return make_tiny_clip_dir(tmp_path_factory.mktemp("clip") / "tiny-clip")


@pytest.fixture(scope="session")
def tiny_embedder(tiny_clip_dir):
    from bat_app.pool import load_embedder

    return load_embedder(str(tiny_clip_dir), None, device="cpu")


@pytest.fixture(scope="session")
def tiny_pool_dir(tmp_path_factory, tiny_embedder) -> Path:
    return build_tiny_pool(tmp_path_factory.mktemp("pool"), tiny_embedder)


# --- the shapes backbone's own pool (end-to-end tests on the shipped backbone) ----------------

@pytest.fixture(scope="session")
def shapes_pool_dir(tmp_path_factory) -> Path:
    """A SHAPES_TEST_POOL_SIZE-item slice of the shapes pretraining data, indexed once per
    session (~20 s on one CPU thread) and shared by every test that asks for it."""
    from bat_app.compare import pools
    from bat_app.paths import assets_dir

    if not (assets_dir() / "shapes" / "backbone" / "model_index.json").is_file():
        pytest.skip("shapes backbone not built (python -m bat_app shapes build)")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BAT_HOME", str(tmp_path_factory.mktemp("shapes-pool-home")))
        return pools.ensure_shapes_pool(SHAPES_TEST_POOL_SIZE)


@pytest.fixture
def shapes_pool(shapes_pool_dir, monkeypatch) -> Path:
    """``pool: "shapes"`` in this test resolves to the session's shared shapes pool."""
    from bat_app.compare import pools
    from bat_app.paths import data_dir

    monkeypatch.setattr(pools, "SHAPES_POOL_SIZE", SHAPES_TEST_POOL_SIZE)
    monkeypatch.setenv("BAT_SHAPES_POOL_SIZE", str(SHAPES_TEST_POOL_SIZE))  # job processes read the env
    return share_shapes_pool(shapes_pool_dir, data_dir())
