"""The whole user flow on the real shapes backbone: upload -> select -> train -> preview -> download.

Runs in the default suite (the backbone ships in assets/); it uses the session's shared slice of
the backbone's own pretraining data as the pool (conftest: ``shapes_pool``) and short trainings
so that it stays quick on CPU.
"""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from bat_app.paths import assets_dir

SUBJECT = "dot_star"
pytestmark = pytest.mark.skipif(not (assets_dir() / "shapes" / "backbone" / "model_index.json").is_file(),
                                reason="shapes backbone not built (python -m bat_app shapes build)")


def test_upload_select_train_preview_download(tmp_path, shapes_pool):
    from bat_app.compare import CompareConfig, run_compare
    from bat_app.models import build_pipeline, load_components

    subject = json.loads((assets_dir() / "subjects" / SUBJECT / "subject.json").read_text())
    # the upload as "Use example" makes it: three photos, each with its shipped caption
    photos = []
    for photo in subject["photos"][:3]:
        photos.append(tmp_path / "upload" / photo["file"])
        photos[-1].parent.mkdir(exist_ok=True)
        for suffix in (".png", ".txt"):
            source = (assets_dir() / "subjects" / SUBJECT / photo["file"]).with_suffix(suffix)
            photos[-1].with_suffix(suffix).write_bytes(source.read_bytes())
    config = CompareConfig(token="sks", class_noun=subject["class_noun"], model="shapes", pool="shapes",
                           methods=["none", "albat"],
                           train={"steps": 30, "checkpoint_every": 15, "num_class_images": 8, "captions": True},
                           selection={"m": 20, "k": 200, "draws": 2}, seeds=[0, 1], num_prompts=3)
    result = run_compare(config, photos, tmp_path / "run")
    out = tmp_path / "run"

    selection = [json.loads(line) for line in (out / "methods/albat/selection/selection.jsonl").read_text().splitlines()]
    assert 0 < len(selection) <= 20 and all(row["score"] > 0 for row in selection)
    # the shapes recipe trains every method with prior preservation, so the plain LoRA's first steps
    # are not ALBAT's surrogate (the photos alone): a surrogate of its own, 25% of the 30 steps,
    # trained by the plain LoRA's lane or ALBAT's (whichever gets there first; it is found cached
    # or not depending on that race)
    assert config.train_config(len(photos)).prior is True
    stats = json.loads((out / "methods/albat/selection/selection.json").read_text())["stats"]
    assert stats["surrogate_steps"] == 8
    metrics = result.metrics["methods"]
    assert set(metrics) == {"base", "none", "albat"}
    assert {"clip_i", "clip_t", "subject_fidelity", "class_prior"} <= set(metrics["albat"])
    assert (out / result.outputs["grid"]).is_file()

    # download: the zip holds both LoRA files and the card; the diffusers file loads and changes samples
    with zipfile.ZipFile(out / result.outputs["albat:zip"]) as z:
        names = set(z.namelist())
    # the shapes recipe trains with pivotal tuning: the trigger's vectors ship beside the LoRA
    assert {"pytorch_lora_weights.safetensors", "README.md", "sks.safetensors"} <= names
    assert any(n.endswith("_kohya.safetensors") for n in names)
    comps = load_components("shapes")
    pipe = build_pipeline(comps)
    run = lambda: pipe("a photo of sks star", num_inference_steps=10, height=32, width=32, output_type="np",
                       generator=__import__("torch").Generator().manual_seed(0)).images[0]
    base = run()
    pipe.load_lora_weights(str(out / "methods/albat/lora"), weight_name="pytorch_lora_weights.safetensors")
    lora_only = run()
    assert np.abs(lora_only - base).mean() > 1e-3
    pipe.load_textual_inversion(str(out / "methods/albat/lora/sks.safetensors"), token="sks")
    assert np.abs(run() - lora_only).mean() > 1e-3  # the trained trigger vectors change the samples
    pipe.unload_textual_inversion()
    pipe.unload_lora_weights()
