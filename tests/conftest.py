"""Shared fixtures: a tiny SD model folder, offline hub settings, user images on disk."""

from __future__ import annotations

import os
from pathlib import Path

# Tests never touch the network: a hub id must fail fast with our offline message.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import numpy as np
import pytest
import torch
from PIL import Image

from tiny_model import build_tiny_model

DREAMBENCH = Path(__file__).resolve().parents[2] / "shared" / "dreambench"


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
    torch.set_num_threads(int(os.environ.get("BAT_TORCH_THREADS", min(2, os.cpu_count() or 1))))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="session")
def tiny_vpred_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sd-v", prediction_type="v_prediction")


def make_subject_images(folder: Path, n: int = 3, size: int = 64, seed: int = 0) -> Path:
    """n distinct synthetic photos of one 'subject': a red disc on varied backgrounds."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        bg = rng.integers(0, 255, 3)
        img = np.ones((size, size, 3), np.uint8) * bg.astype(np.uint8)
        cx, cy = rng.integers(size // 3, 2 * size // 3, 2)
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 < (size // 4) ** 2
        img[disc] = (220, 30, 30)
        Image.fromarray(img).save(folder / f"img{i}.png")
    return folder


@pytest.fixture
def subject_dir(tmp_path) -> Path:
    return make_subject_images(tmp_path / "subject")
