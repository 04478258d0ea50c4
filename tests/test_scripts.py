"""Every script in scripts/ runs: its ``--quick`` mode, as a user would start it.

Scripts use the installed package (no sys.path edits, nothing from tests/), so they are run
from a neutral folder with a plain environment. Quick modes that take more than about a
minute of CPU time are marked slow (wall time on a shared machine can be several times that). scripts/bench_albat.py is tested by its owner.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"

QUICK = [
    pytest.param("bench_faiss.py", "recall@k", id="bench_faiss"),
    pytest.param("bench_ivfpq.py", "recall", id="bench_ivfpq"),
    pytest.param("bench_trainer.py", "speed-up of caching", id="bench_trainer"),
    pytest.param("gpu_check.py", "gpu_check: 15 measurements", id="gpu_check"),
    pytest.param("shapes_personalize.py", "lora_trait_mean", id="shapes_personalize"),
    pytest.param("bench_selection.py", "Mean over subjects", id="bench_selection"),
    pytest.param("bench_racing.py", "| checkered_square |", id="bench_racing"),
    pytest.param("bench_generated_pool.py", "generated - real over 1 pairs", id="bench_generated_pool"),
    pytest.param("bench_example_job.py", "again: ", id="bench_example_job"),
    pytest.param("bench_compare.py", "Convergence", id="bench_compare", marks=pytest.mark.slow),
    pytest.param("bench_jobs.py", "kill_heartbeat_only", id="bench_jobs", marks=pytest.mark.slow),
    pytest.param("take_screenshots.py", "quick: page loaded and example applied", id="take_screenshots",
                 marks=[pytest.mark.browser, pytest.mark.skipif(shutil.which("chromium") is None,
                                                                 reason="Debian's chromium is not installed")]),
]


def test_every_script_is_covered():
    # bench_albat.py and gpu_shapes_build.py run their --quick modes in their own test files;
    # cpu_by_process.py is a module of take_screenshots.py, with its own test file
    covered = {p.values[0] for p in QUICK} | {"bench_albat.py", "gpu_shapes_build.py", "cpu_by_process.py"}
    assert {p.name for p in SCRIPTS.glob("*.py")} <= covered


def test_scripts_use_the_installed_package():
    for script in SCRIPTS.glob("*.py"):
        if script.name == "bench_albat.py":
            continue
        text = script.read_text()
        for needle in ("sys.path", "conftest", "from tiny_model", "import tiny_model"):
            assert needle not in text, f"{script.name}: {needle}"
        if "__main__" in text:  # a script, not a module of one (cpu_by_process.py)
            assert "--quick" in text, f"{script.name} has no --quick mode"


@pytest.mark.parametrize(("script", "expected"), QUICK)
def test_quick_mode_runs(script, expected, tmp_path):
    if script in ("shapes_personalize.py", "bench_selection.py", "bench_compare.py", "bench_racing.py",
                  "bench_generated_pool.py", "bench_example_job.py"):
        from bat_app.paths import assets_dir

        if not (assets_dir() / "shapes" / "backbone" / "model_index.json").is_file():
            pytest.skip("shapes backbone not built")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env |= {"BAT_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1", "BAT_TORCH_THREADS": "1"}
    args = ["--threads", "1"] if script in ("bench_trainer.py", "shapes_personalize.py", "bench_faiss.py",
                                            "bench_example_job.py") else []
    args += ["--shortlist", "5"] if script == "bench_racing.py" else []
    out = subprocess.run([sys.executable, str(SCRIPTS / script), "--quick", *args], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert expected in out.stdout + out.stderr


def test_the_personalization_table_pairs_methods_by_subject_and_seed(tmp_path):
    """shapes_personalize.py --table: cells per training seed, and the paired difference per
    (subject, seed) that both methods have; a pair missing from one method is left out."""
    def record(method, seed, rows):
        lora = lambda trait, rc: {"trait": trait, "recontext_fidelity": rc}  # noqa: E731
        return {"summary": {"method": method, "train": {"seed": seed}},
                "subjects": {name: {"lora": lora(*v)} for name, v in rows.items()}}

    files = {"a.json": record("none", 0, {"x": (0.9, 0.6), "y": (1.0, 0.8)}),
             "b.json": record("albat", 0, {"x": (0.8, 0.9), "y": (1.0, 1.0)}),
             "c.json": record("none", 1, {"x": (0.5, 0.7)})}  # no albat at seed 1: not a pair
    for name, data in files.items():
        (tmp_path / name).write_text(json.dumps(data))
    out = subprocess.run([sys.executable, str(SCRIPTS / "shapes_personalize.py"), "--table",
                          *(str(tmp_path / n) for n in files)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| x | none | 90 / **50** | **60** / 70 |" in out.stdout
    assert "| x | albat | 80 / - | 90 / - |" in out.stdout
    assert "- none: both targets met in 1 of 3" in out.stdout and "- albat: both targets met in 2 of 2" in out.stdout
    # albat - none: trait (-10, 0) -> -5.0; recontext (+30, +20) -> +25.0, every resample between
    assert "| trait (2 pairs) | -5.0 [-10.0, +0.0] |" in out.stdout
    assert "| recontext (2 pairs) | +25.0 [+20.0, +30.0] |" in out.stdout


def test_records_of_one_judgement_on_other_draws_pool_into_one(tmp_path):
    """--pool: the same LoRAs judged at seeds 0+ and 1000+ become one record of twice the
    samples, each figure the mean; records of another training, or the same draws twice, refuse."""
    keys = ("trait", "class", "recontext_fidelity", "recontext_trait", "recontext_background_fidelity",
            "recontext_position_fidelity", "class_prompt_colours", "class_prompt_trait")

    def record(first_seed, trait, seed=0):
        side = lambda v: dict.fromkeys(keys, v)  # noqa: E731
        sampling = {"guidance": None, "lora_scale": 1.0} | ({"first_seed": first_seed} if first_seed else {})
        return {"summary": {"method": "albat", "train": {"seed": seed}, "step": 250, "sampling": sampling},
                "subjects": {"x": {"samples": 16, "prompts": ["a", "b"], "base": side(0.5), "lora": side(trait)}}}

    paths = []
    for name, data in {"near": record(0, 0.75), "far": record(1000, 0.875), "other": record(1000, 0.9, seed=1),
                       "again": record(0, 0.8)}.items():
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(data))
    run = lambda *files: subprocess.run([sys.executable, str(SCRIPTS / "shapes_personalize.py"), "--pool",  # noqa: E731
                                         *map(str, files), "--out", str(tmp_path / "pooled.json")],
                                        capture_output=True, text=True, timeout=300)
    out = run(paths[0], paths[1])
    assert out.returncode == 0, out.stderr[-3000:]
    pooled = json.loads((tmp_path / "pooled.json").read_text())
    row = pooled["subjects"]["x"]
    assert row["samples"] == 32 and row["lora"]["trait"] == 0.812 and row["base"]["trait"] == 0.5
    assert pooled["summary"]["lora_trait_mean"] == 0.812 and pooled["summary"]["subjects_trait_ge_80"] == 1
    assert pooled["summary"]["sampling"] == {"guidance": None, "lora_scale": 1.0, "pooled_first_seeds": [0, 1000]}
    assert "another training" in run(paths[0], paths[2]).stderr
    assert "count draws twice" in run(paths[0], paths[3]).stderr


def test_the_personalization_table_names_each_arm_by_what_it_changed():
    import importlib.util

    from bat_app.shapes.records import method_label

    spec = importlib.util.spec_from_file_location("shapes_personalize", SCRIPTS / "shapes_personalize.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert method_label({"method": "albat", "train": {"seed": 1, "batch_size": 2}}) == "albat"
    arm = {"method": "none", "context_captions": "half",
           "train": {"batch_size": 4, "prior_contexts": ["", "on the left"], "target_modules": ["attn2.to_k"],
                     "lr_schedule": "drop", "lr": 1e-3, "embedding_retract": 0.1}}
    assert method_label(arm) == ("none + context captions (half) + prior contexts (2) + LoRA on attn2.to_k"
                                        " + batch 4 + drop lr 0.001 + retract 0.1")
    assert len(script.world_contexts()) == 16 and "on an orange background" in script.world_contexts()
    sampled = {"method": "albat", "train": {}, "sampling": {"guidance": 6.0, "lora_scale": 0.75}}
    assert method_label(sampled) == "albat + guidance 6 + LoRA scale 0.75"
    redrawn = {"method": "albat", "train": {}, "step": 250, "sampling": {"first_seed": 1000}}
    assert method_label(redrawn) == "albat at step 250 (judged at seeds 1000+)"
    pooled = {"method": "albat", "train": {}, "sampling": {"pooled_first_seeds": [0, 1000]}}
    assert method_label(pooled) == "albat (judged at seeds 0+, 1000+, pooled)"
    named = {"method": "albat", "train": {}, "context_captions": "half", "caption_source": "clip-backgrounds"}
    assert method_label(named) == "albat + CLIP background captions (half)"
    assert method_label(named | {"context_captions": "third"}) == "albat + CLIP background captions (third)"
    assert method_label(named | {"context_captions": "all"}) == "albat + CLIP background captions"
    longer = named | {"images_per_subject": 5, "train": {"steps": 450}}
    assert method_label(longer) == "albat + CLIP background captions (half) + 450 steps"
    assert method_label(longer | {"train": {"steps": 300}}) == "albat + CLIP background captions (half)"
    refined = {"method": "albat", "train": {"refine_latents": 50}}
    assert method_label(refined) == "albat + refined latents (50 steps, anchor 0)"
    assert method_label(refined | {"train": {"refine_latents": 100, "refine_anchor": 0.3}}) == (
        "albat + refined latents (100 steps, anchor 0.3)")
    assert method_label(refined | {"train": {"refine_latents": 100, "refine_anchor": 1.0, "refine_subject_weight": 16}}) == (
        "albat + refined latents (100 steps, anchor 1, subject x16)")
    first = {"method": "albat", "images_per_subject": 5, "train": {"steps": 400, "embeddings_only_steps": 100}}
    assert method_label(first) == "albat + 400 steps + vectors alone for 100 steps"
    first["train"]["freeze_embeddings_after"] = True
    assert method_label(first) == "albat + 400 steps + vectors alone for 100 steps, then the LoRA alone"


def test_the_shapes_clip_names_the_example_photos_backgrounds(tmp_path):
    """--caption-source clip-backgrounds: captions the app could write, in the recontext prompts' words."""
    import importlib.util

    from bat_app.models import load_components
    from bat_app.paths import assets_dir
    from bat_app.shapes import SUBJECTS

    if not (assets_dir() / "shapes" / "backbone" / "model_index.json").is_file():
        pytest.skip("shapes backbone not built")
    spec = importlib.util.spec_from_file_location("shapes_personalize", SCRIPTS / "shapes_personalize.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    components = load_components("shapes", device="cpu")
    right = 0
    for subject in SUBJECTS:
        folder = script.captioned_copies(subject.name, 5, tmp_path / subject.name, "clip-backgrounds", components)
        info = json.loads((assets_dir() / "subjects" / subject.name / "subject.json").read_text())
        for photo in info["photos"][:5]:
            caption = (folder / photo["file"]).with_suffix(".txt").read_text().strip()
            assert caption.startswith("on a ") and caption.endswith(" background")
            right += caption == f"on a {photo['background']} background"
    assert right >= 22  # 24 of 25 measured (docs/shapes.md, twenty-third session)


def test_kept_loras_are_judged_again_at_other_strengths(tmp_path):
    """--keep-loras keeps what a run trained; --judge samples those LoRAs again, one record per
    --lora-scale, without training."""
    from bat_app.paths import assets_dir

    if not (assets_dir() / "shapes" / "backbone" / "model_index.json").is_file():
        pytest.skip("shapes backbone not built")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"BAT_HOME": str(tmp_path / "home"),
                                                                        "BAT_TORCH_THREADS": "1"}
    run = lambda *args: subprocess.run([sys.executable, str(SCRIPTS / "shapes_personalize.py"), "--threads", "1",  # noqa: E731
                                        *args], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=900)
    kept = tmp_path / "kept"
    out = run("--quick", "--keep-loras", str(kept))
    assert out.returncode == 0, out.stderr[-3000:]
    trained = json.loads((kept / "record.json").read_text())
    name = next(iter(trained["subjects"]))
    assert (kept / name / "pytorch_lora_weights.safetensors").is_file()
    # the recipe keeps earlier steps; the judge reads the app's steps picture of each and picks one
    out = run("--pick-steps", str(kept), "--pick-by", "picture")
    assert out.returncode == 0, out.stderr[-3000:]
    scores = json.loads((kept / "step_picture.json").read_text())[name]
    assert len(scores) >= 2 and max(map(int, scores)) == trained["summary"]["train"]["steps"]
    for v in scores.values():
        assert 0 <= v["trait"] <= 1 and 0 <= v["fidelity"] <= 1 and v["score"] == round(v["trait"] + v["fidelity"], 4)
    picked = json.loads(out.stdout.split("picked:", 1)[1].splitlines()[0])
    assert str(picked[name]) in scores
    # the identity network (shipped in assets/shapes/identity) and CLIP-T read the same picture
    out = run("--pick-steps", str(kept), "--pick-by", "identity")
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads((kept / "step_identity.json").read_text())[name]
    assert seen.keys() == scores.keys()
    for v in seen.values():
        assert -1 <= v["subject"] <= 1 and v["score"] == round(v["subject"] + v["clip_t"], 4)
    out = run("--judge", str(kept), "--samples", "2", "--lora-scale", "0", "1", "--out", str(tmp_path / "j-{scale}.json"))
    assert out.returncode == 0, out.stderr[-3000:]
    same = json.loads((tmp_path / "j-1.json").read_text())
    off = json.loads((tmp_path / "j-0.json").read_text())
    assert same["summary"]["sampling"] == {"guidance": None, "lora_scale": 1.0}
    # strength 1 at the preset's sampling is the training run's own judgement, sample for sample
    assert same["subjects"][name]["lora"] == trained["subjects"][name]["lora"]
    rows = off["subjects"].values()  # each record's summary is measured from its own rows
    assert off["summary"]["lora_recontext_background_mean"] == round(
        sum(r["lora"]["recontext_background_fidelity"] for r in rows) / len(rows), 3)
    # strength 0: the class prompt (no trigger, whose own vectors stay loaded) judged as the base model's
    for key in ("class_prompt_colours", "class_prompt_trait"):
        assert off["subjects"][name]["lora"][key] == off["subjects"][name]["base"][key]
    # the same LoRA judged on other draws (seeds 1000+): the record says which draws it saw
    out = run("--judge", str(kept), "--samples", "2", "--first-seed", "1000", "--out", str(tmp_path / "j-far.json"))
    assert out.returncode == 0, out.stderr[-3000:]
    far = json.loads((tmp_path / "j-far.json").read_text())
    assert far["summary"]["sampling"] == {"guidance": None, "lora_scale": 1.0, "first_seed": 1000}
    assert far["subjects"][name]["prompts"] == same["subjects"][name]["prompts"]
    bad = run("--judge", str(kept), "--lora-scale", "0", "1", "--out", str(tmp_path / "j.json"))
    assert bad.returncode != 0 and "put {scale} in --out" in bad.stderr
