"""One recipe per preset (presets.json), and every entry point uses it: library, CLI, UI, jobs,
the example job and the scripts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bat_app.cli import build_parser, train_config_from_args
from bat_app.compare.config import CompareConfig
from bat_app.models import presets
from bat_app.models.recipe import Recipe, presets_data, recipe_for
from bat_app.train import TrainConfig
from bat_app.ui.defaults import suggested_settings

REPO = Path(__file__).resolve().parents[1]
PRESETS = sorted(presets())


def test_every_preset_has_a_complete_recipe():
    for name in PRESETS:
        assert "recipe" in presets_data()[name], name
        Recipe.from_dict(presets_data()[name]["recipe"])  # unknown or missing keys raise
    with pytest.raises(ValueError, match="a recipe: unknown key"):
        Recipe.from_dict({**presets_data()["shapes"]["recipe"], "lerning_rate": 1})


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("n", [3, 5, 10])
def test_library_ui_cli_and_jobs_agree_with_the_recipe(preset, n, tmp_path):
    recipe = recipe_for(preset)
    train, selection = recipe.train_settings(n), recipe.selection_settings(n)

    library = TrainConfig.for_model(preset, n, token="sks", class_noun="dog").to_dict()
    assert {k: library[k] for k in train} == train

    ui = suggested_settings(n, preset)
    assert {k: ui[k] for k in train} == train and {k: ui[k] for k in selection} == selection

    args = build_parser().parse_args(["train", "--images", str(tmp_path), "--class-noun", "dog",
                                      "--model", preset, "--out", str(tmp_path / "o")])
    cli = train_config_from_args(args, n).to_dict()
    assert {k: cli[k] for k in train} == train

    job = CompareConfig(token="sks", class_noun="dog", model=preset, methods=["none"])
    assert {k: job.train_config(n).to_dict()[k] for k in train} == train
    params = job.selection_params(n)
    assert (params.m, params.k) == (selection["m"], selection["k"])


def test_flags_and_job_settings_override_the_recipe(tmp_path):
    args = build_parser().parse_args(["train", "--images", str(tmp_path), "--class-noun", "dog", "--model",
                                      "shapes", "--out", str(tmp_path), "--lr", "0.002", "--no-pivotal"])
    config = train_config_from_args(args, 3)
    assert config.lr == 0.002 and config.pivotal is False
    assert config.prior is recipe_for("shapes").prior is True  # the recipe's, unless a flag says
    no_prior = build_parser().parse_args(["train", "--images", str(tmp_path), "--class-noun", "dog", "--model",
                                          "shapes", "--out", str(tmp_path), "--no-prior"])
    assert train_config_from_args(no_prior, 3).prior is False
    assert config.steps == recipe_for("shapes").train_settings(3)["steps"]
    job = CompareConfig(token="sks", class_noun="dog", model="shapes", methods=["none"], train={"steps": 7})
    assert job.train_config(5).steps == 7 and job.train_config(5).lr == recipe_for("shapes").lr


def test_the_example_jobs_leave_the_recipe_to_the_preset():
    recipe_keys = set(recipe_for("shapes").train_settings(5)) | {"k", "m"}
    for path in sorted((REPO / "examples").glob("*.json")):
        data = json.loads(path.read_text())
        set_here = (set(data.get("train", {})) | set(data.get("selection", {}))) & recipe_keys
        assert not set_here, f"{path.name} sets {sorted(set_here)}: take them from the preset's recipe"


def test_scripts_do_not_carry_their_own_learning_rate():
    """A script that trains takes the recipe (or a flag defaulting to it), never its own lr; the one
    exception is a registered experiment's pinned recipe, marked so on its line."""
    for path in sorted((REPO / "scripts").glob("*.py")):
        text = "\n".join(line for line in path.read_text().splitlines() if "# pinned: registered" not in line)
        own = re.findall(r"""(?:["']lr["']\s*:|\blr\s*=|--lr["'][^)]*default\s*=)\s*[0-9.]+e?-?[0-9]*""", text)
        assert not own, f"{path.name} hard-codes a learning rate: {own}"


def test_the_readme_model_table_is_the_presets():
    import re
    from pathlib import Path

    from bat_app.models.presets import model_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    found = re.search(r"<!-- model-table:[^\n]*-->\n(.*?)\n<!-- /model-table -->", readme, re.S)
    assert found, "README.md has no model table"
    assert found.group(1).strip() == model_table(), "README's model table is stale: paste `bat-app presets --markdown`"


def test_class_images_keep_the_measured_sampling_while_previews_draw_faster(tmp_path, monkeypatch):
    """shapes previews draw with 15 steps, class images (training data) with the 25 the recipe
    was measured with; a preset without ``class_image_steps`` draws both the same way. The class
    images' cache key is the one 25-step sampling always had, so cached images stay valid."""
    import json
    from dataclasses import replace
    from types import SimpleNamespace

    from bat_app.models.presets import resolve_model
    from bat_app.train import prior
    from bat_app.train.prior import class_image_dir

    monkeypatch.setattr(prior, "vae_fingerprint", lambda components: "vae")

    shapes = resolve_model("shapes")
    assert shapes.sampling["steps"] == 15
    assert shapes.training_sampling() == {"steps": 25, "guidance_scale": 4.0}
    sd15 = resolve_model("sd15")
    assert sd15.training_sampling() == sd15.sampling
    before = replace(shapes, sampling={"steps": 25, "guidance_scale": 4.0})  # the preset until now
    same = [class_image_dir(SimpleNamespace(spec=s, vae=None), "a photo of star", 32, tmp_path) for s in (shapes, before)]
    assert same[0] == same[1]
    assert json.dumps(shapes.training_sampling(), sort_keys=True) == json.dumps(before.sampling, sort_keys=True)
