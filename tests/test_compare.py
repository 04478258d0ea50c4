"""The compare pipeline on the tiny model and pool: columns, grid, metrics, report, resume."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from bat_app.compare import CompareConfig, run_compare
from bat_app.errors import InputError
from bat_app.metrics import clip_i, clip_t, compute_metrics, diversity
from bat_app.metrics.dino import dino_unavailable_reason
from bat_app.preview import comparison_grid, load_prompt_set


def config(tiny_model_dir, tiny_pool_dir, tiny_clip_dir, **kw) -> CompareConfig:
    base = dict(token="sks", class_noun="disc", model=str(tiny_model_dir), pool=str(tiny_pool_dir),
                clip_model=str(tiny_clip_dir), methods=["none", "random"], prompt_set="object",
                num_prompts=3, seeds=[0, 1], train={"steps": 4, "lr": 5e-3, "checkpoint_every": 2},
                selection={"m": 4})
    return CompareConfig.from_dict(base | kw)


def test_two_method_compare(tiny_model_dir, tiny_pool_dir, tiny_clip_dir, subject_dir, tmp_path):
    cfg = config(tiny_model_dir, tiny_pool_dir, tiny_clip_dir)
    events = []
    result = run_compare(cfg, subject_dir, tmp_path / "cmp", progress=events.append)
    out = tmp_path / "cmp"
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["methods"]) == ["base", "none", "random"]
    for values in metrics["methods"].values():
        assert -1 <= values["clip_i"] <= 1 and -1 <= values["clip_t"] <= 1 and values["diversity"] >= 0
    assert metrics["counts"] == {"none": 0, "random": 4}
    grid = Image.open(out / result.outputs["grid"])
    assert grid.width > grid.height / 2  # three labelled columns
    report = (out / "report.md").read_text()
    # DINO: a number in every column, or no column at all and the reason in the report
    reason = dino_unavailable_reason()
    if reason is None:
        assert all("dino" in values for values in metrics["methods"].values()) and "DINO ↑" in report
    else:
        assert not any("dino" in values for values in metrics["methods"].values()) and "DINO ↑" not in report
        assert f"> DINO column absent: {reason}." in report
    assert "| none | 0 |" in report and "| random | 4 |" in report and "train:random" in report
    for method in ("none", "random"):
        assert (out / result.outputs[f"{method}:zip"]).is_file()
        assert (out / result.outputs[f"{method}:kohya"]).is_file()
    stages = {e.stage for e in events}
    assert {"validate", "select", "train", "preview", "metrics", "package", "done"} <= stages
    assert {e.method for e in events if e.stage == "train" and e.total == 4} == {"none", "random"}

    # same seeds -> the base column is identical when drawn again; a second run resumes everything
    trained_at = (out / "methods" / "none" / "lora" / "pytorch_lora_weights.safetensors").stat().st_mtime_ns
    again = run_compare(cfg, subject_dir, out)
    assert again.metrics["methods"] == metrics["methods"]
    assert (out / "methods" / "none" / "lora" / "pytorch_lora_weights.safetensors").stat().st_mtime_ns == trained_at
    assert again.timings["train:none"] == result.timings["train:none"]  # the cost it had when it ran


def test_same_seed_same_base_column(tiny_model_dir, tiny_pool_dir, tiny_clip_dir, subject_dir, tmp_path):
    from bat_app.models import load_components
    from bat_app.preview import sample_images

    comps = load_components(str(tiny_model_dir))
    a = sample_images(comps, ["a photo of disc"], [0, 1])
    b = sample_images(comps, ["a photo of disc"], [0, 1])
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a[0], b[0]))
    assert not np.array_equal(np.asarray(a[0][0]), np.asarray(a[0][1]))


def test_grid_layout_and_labels():
    red, blue = Image.new("RGB", (32, 32), (255, 0, 0)), Image.new("RGB", (32, 32), (0, 0, 255))
    columns = {"base": [[red, red], [red, red]], "albat": [[blue, blue], [blue, blue]]}
    grid = comparison_grid(columns, ["p one", "p two"], cell=32)
    arr = np.asarray(grid)
    # left column (base) is red, right column (albat) is blue, rows in prompt order
    reds = np.argwhere((arr[..., 0] == 255) & (arr[..., 2] == 0))
    blues = np.argwhere((arr[..., 2] == 255) & (arr[..., 0] == 0))
    assert reds[:, 1].max() < blues[:, 1].min()
    assert len(reds) == len(blues) == 2 * 2 * 32 * 32  # 2 prompts x 2 seeds per column, unscaled
    # labels are drawn (dark pixels in the title band above the first row)
    assert (arr[:14, 220:] < 100).any()


def test_metrics_match_hand_computed_values():
    gen = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    ref = np.array([[1.0, 0.0]], np.float32)
    assert clip_i(gen, ref) == pytest.approx(0.5)
    texts = np.array([[0.6, 0.8], [0.0, 1.0]], np.float32)
    assert clip_t(gen, texts) == pytest.approx((0.6 + 1.0) / 2)
    group = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], np.float32)
    # pairs: (1,0)-(0,1) cos 0; (1,0)-(.6,.8) cos .6; (0,1)-(.6,.8) cos .8 -> 1 - mean = 1 - 1.4/3
    assert diversity([group]) == pytest.approx(1 - 1.4 / 3)


def test_shapes_scores_by_hand():
    from bat_app.metrics.shapes_scores import asked_attributes, shapes_scores

    assert asked_attributes("a sks star on a white background") == {"background": "white"}
    assert asked_attributes("a small sks star on the left") == {"size": "small", "position": "left"}
    trait = {"marking": "dot"}
    preds = {"a photo of sks star": [{"shape": "star", "marking": "dot"}, {"shape": "star", "marking": "none"}],
             "a sks star on a white background": [{"shape": "star", "marking": "dot", "background": "white"}],
             "a photo of star": [{"shape": "star", "marking": "none", "colour": "red", "pattern": "solid"},
                                 {"shape": "star", "marking": "dot", "colour": "red", "pattern": "solid"}]}
    kinds = {"a photo of sks star": "subject", "a sks star on a white background": "context", "a photo of star": "class"}
    s = shapes_scores(preds, kinds, trait, "star")
    assert s == {"subject_fidelity": 2 / 3, "prompt_fidelity": 1.0, "class_prior": 0.5, "class_variety": 0.5}


def test_prompt_sets_are_data():
    ps = load_prompt_set("object")
    assert len(ps.context) == 20 and len(ps.property) == 5
    assert ("property", "a red sks can") in ps.prompts("sks", "can")
    with pytest.raises(InputError, match="Unknown prompt set"):
        load_prompt_set("nope")


def test_config_errors_are_refused_at_the_door():
    with pytest.raises(InputError, match="Unknown config key"):
        CompareConfig.from_dict({"methods": ["none"], "stepz": 3})
    with pytest.raises(InputError, match="Unknown method"):
        CompareConfig.from_dict({"methods": ["none", "magic"]})
    with pytest.raises(InputError, match="Unknown training setting"):
        CompareConfig.from_dict({"train": {"lr_rate": 1}})
    with pytest.raises(InputError, match="need a backbone pool"):
        from bat_app.compare.run import _pool_and_embedder

        _pool_and_embedder(CompareConfig(methods=["albat"]), None)


def test_a_second_job_reuses_the_base_column_until_the_weights_change(tiny_model_dir, tiny_pool_dir, tiny_clip_dir,
                                                                      subject_dir, tmp_path, monkeypatch):
    """The base column depends on nothing a job trains: a second job (another folder, same
    prompts and seeds) takes it from the cache without sampling; new weights draw it again."""
    import shutil

    from bat_app.compare import previews as compare_previews

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    cfg = config(model, tiny_pool_dir, tiny_clip_dir, methods=["none"], num_prompts=2,
                 train={"steps": 2, "lr": 5e-3, "checkpoint_every": 0})
    first = run_compare(cfg, subject_dir, tmp_path / "job1")
    drawn = []
    real = compare_previews.sample_images
    monkeypatch.setattr(compare_previews, "sample_images", lambda comps, prompts, seeds, lora, **kw:
                        drawn.append(lora) or real(comps, prompts, seeds, lora, **kw))
    run_compare(cfg, subject_dir, tmp_path / "job2")
    assert drawn and None not in drawn  # only the LoRA column was sampled
    for a, b in zip(sorted((tmp_path / "job1" / "previews" / "samples" / "base").glob("*.png")),
                    sorted((tmp_path / "job2" / "previews" / "samples" / "base").glob("*.png")), strict=True):
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    stage = json.loads((tmp_path / "job2" / "previews" / "samples" / "base" / "stage.json").read_text())
    assert stage["shared"] is True
    assert first.metrics["methods"]["base"] is not None

    # the same folder with other weights (an in-place retrain): the base column is drawn again
    unet = next((model / "unet").glob("*.safetensors"))
    os.utime(unet, ns=(unet.stat().st_atime_ns, unet.stat().st_mtime_ns + 10**9))
    drawn.clear()
    run_compare(cfg, subject_dir, tmp_path / "job3")
    assert None in drawn


def test_a_changed_setting_redoes_exactly_the_stages_it_feeds(tiny_model_dir, tiny_pool_dir, tiny_clip_dir,
                                                              subject_dir, tmp_path):
    """`compare --steps 3` after a 2-step run into the same folder must not return the 2-step LoRA."""
    out = tmp_path / "cmp"
    train = {"steps": 2, "lr": 5e-3, "checkpoint_every": 1}
    first = config(tiny_model_dir, tiny_pool_dir, tiny_clip_dir, methods=["random"], num_prompts=1, train=train)
    run_compare(first, subject_dir, out)
    lora = out / "methods" / "random" / "lora"
    samples = out / "previews" / "samples"
    selected = (out / "methods" / "random" / "selection" / "selection.jsonl").stat().st_mtime_ns
    base_drawn = next((samples / "base").glob("*.png")).stat().st_mtime_ns
    drawn = next((samples / "random").glob("*.png")).stat().st_mtime_ns

    more_steps = config(tiny_model_dir, tiny_pool_dir, tiny_clip_dir, methods=["random"], num_prompts=1,
                        train=train | {"steps": 3})
    result = run_compare(more_steps, subject_dir, out)
    log = json.loads((lora / "training_log.json").read_text())
    assert log["config"]["steps"] == 3 and len(log["losses"]) == 3
    assert next((samples / "random").glob("*.png")).stat().st_mtime_ns != drawn   # the new LoRA's previews
    assert next((samples / "base").glob("*.png")).stat().st_mtime_ns == base_drawn  # the base did not change
    # random selection does not depend on training steps: kept
    assert (out / "methods" / "random" / "selection" / "selection.jsonl").stat().st_mtime_ns == selected
    assert result.metrics["counts"] == {"random": 4}

    fewer_items = config(tiny_model_dir, tiny_pool_dir, tiny_clip_dir, methods=["random"], num_prompts=1,
                         train=train | {"steps": 3}, selection={"m": 3})
    result = run_compare(fewer_items, subject_dir, out)
    assert result.metrics["counts"] == {"random": 3}
    log = json.loads((lora / "training_log.json").read_text())
    assert log["augmentation_examples"] == 3  # retrained on the new selection


def test_an_undefined_metric_is_null_in_json_and_a_dash_in_the_report(tmp_path):
    """Diversity with one preview seed is undefined: strict JSON (null), shown as "—"."""
    from bat_app.compare.report import metrics_table
    from bat_app.metrics import write_metrics

    assert np.isnan(diversity([np.ones((1, 2), np.float32)]))
    metrics = {"methods": {"base": {"clip_i": 0.5, "diversity": float("nan")}}, "notes": []}
    path = write_metrics(tmp_path / "metrics.json", metrics)
    text = path.read_text()
    assert "NaN" not in text
    read = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert read["methods"]["base"] == {"clip_i": 0.5, "diversity": None}
    row = metrics_table(read)[-1]
    assert row == "| base | — | 0.500 | — |"


class _AxisEmbedder:
    """A stand-in CLIP: red images and texts with 'red' embed to x, everything else to y."""

    def encode_images(self, images):
        return np.array([[1.0, 0.0] if im.getpixel((0, 0))[0] > 128 else [0.0, 1.0] for im in images], np.float32)

    def encode_texts(self, texts):
        return np.array([[1.0, 0.0] if "red" in t else [0.0, 1.0] for t in texts], np.float32)


@pytest.mark.parametrize("dino_available", [False, True])
def test_dino_is_measured_when_available_else_absent_with_its_reason(monkeypatch, dino_available):
    import bat_app.metrics as metrics_module
    from bat_app.compare.report import metrics_table

    red, blue = Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))
    if dino_available:  # the DINO embedding of this stand-in is the same axis code as the CLIP one
        monkeypatch.setattr(metrics_module, "dino_embed", _AxisEmbedder().encode_images)
    else:
        monkeypatch.setattr(metrics_module, "dino_embed", lambda images: None)
        monkeypatch.setattr(metrics_module, "dino_unavailable_reason", lambda: "no weights here")
    prompts = [("subject", "a photo of sks thing"), ("context", "a sks thing, red")]
    columns = {"base": [[blue, blue], [blue, red]], "lora": [[red, red], [red, red]]}
    result = compute_metrics(columns, prompts, [red], _AxisEmbedder(), "sks", "thing")
    if dino_available:
        assert result["methods"]["base"]["dino"] == pytest.approx(0.25)  # 1 of 4 samples is the subject
        assert result["methods"]["lora"]["dino"] == pytest.approx(1.0)
        assert result["notes"] == []
        assert "DINO ↑" in metrics_table(result)[0]
    else:
        assert all("dino" not in values for values in result["methods"].values())
        assert result["notes"] == ["DINO column absent: no weights here."]
        assert "DINO" not in metrics_table(result)[0]
    assert result["methods"]["lora"]["clip_i"] == pytest.approx(1.0)


def test_a_generated_pool_is_drawn_once_from_the_backbone(tiny_model_dir, tiny_clip_dir, subject_dir, tmp_path,
                                                          monkeypatch):
    from bat_app.pool import Pool

    monkeypatch.setenv("BAT_HOME", str(tmp_path / "home"))
    cfg = config(tiny_model_dir, None, tiny_clip_dir, pool="generated", methods=["random"],
                 selection={"k": 6, "m": 3}, train={"steps": 2, "lr": 5e-3, "checkpoint_every": 0})
    events = []
    result = run_compare(cfg, subject_dir, tmp_path / "cmp", progress=events.append)
    folders = list((tmp_path / "home" / "pools").glob("generated-*"))
    assert len(folders) == 1
    with Pool.open(folders[0]) as pool:
        assert len(pool) == 6  # as many samples as ALBAT's shortlist K
        assert pool.manifest["generated"]["class_noun"] == "disc"
        assert all("disc" in pool.item(i).caption for i in range(len(pool)))
    assert result.metrics["counts"] == {"random": 3}
    messages = [e.message for e in events if e.stage == "pool"]
    assert any("generating the pool" in m for m in messages) and any("indexing" in m for m in messages)

    # a second job for the same model, class and size reuses it: nothing is drawn again
    events.clear()
    run_compare(cfg, subject_dir, tmp_path / "cmp2", progress=events.append)
    assert not [e for e in events if e.stage == "pool"]
