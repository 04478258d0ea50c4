"""The CLI end to end, as a user runs it: a real subprocess on the tiny model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args, env_extra=None) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": os.environ.get("BAT_TORCH_THREADS", "2")}
    env |= env_extra or {}
    return subprocess.run([sys.executable, "-m", "bat_app", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=600)


def test_help_lists_commands():
    out = run_cli("--help")
    assert out.returncode == 0
    for command in ("train", "presets"):
        assert command in out.stdout


def test_train_end_to_end_then_resume(tiny_model_dir, subject_dir, tmp_path):
    out_dir = tmp_path / "run"
    args = ["train", "--images", subject_dir, "--token", "sks", "--class-noun", "disc", "--model", tiny_model_dir,
            "--out", out_dir, "--steps", "6", "--checkpoint-every", "3", "--rank", "2", "--seed", "1"]
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr
    summary = done.stdout.strip().splitlines()[-1]
    assert summary.startswith("done: 6 steps (") and "steps/s" in summary
    assert str(out_dir / "pytorch_lora_weights.safetensors") in summary
    assert "train" in done.stderr and "6/6" in done.stderr  # the tqdm bar
    assert any(k.startswith("lora_unet_") for k in load_file(out_dir / "sks_disc_kohya.safetensors"))
    assert sorted(p.name for p in (out_dir / "checkpoints").iterdir()) == ["step-000003", "step-000006"]

    again = run_cli(*args, "--resume")
    assert again.returncode == 0, again.stderr
    assert "resumed at step 6" in again.stdout


def test_saved_steps_come_with_a_grid_to_choose_from(tiny_model_dir, subject_dir, tmp_path):
    from PIL import Image

    out_dir = tmp_path / "run"
    done = run_cli("train", "--images", subject_dir, "--class-noun", "disc", "--model", tiny_model_dir,
                   "--out", out_dir, "--steps", "6", "--save-every", "2", "--rank", "2", "--checkpoint-every", "0")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (out_dir / "steps").iterdir()) == ["step-000002", "step-000004"]
    assert "side by side" in done.stdout and str(out_dir / "steps.png") in done.stdout
    assert "steps grid" in done.stderr and "2/2" in done.stderr  # its tqdm bar: steps 4 and 6
    with Image.open(out_dir / "steps.png") as grid:
        assert grid.width == 260 + 2 * 4 * (64 + 4) + 4  # two steps x four seeds


def test_bad_input_exits_2_with_a_readable_message(tiny_model_dir, tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "notes.pdf").write_bytes(b"%PDF-1.4 nothing")
    out = run_cli("train", "--images", tmp_path / "imgs", "--class-noun", "dog", "--model", tiny_model_dir,
                  "--out", tmp_path / "o")
    assert out.returncode == 2
    assert out.stderr.startswith("error: ") and "notes.pdf" in out.stderr and "Traceback" not in out.stderr


def test_unknown_config_key_is_refused(tmp_path, subject_dir, tiny_model_dir):
    cfg = tmp_path / "cfg.json"
    cfg.write_text('{"steps": 3, "lerning_rate": 0.1}')
    out = run_cli("train", "--images", subject_dir, "--class-noun", "dog", "--model", tiny_model_dir,
                  "--out", tmp_path / "o", "--config", cfg)
    assert out.returncode == 2 and "Unknown training setting 'lerning_rate'" in out.stderr


def test_serve_command_and_app_entry_do_not_import_each_other():
    from bat_app.testing import module_imports

    assert "bat_app.ui.serve" in module_imports("bat_app.ui.cli")
    assert not any(name.startswith("bat_app.ui.cli") for name in module_imports("bat_app.ui.serve"))


def test_caption_flags_reach_the_training_config(tiny_model_dir, subject_dir):
    from bat_app.cli import build_parser, train_config_from_args

    base = ["train", "--images", str(subject_dir), "--class-noun", "disc", "--model", str(tiny_model_dir),
            "--out", "o"]
    plain = train_config_from_args(build_parser().parse_args(base), 4)
    assert plain.captions is False and plain.caption_mix == "half"
    given = train_config_from_args(build_parser().parse_args([*base, "--captions", "--caption-mix", "all"]), 4)
    assert given.captions is True and given.caption_mix == "all"


def test_refine_flags_reach_the_training_config(tiny_model_dir, subject_dir):
    from bat_app.cli import build_parser, train_config_from_args

    base = ["train", "--images", str(subject_dir), "--class-noun", "disc", "--model", str(tiny_model_dir),
            "--out", "o"]
    plain = train_config_from_args(build_parser().parse_args(base), 4)
    assert plain.refine_latents == 0 and plain.refine_anchor == 1.0 and plain.refine_subject_weight == 1.0
    given = train_config_from_args(build_parser().parse_args(
        [*base, "--refine-latents", "100", "--refine-anchor", "0.3", "--refine-subject-weight", "16"]), 4)
    assert given.refine_latents == 100 and given.refine_anchor == 0.3 and given.refine_subject_weight == 16


def test_embeddings_only_steps_reach_the_training_config(tiny_model_dir, subject_dir):
    from bat_app.cli import build_parser, train_config_from_args

    base = ["train", "--images", str(subject_dir), "--class-noun", "disc", "--model", str(tiny_model_dir),
            "--out", "o", "--pivotal", "--steps", "300"]
    assert train_config_from_args(build_parser().parse_args(base), 4).embeddings_only_steps == 0
    given = train_config_from_args(build_parser().parse_args([*base, "--embeddings-only-steps", "100"]), 4)
    assert given.embeddings_only_steps == 100 and given.steps == 300 and not given.freeze_embeddings_after
    frozen = train_config_from_args(build_parser().parse_args(
        [*base, "--embeddings-only-steps", "100", "--freeze-embeddings-after"]), 4)
    assert frozen.freeze_embeddings_after


def test_prior_context_flags_reach_the_training_config(tiny_model_dir, subject_dir):
    from bat_app.cli import build_parser, train_config_from_args

    base = ["train", "--images", str(subject_dir), "--class-noun", "disc", "--model", str(tiny_model_dir),
            "--out", "o", "--prior"]
    assert train_config_from_args(build_parser().parse_args(base), 4).prior_contexts is None  # sd15's recipe
    given = train_config_from_args(build_parser().parse_args(
        [*base, "--prior-context", "", "--prior-context", "on the beach"]), 4)
    assert given.class_prompt_cycle == ["a photo of disc", "a photo of disc on the beach"]
