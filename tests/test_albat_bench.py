"""The pre-registered ALBAT experiment harness (scripts/bench_albat.py) in its --quick mode, and
the statistics it reports with (fixed-draw loss, paired bootstrap, area over checkpoints)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bat_app.albat.evaluation import FixedDrawLoss, area_over_steps, paired_bootstrap
from bat_app.paths import assets_dir

REPO = Path(__file__).resolve().parents[1]
HAVE_SHAPES = (assets_dir() / "shapes" / "backbone" / "model_index.json").is_file()


def test_paired_bootstrap_covers_the_mean_and_excludes_zero_only_for_a_clear_shift():
    rng = np.random.default_rng(0)
    shifted = rng.normal(-1.0, 0.5, 15)
    mean, lo, hi = paired_bootstrap(shifted)
    assert lo < mean < hi < 0 and mean == pytest.approx(shifted.mean())
    _, lo, hi = paired_bootstrap(rng.normal(0.0, 0.5, 15))
    assert lo < 0 < hi
    assert all(np.isnan(v) for v in paired_bootstrap([]))


def test_area_over_steps_is_the_mean_level_of_the_curve():
    assert area_over_steps([25, 50, 100, 200], [1.0, 1.0, 1.0, 1.0]) == pytest.approx(1.0)
    # uneven checkpoints: the long last interval weighs more
    assert area_over_steps([0, 10, 100], [0.0, 1.0, 1.0]) == pytest.approx((5 + 90) / 100)
    assert area_over_steps([7], [0.3]) == 0.3


def test_fixed_draw_loss_repeats_exactly_and_sees_the_adapter(comps, images, tmp_path):
    from bat_app.albat.surrogate import train_surrogate
    from bat_app.train import TrainConfig
    from bat_app.train.data import Example

    config = TrainConfig(token="sks", class_noun="disc", steps=20, lr=5e-3, rank=4, checkpoint_every=0)
    probe = FixedDrawLoss(comps, [Example(u.image, config.prompt) for u in images], 32, draws=3, seed=1,
                          cache_root=tmp_path)
    base = probe()
    assert np.array_equal(base, probe()) and base.shape == (len(images),)
    lora = train_surrogate(comps, images, config, 20, tmp_path)
    from peft import LoraConfig, set_peft_model_state_dict

    comps.denoiser.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=config.resolve_targets(comps.family).target_modules), "probe")
    set_peft_model_state_dict(comps.denoiser, lora, adapter_name="probe")
    assert probe().mean() < base.mean()  # the LoRA trained on these photos fits them better


def test_write_section_replaces_only_between_its_markers(tmp_path):
    from bat_app.albat.experiment import write_section

    doc = tmp_path / "b.md"
    write_section(doc, "stability", "Stability", "first")
    assert doc.read_text() == "## Stability\n\n<!-- bench_albat:stability:start -->\nfirst\n<!-- bench_albat:stability:end -->\n"
    doc.write_text("intro\n" + doc.read_text() + "\nhand-written tail\n")
    write_section(doc, "stability", "Stability", "second")
    write_section(doc, "experiment", "Experiment", "table")
    text = doc.read_text()
    assert text.startswith("intro\n") and "hand-written tail" in text and "first" not in text
    assert text.count("second") == 1 and text.index("hand-written tail") < text.index("## Experiment")


def test_summarise_pairs_runs_by_subject_and_seed():
    from bat_app.albat.experiment import summarise

    def arm(losses, drift):
        return {"curve": [{"nominal_step": s, "subject_loss": v, "drift": drift} for s, v in zip([10, 20], losses)]}

    records = [{"subject": f"s{i}", "seed": 0, "arms": {"albat": arm([1.0 + i, 0.5 + i], 0.1),
                                                       "none": arm([1.0 + i, 0.7 + i], 0.3)}} for i in range(4)]
    stats = summarise(records, ["albat", "none"], [("albat", "none")])
    diff = next(d for d in stats["diffs"] if d["metric"] == "subject_loss_min")
    assert diff["n"] == 4 and diff["ci"][0] == pytest.approx(-0.2) and diff["ci"][2] < 0  # paired: no subject spread
    area = next(d for d in stats["diffs"] if d["metric"] == "subject_loss_area")
    assert area["ci"][0] == pytest.approx(-0.1)
    assert stats["per_arm"]["albat"]["n"] == 4 and stats["pairs"] == 4


def _bench_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_albat", REPO / "scripts" / "bench_albat.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_albat", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_pairs_recorded_on_different_runs_add_up_to_one_experiment(tmp_path):
    bench = _bench_module()
    plan = bench.PLANS["cpu"]
    # which subjects and seeds run beside a pair does not change its numbers, so not its key
    subset = bench.replace(plan, subjects=["dot_star"], seeds=[2])
    assert subset.key() == plan.key() != bench.replace(plan, m=plan.m + 1).key()
    for name, seed, key in [("dot_star", 0, plan.key()), ("striped_heart", 1, plan.key()),
                            ("dotted_moon", 0, "another-plan"), ("not_planned", 0, plan.key())]:
        (tmp_path / f"{name}-s{seed}.json").write_text(json.dumps({"plan": key, "subject": name, "seed": seed}))
    found = bench.recorded_pairs(plan, tmp_path)
    assert [(r["subject"], r["seed"]) for r in found] == [("dot_star", 0), ("striped_heart", 1)]


def test_the_app_recipe_plan_pins_the_apps_training_and_keeps_its_own_records():
    from bat_app.shapes import get_subject

    bench = _bench_module()
    registered, app = bench.PLANS["cpu"], bench.PLANS["cpu-app-recipe"]
    subject = get_subject("dot_star")
    first, second = (bench.train_config(plan, subject, 0) for plan in (registered, app))
    assert (first.lr, first.prior) == (5e-4, False) and (second.lr, second.prior) == (1e-3, True)
    assert second.num_class_images > 0
    # class images are in every arm's training: no "prior" arm (the app refuses that column too)
    assert app.arms == [a for a in registered.arms if a != "prior"]
    assert app.key() != registered.key()  # a record of one plan is never counted for the other
    # each plan's report says how to run it and writes its own section and plot
    assert set(bench.MODES) == set(bench.PLANS)
    assert bench.MODES["cpu-app-recipe"].section != bench.MODES["cpu"].section
    assert bench.MODES["cpu-app-recipe"].plot != bench.MODES["cpu"].plot


def test_the_recorded_pairs_still_belong_to_their_plans():
    """A change to a real plan would orphan the pairs already recorded (hours of CPU each): the
    records in docs/bench-albat/<mode> must carry the plan's current key."""
    bench = _bench_module()
    for mode in ("cpu", "cpu-app-recipe"):
        folder = REPO / "docs" / "bench-albat" / mode
        keys = {json.loads(f.read_text())["plan"] for f in folder.glob("*.json")}
        assert keys == {bench.PLANS[mode].key()}, f"{folder} holds pairs of another plan: {keys}"


@pytest.mark.skipif(not HAVE_SHAPES, reason="shapes backbone not built (python -m bat_app shapes build)")
def test_quick_run_writes_results_a_plot_and_only_its_own_section(tmp_path, shapes_pool):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nHand-written intro.\n\n## ALBAT: the pre-registered experiment\n\n"
                   "<!-- bench_albat:experiment:start -->\nold numbers\n<!-- bench_albat:experiment:end -->\n\n"
                   "## Later section\n\nHand-written outro.\n")
    env = {**os.environ, "BAT_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1"}
    work = tmp_path / "work"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_albat.py"), "run", "--quick", "--work",
                           str(work), "--doc", str(doc), "--plot", str(tmp_path / "frontier.png")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = doc.read_text()
    assert "Hand-written intro." in text and "Hand-written outro." in text and "old numbers" not in text
    assert text.count("<!-- bench_albat:experiment:start -->") == 1 and "Smoke test" in text
    assert "| albat − shortlist | subject_loss_min |" in text and "Pre-registration" in text
    assert (tmp_path / "frontier.png").stat().st_size > 1000

    record = json.loads((work / "runs" / "dot_star-s0.json").read_text())
    arms = record["arms"]
    assert set(arms) == {"albat", "albat_neg", "shortlist", "clip", "random", "prior", "none", "none_eq"}
    albat_items = arms["albat"]["items"]
    assert albat_items > 0 and all(arms[a]["items"] == albat_items for a in ("shortlist", "clip", "random", "prior"))
    assert record["config"]["pivotal"] is False and record["config"]["steps"] == 4
    assert arms["none"]["items"] == 0 and arms["albat_neg"]["selection_stats"]["anchors"] == arms["albat_neg"]["items"]
    for arm in arms.values():
        assert [p["nominal_step"] for p in arm["curve"]] == [2, 4]
        assert all(np.isfinite(p["subject_loss"]) and np.isfinite(p["drift"]) for p in arm["curve"])
        assert "subject_fidelity" in arm["curve"][-1]["samples"]
    shift = arms["none_eq"]["extra_steps"]
    assert shift >= 1 and [p["step"] for p in arms["none_eq"]["curve"]] == [2 + shift, 4 + shift]
    assert arms["none"]["curve"][0]["drift"] != arms["albat"]["curve"][0]["drift"]
