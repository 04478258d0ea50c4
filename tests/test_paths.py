"""Where shipped assets are found: BAT_ASSETS moves every one of them, not only some."""

from __future__ import annotations

import pytest

from bat_app.errors import ModelLoadError
from bat_app.models.presets import resolve_model
from bat_app.shapes import load_attribute_classifier, load_shapes_clip, shapes_paths


def test_every_shapes_asset_follows_bat_assets(monkeypatch, tmp_path):
    monkeypatch.setenv("BAT_ASSETS", str(tmp_path))
    paths = shapes_paths()
    assert paths.root == tmp_path / "shapes"
    assert (paths.clip, paths.classifier) == (tmp_path / "shapes" / "clip", tmp_path / "shapes" / "classifier")
    assert paths.subjects == tmp_path / "subjects"
    assert resolve_model("shapes").source == paths.backbone
    # an assets folder without the shapes models: the loaders look there and say so
    with pytest.raises(ModelLoadError, match=str(tmp_path / "shapes" / "clip")):
        load_shapes_clip()
    with pytest.raises(ModelLoadError, match=str(tmp_path / "shapes" / "classifier")):
        load_attribute_classifier()


def test_explicit_roots_still_win(monkeypatch, tmp_path):
    monkeypatch.setenv("BAT_ASSETS", str(tmp_path / "elsewhere"))
    paths = shapes_paths(tmp_path / "mine", subjects=tmp_path / "subjects")
    assert paths.clip == tmp_path / "mine" / "clip" and paths.subjects == tmp_path / "subjects"
