"""Memory profiles (bat_app/models/memory.py): the data, the choice for a GPU size, what a profile
does to a TrainConfig and to the trainer, the bitsandbytes/CUDA errors, the UI note and the job."""

from __future__ import annotations

import json

import pytest
import torch

from bat_app import cli, jobs
from bat_app.errors import InputError, ModelLoadError
from bat_app.models import load_components, presets
from bat_app.models import memory
from bat_app.models.memory import MemoryProfile, apply_profile, check_environment, pick_profile, profiles
from bat_app.train import TrainConfig, train_lora
from bat_app.ui import handlers, model_note
from bat_app.ui.settings import AppSettings

GPU_PRESETS = [name for name, p in presets().items() if not p.get("memory", {}).get("cpu")]


@pytest.fixture
def no_bitsandbytes(monkeypatch):
    monkeypatch.setattr(memory, "bitsandbytes_version", lambda: None)


@pytest.fixture
def fake_gpu(monkeypatch):
    """Pretend this machine has a CUDA GPU of the size the test sets (``fake_gpu(24)``)."""
    def set_size(gb: float) -> None:
        monkeypatch.setattr(memory, "gpu_memory_gb", lambda: float(gb))
    return set_size


# --- the data --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(presets()))
def test_every_preset_has_well_formed_profiles(name):
    block = presets()[name].get("memory", {})
    assert set(block) <= {"cpu", "profiles", "note", "measured"}, f"{name}: unknown memory keys"
    if block.get("cpu"):
        assert "profiles" not in block and profiles(name) == []
        return
    found = profiles(name)  # parses every profile: unknown keys or bad values raise
    assert found, f"{name}: a GPU preset needs at least one memory profile"
    assert len({p.name for p in found}) == len(found) and len({p.min_gpu_gb for p in found}) == len(found)
    for p in found:
        # named by the card size it is for; min_gpu_gb is what torch reports for such a card (a bit less)
        assert p.name.endswith(" GB") and 0.85 * float(p.name.split()[0]) <= p.min_gpu_gb <= float(p.name.split()[0])
        assert p.note and "not measured" in p.note.lower()
        assert p.resolution is None or p.resolution <= presets()[name]["resolution"]
        # every profile makes a valid training config for the preset
        cfg = TrainConfig.for_model(name, 5, memory_profile=p.name)
        assert cfg.memory_profile == p.name and cfg.gradient_checkpointing == p.gradient_checkpointing


def test_flux_fits_40_to_80_gb_in_bf16_and_24_gb_with_an_nf4_base():
    for name in ("flux-dev", "flux-schnell"):
        big = [p for p in profiles(name) if p.min_gpu_gb >= 38]
        assert big and all(p.dtype == "bf16" and p.gradient_checkpointing and p.quantize is None for p in big)
        small = pick_profile(name, 23.6).profile  # an RTX 4090 / 3090 as torch reports it
        assert (small.name, small.quantize, small.optimizer, small.gradient_checkpointing) == \
            ("24 GB", "nf4", "adamw8bit", True)


# --- choosing a profile for a GPU ------------------------------------------------------------

@pytest.mark.parametrize("model, gpu_gb, expected", [
    ("flux-dev", 139.8, "80 GB"), ("flux-dev", 79.2, "80 GB"), ("flux-dev", 39.4, "40 GB"),
    ("flux-dev", 23.6, "24 GB"), ("flux-dev", 22.0, "24 GB"), ("flux-dev", 15.0, None), ("flux-dev", 0, None),
    ("sdxl", 79.2, "40 GB"), ("sdxl", 23.6, "16 GB"), ("sdxl", 15.0, "16 GB"), ("sdxl", 11.6, None),
    ("sd15", 23.6, "12 GB"), ("sd15", 7.6, "8 GB"), ("sd15", 5.8, None),
    ("shapes", 80, None), ("some/hub-model", 80, None),
])
def test_the_largest_profile_that_fits_is_picked(model, gpu_gb, expected):
    choice = pick_profile(model, gpu_gb)
    assert (choice.profile.name if choice.profile else None) == expected
    assert choice.reason  # always says why


def test_the_reason_names_the_gpu_and_the_next_profile():
    assert pick_profile("flux-dev", 24).reason == "this GPU has 24 GB (the '40 GB' profile needs 38 GB)"
    assert pick_profile("flux-dev", 80).reason == "this GPU has 80 GB"
    assert pick_profile("flux-dev", 12).reason == \
        "this GPU has 12 GB; the smallest profile of 'flux-dev', '24 GB', needs 22 GB"
    assert pick_profile("flux-dev", 0).reason.startswith("no CUDA GPU was found")
    assert pick_profile("shapes", 80).reason == "'shapes' has no memory profiles"


# --- a profile in a TrainConfig ----------------------------------------------------------------

def test_applying_a_profile_changes_the_memory_settings_only():
    base = TrainConfig(token="sks", class_noun="dog", steps=10, rank=8)
    cfg = apply_profile(base, pick_profile("flux-dev", 24).profile)
    assert (cfg.memory_profile, cfg.quantize, cfg.optimizer, cfg.gradient_checkpointing, cfg.mixed_precision,
            cfg.resolution, cfg.batch_size, cfg.compile) == ("24 GB", "nf4", "adamw8bit", True, "bf16", 512, 1, False)
    assert (cfg.steps, cfg.rank, cfg.token) == (10, 8, "sks")
    big = apply_profile(base, pick_profile("sdxl", 80).profile)
    assert big.gradient_checkpointing is False and big.resolution is None and big.optimizer == "adamw"
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_for_model_puts_the_profile_between_the_recipe_and_the_given_settings(fake_gpu):
    cfg = TrainConfig.for_model("flux-dev", 5, memory_profile="40 GB", resolution=768)
    assert cfg.memory_profile == "40 GB" and cfg.gradient_checkpointing and cfg.mixed_precision == "bf16"
    assert cfg.resolution == 768 and cfg.steps == 500  # the user's resolution, the recipe's steps
    fake_gpu(23.6)
    assert TrainConfig.for_model("flux-dev", 5, memory_profile="auto").memory_profile == "24 GB"
    assert TrainConfig.for_model("shapes", 5, memory_profile="auto") == TrainConfig.for_model("shapes", 5)
    fake_gpu(0)
    with pytest.raises(InputError, match="No memory profile of 'sd15' fits here: no CUDA GPU was found"):
        TrainConfig.for_model("sd15", 5, memory_profile="auto")
    with pytest.raises(InputError, match="has no memory profile '24GB'; its profiles are '80 GB', '40 GB', '24 GB'"):
        TrainConfig.for_model("flux-dev", 5, memory_profile="24GB")
    with pytest.raises(InputError, match="it has none"):
        TrainConfig.for_model("shapes", 5, memory_profile="8 GB")


@pytest.mark.parametrize("kw, message", [
    ({"optimizer": "sgd"}, "`optimizer` must be one of"), ({"quantize": "int3"}, "`quantize` must be one of"),
    ({"compile": "yes"}, "`compile` must be true or false"),
    ({"gradient_checkpointing": 1}, "`gradient_checkpointing` must be true or false"),
])
def test_config_rejects_bad_memory_settings(kw, message):
    with pytest.raises(InputError, match=message):
        TrainConfig(**kw)
    with pytest.raises(InputError, match="unknown key"):
        MemoryProfile.from_dict({"name": "8 GB", "min_gpu_gb": 7.5, "xformers": True})


def test_the_fingerprint_ignores_the_profile_name_and_compile_and_keeps_old_ones():
    base = TrainConfig(token="sks", class_noun="dog")
    assert TrainConfig(token="sks", class_noun="dog", memory_profile="8 GB", compile=True,
                       save_every=50, step_choices=2).fingerprint() == base.fingerprint()
    # checkpoints written before these settings existed still resume: defaults do not hash
    old = {k: v for k, v in base.to_dict().items() if k not in
           ("checkpoint_every", "keep_checkpoints", "memory_profile", "optimizer", "quantize", "compile",
            "caption_mix", "prior_contexts", "embedding_retract", "lr_drop_fraction", "background_weight",
            "backdrop_swaps", "save_every", "step_choices", "tail_average", "refine_latents",
            "refine_anchor", "refine_subject_weight", "embeddings_only_steps",
            "freeze_embeddings_after")}
    import hashlib

    assert base.fingerprint() == hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:16]
    assert TrainConfig(token="sks", class_noun="dog", optimizer="adamw8bit").fingerprint() != base.fingerprint()
    assert TrainConfig(token="sks", class_noun="dog", caption_mix="all").fingerprint() != base.fingerprint()
    assert TrainConfig(token="sks", class_noun="dog", refine_latents=50).fingerprint() != base.fingerprint()
    assert TrainConfig(token="sks", class_noun="dog", refine_latents=50, refine_subject_weight=4).fingerprint() != (
        TrainConfig(token="sks", class_noun="dog", refine_latents=50).fingerprint())
    assert TrainConfig(token="sks", class_noun="dog", pivotal=True, embeddings_only_steps=100).fingerprint() != (
        TrainConfig(token="sks", class_noun="dog", pivotal=True).fingerprint())
    assert TrainConfig(token="sks", class_noun="dog", background_weight=0.1).fingerprint() != base.fingerprint()
    assert TrainConfig(token="sks", class_noun="dog", tail_average=3).fingerprint() != base.fingerprint()


# --- the trainer -----------------------------------------------------------------------------

def quick(**kw) -> TrainConfig:
    return TrainConfig(**({"token": "sks", "class_noun": "disc", "steps": 2, "checkpoint_every": 0, "lr": 1e-3,
                          "seed": 0} | kw))


def test_gradient_checkpointing_is_on_while_training_and_gives_the_same_steps(comps, images, tmp_path):
    seen = []

    def watch(event):
        if event.stage == "train" and event.step:
            seen.append(comps.denoiser.is_gradient_checkpointing)

    on = train_lora(comps, images, quick(gradient_checkpointing=True), tmp_path / "on", progress=watch, export=False)
    assert seen == [True, True]
    assert not comps.denoiser.is_gradient_checkpointing  # off again for the next run on these modules
    off = train_lora(comps, images, quick(gradient_checkpointing=False), tmp_path / "off", export=False)
    # recomputing activations changes memory, not the maths: same losses, same LoRA
    assert on.losses == pytest.approx(off.losses, rel=1e-5)
    assert any(v.abs().sum() > 0 for k, v in on.unet_lora.items() if "lora_B" in k)  # gradients reached LoRA
    for key, value in on.unet_lora.items():
        assert torch.allclose(value, off.unet_lora[key], atol=1e-6), key


def test_compile_compiles_the_denoiser_in_place_and_undoes_it(comps, images, tmp_path, monkeypatch):
    compiled = []

    def fake_compile(fn, *args, **kwargs):  # nn.Module.compile() calls torch.compile(self._call_impl)
        compiled.append(fn)
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    result = train_lora(comps, images, quick(steps=1, compile=True), tmp_path / "c", export=False)
    assert len(compiled) == 1 and compiled[0].__self__ is comps.denoiser
    assert comps.denoiser._compiled_call_impl is None and result.unet_lora


# --- bitsandbytes and CUDA ---------------------------------------------------------------------

def test_8bit_adam_and_nf4_without_cuda_or_bitsandbytes_are_clear_errors(no_bitsandbytes):
    nf4 = apply_profile(TrainConfig(), pick_profile("flux-dev", 24).profile)
    with pytest.raises(InputError, match=r"The memory profile '24 GB' uses 8-bit AdamW and a NF4 \(4-bit\) base, "
                                         r"but bitsandbytes needs a CUDA GPU and none was found"):
        check_environment(nf4, "flux-dev", cuda=False)
    with pytest.raises(InputError, match=r"`pip install bitsandbytes`; or use the '40 GB' memory profile "
                                         r"\(it needs 38 GB of GPU memory\)"):
        check_environment(nf4, "flux-dev", cuda=True)
    with pytest.raises(InputError, match="This training config uses 8-bit AdamW.*or train with optimizer 'adamw'"):
        check_environment(TrainConfig(optimizer="adamw8bit"), None, cuda=False)
    check_environment(TrainConfig(), "flux-dev", cuda=False)  # nothing asked of bitsandbytes: fine


def test_an_old_bitsandbytes_is_refused_for_nf4(monkeypatch):
    monkeypatch.setattr(memory, "bitsandbytes_version", lambda: (0, 42, 0))
    with pytest.raises(InputError, match=r"too old for 4-bit loading: `pip install -U bitsandbytes` \(>= 0.43.3\)"):
        check_environment(TrainConfig(quantize="nf4"), "flux-dev", cuda=True)
    check_environment(TrainConfig(optimizer="adamw8bit"), "flux-dev", cuda=True)  # 8-bit Adam: any version


def test_the_trainer_refuses_8bit_adam_before_training(comps, images, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match="8-bit AdamW"):
        train_lora(comps, images, quick(optimizer="adamw8bit"), tmp_path / "x", export=False)
    assert not (tmp_path / "x").exists()


def test_a_quantised_base_on_cpu_is_a_clear_load_error(tiny_model_dir):
    with pytest.raises(ModelLoadError, match=r"NF4 \(4-bit\) base needs a CUDA GPU"):
        load_components(str(tiny_model_dir), device="cpu", quantize="nf4")


def test_the_cli_takes_a_memory_profile_and_checks_it_before_loading(subject_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = ["--images", str(subject_dir), "--class-noun", "dog", "--model", "flux-dev", "--memory-profile", "24 GB"]
    assert cli.main(["train", *args, "--out", str(tmp_path / "t")]) == 2
    assert "The memory profile '24 GB' uses 8-bit AdamW and a NF4 (4-bit) base" in capsys.readouterr().err
    assert cli.main(["compare", *args, "--methods", "none", "--out", str(tmp_path / "c")]) == 2
    assert "bitsandbytes needs a CUDA GPU" in capsys.readouterr().err
    assert cli.main(["train", *args[:-1], "huge", "--out", str(tmp_path / "t")]) == 2
    assert "has no memory profile 'huge'" in capsys.readouterr().err


# --- the UI: the note and the job -------------------------------------------------------------

def test_the_model_note_says_which_profile_and_why(no_bitsandbytes):
    flux = presets()["flux-dev"]["memory"]
    note = model_note.fit_note(flux, gpu_gb=24)
    assert note.startswith(" Trains with the **24 GB** memory profile: NF4 base + 8-bit Adam + gradient "
                           "checkpointing, bf16, 512 px, because this GPU has 24 GB (the '40 GB' profile needs 38 GB).")
    assert note.endswith("It needs bitsandbytes, which this server does not have installed.")
    assert "**80 GB** memory profile: gradient checkpointing, bf16, because this GPU has 141 GB." in \
        model_note.fit_note(flux, gpu_gb=141)
    assert model_note.fit_note(flux, gpu_gb=12) == (" Needs ~22 GB of GPU memory (its smallest memory profile, "
                                                  "'24 GB'); this GPU has 12 GB: does not fit: pick a smaller model.")
    assert model_note.fit_note(flux, gpu_gb=0).startswith(" Needs a CUDA GPU with ~22 GB; none was found")
    assert "**12 GB** memory profile: no gradient checkpointing" in model_note.fit_note(presets()["sd15"]["memory"], 16)


def test_the_submitted_job_uses_the_profile_of_this_gpu(tmp_path, tiny_model_dir, fake_gpu, no_bitsandbytes,
                                                        monkeypatch):
    settings = AppSettings.from_env(model=str(tiny_model_dir), pool=None,
                                    jobs=jobs.JobSettings.from_env(data_dir=tmp_path / "home"))
    fake_gpu(16)
    assert "**12 GB** memory profile" in model_note.model_note("sd15")
    cfg = handlers.build_config(settings, class_noun="dog", model="sd15", methods=["none"], n_images=4)
    assert cfg.train["memory_profile"] == "12 GB" and cfg.train_config(4).gradient_checkpointing is False
    fake_gpu(8)
    cfg = handlers.build_config(settings, class_noun="dog", model="sd15", methods=["none"], n_images=4)
    assert cfg.train_config(4).memory_profile == "8 GB" and cfg.train_config(4).gradient_checkpointing is True
    # the tiny test model (not a preset) and a GPU too small: no profile, as before
    assert "memory_profile" not in handlers.build_config(settings, class_noun="dog", methods=["none"]).train
    fake_gpu(12)
    assert "memory_profile" not in handlers.build_config(settings, class_noun="dog", model="sdxl",
                                                         methods=["none"]).train
    # Flux on 24 GB needs bitsandbytes: refused at submit, not after the queue
    fake_gpu(24)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(InputError, match="`pip install bitsandbytes`; or use the '40 GB' memory profile"):
        handlers.build_config(settings, class_noun="dog", model="flux-dev", methods=["none"])
