"""``python -m bat_app shapes build``: pretrain the whole Shapes world from one seed.

Stages, in order (each skipped when its output exists, so an interrupted build resumes):

    data        render the pretraining stream (seed), cached in --work
    vae         AutoencoderKL f=4 (32 px -> 8x8x8)                 -> WORK/vae/
    classifier  attribute CNN on the full attribute space, renders
                and their VAE reconstructions                      -> OUT/classifier/
    clip        open_clip model, contrastive on the stream         -> OUT/clip/
    unet        UNet on frozen latents + frozen CLIP text tower    -> OUT/backbone/ (diffusers)
    subjects    held-out subjects' example uploads                  -> SUBJECTS/<name>/

Everything is seeded; with the same torch build the result is the same (CPU kernels are
deterministic for these ops). Budget on a 2-core CPU: about 40 minutes in all. The shipped
backbone (v2) was built on a GPU by scripts/gpu_shapes_build.py with far more steps; its
config is assets/shapes/build.json (``shapes build --config assets/shapes/build.json``).
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from bat_app.shapes import paths


@dataclass
class BuildConfig:
    out: Path = paths.SHAPES_DIR  # assets/shapes
    subjects_out: Path = paths.SUBJECTS_DIR  # assets/subjects
    work: Path = Path("build/shapes")  # caches: rendered data, the VAE, latents, eval grids
    seed: int = 0
    n_train: int = 60000  # pretraining images (= `shapes pool --n 60000 --seed <seed>`)
    classifier_steps: int = 1500
    classifier_n: int = 40000  # the judge's training images (full attribute space)
    classifier_test_n: int = 4000
    vae_steps: int = 1500
    clip_steps: int = 1000
    unet_steps: int = 1500  # first cosine cycle
    unet_more_steps: int = 1000  # second cycle (warm restart from the first's EMA), 0 = none
    unet_more_lr: float = 3e-4
    unet_batch: int = 64
    unet_lr: float = 5e-4
    vae_batch: int = 24
    clip_batch: int = 256
    classifier_batch: int = 128
    eval_every: int = 250  # prompt-following grid during UNet training (0 = never)
    threads: int = 2
    # Where the training runs ("cpu", "cuda"). Random draws come from CPU generators on every
    # device, so the batches are the same; the arithmetic (and so the weights) is not bit-equal.
    device: str = "cpu"
    # Continue training the backbone already in OUT/backbone for this many more steps (a
    # further warm-restart cycle on the same data, VAE and text tower) instead of building
    # it; 0 = off. How v2 of the shipped backbone was made (docs/shapes.md).
    continue_steps: int = 0
    continue_lr: float = 3e-4
    time_budget_min: float | None = None  # stop the (first or continued) UNet cycle early

    def __post_init__(self):
        self.out, self.subjects_out, self.work = Path(self.out), Path(self.subjects_out), Path(self.work)
        for name in ("n_train", "classifier_steps", "vae_steps", "clip_steps", "unet_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"BuildConfig.{name} must be positive, got {getattr(self, name)}.")


def config_from_json(path: Path) -> BuildConfig:
    """A BuildConfig from a JSON object of its fields (values may be strings, as the
    ``build`` block of a backbone's bat_shapes.json stores them)."""
    from dataclasses import fields

    raw = json.loads(Path(path).read_text())
    known = {f.name: f for f in fields(BuildConfig)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ValueError(f"{path}: unknown build settings {unknown}; known: {sorted(known)}.")
    defaults = BuildConfig()
    values = {}
    for key, value in raw.items():
        default = getattr(defaults, key)
        if isinstance(value, str) and value == "None":
            value = None
        elif isinstance(value, str) and isinstance(default, (bool, int, float)):
            value = {"True": True, "False": False}.get(value, value)
            value = type(default)(value) if not isinstance(value, bool) else value
        elif default is None and isinstance(value, str):
            value = float(value)
        values[key] = value
    return BuildConfig(**values)


def _log(msg: str) -> None:
    print(f"[shapes build {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def rendered(work: Path, seed: int, n: int, pretraining: bool = True):
    """``sample_arrays(seed, n, pretraining)``, cached in WORK (rendering 60,000 images takes
    two CPU-minutes; a build on a GPU machine brings the cache along instead)."""
    from bat_app.shapes.world import sample_arrays

    path = Path(work) / f"data-seed{seed}-n{n}{'' if pretraining else '-full'}.npz"
    if path.exists():
        d = np.load(path, allow_pickle=False)
        return d["images"], list(d["captions"]), json.loads(str(d["attributes"]))
    _log(f"rendering {n} {'pretraining' if pretraining else 'full-space'} images (seed {seed})")
    images, captions, attributes = sample_arrays(seed, n, pretraining=pretraining, progress=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, images=images, captions=np.array(captions),
                        attributes=np.array(json.dumps(attributes)))
    return images, captions, attributes


def stage_data(cfg: BuildConfig):
    images, captions, _ = rendered(cfg.work, cfg.seed, cfg.n_train)
    return images, captions


def stage_classifier(cfg: BuildConfig, vae) -> None:
    from bat_app.shapes.classifier import build_classifier

    folder = cfg.out / "classifier"
    if (folder / "model.safetensors").exists():
        return _log("classifier: exists, skipped")
    _log("classifier: training (renders + VAE reconstructions)")
    meta = build_classifier(folder, cfg.seed, n_train=cfg.classifier_n,
                            n_test=cfg.classifier_test_n, steps=cfg.classifier_steps, vae=vae,
                            batch_size=cfg.classifier_batch, device=cfg.device,
                            render=lambda seed, n: rendered(cfg.work, seed, n, pretraining=False))
    _log(f"classifier: held-out accuracy {meta['held_out_accuracy']}, through the VAE "
         f"{meta['held_out_accuracy_through_vae']}")


def stage_vae(cfg: BuildConfig, images: np.ndarray):
    from diffusers import AutoencoderKL

    from bat_app.shapes.backbone import encode_all, train_vae

    folder = cfg.work / "vae"
    shipped = cfg.out / "backbone" / "vae"
    if cfg.continue_steps and not (folder / "config.json").exists() and shipped.exists():
        # Continuing a backbone: its UNet was trained on this VAE's latents, so reuse it.
        _log(f"vae: using the backbone's own VAE ({shipped})")
        AutoencoderKL.from_pretrained(shipped).float().save_pretrained(folder, safe_serialization=True)
    if not (folder / "config.json").exists():
        _log("vae: training")
        vae, mse = train_vae(images, steps=cfg.vae_steps, seed=cfg.seed, batch_size=cfg.vae_batch,
                             device=cfg.device)
        lat = encode_all(vae, images[:4000], device=cfg.device)
        vae.register_to_config(scaling_factor=float(1.0 / lat.std()))
        vae.save_pretrained(folder, safe_serialization=True)
        (folder / "train.json").write_text(json.dumps({"mse": mse, "steps": cfg.vae_steps,
                                                       "batch_size": cfg.vae_batch,
                                                       "device": cfg.device}))
        _log(f"vae: mse {mse:.4f}, scaling_factor {vae.config.scaling_factor:.4f}")
    vae = AutoencoderKL.from_pretrained(folder).eval()
    lat_path = cfg.work / f"latents-seed{cfg.seed}-n{cfg.n_train}.pt"
    if not lat_path.exists():
        _log("vae: encoding the pretraining images")
        torch.save(encode_all(vae, images, device=cfg.device) * vae.config.scaling_factor, lat_path)
    return vae, torch.load(lat_path)


def stage_clip(cfg: BuildConfig, images: np.ndarray, captions: list[str]) -> None:
    from bat_app.shapes.clip import build_clip

    folder = cfg.out / "clip"
    if (folder / "open_clip_model.safetensors").exists():
        return _log("clip: exists, skipped")
    _log("clip: training")
    meta = build_clip(folder, images, captions, cfg.seed, steps=cfg.clip_steps,
                      batch_size=cfg.clip_batch, device=cfg.device)
    _log(f"clip: {meta}")


def _grid_eval(cfg: BuildConfig, vae, text_encoder, tokenizer, classifier, history: list):
    """The prompt-following grid run during UNet training; appends to ``history``."""
    from bat_app.shapes.evaluate import grid_prompt_following

    def eval_fn(unet, step):
        if classifier is None:
            return
        if next(unet.parameters()).device.type != "cpu":  # the grid and the save run on the CPU
            unet = copy.deepcopy(unet).cpu()
        score = grid_prompt_following(unet, vae, text_encoder, tokenizer, classifier,
                                      n_prompts=32, seeds=(0,),
                                      grid_path=cfg.work / f"grid-{step:05d}.png")
        history.append({"step": step, **score})
        _log(f"unet step {step}: prompt following {score}")
        # A session can end at any time: keep the latest EMA weights and the history.
        unet.save_pretrained(cfg.work / "unet-ema", safe_serialization=True)
        (cfg.work / "unet-history.json").write_text(json.dumps(history, indent=2))

    return eval_fn


def stage_unet(cfg: BuildConfig, vae, latents: torch.Tensor, captions: list[str]) -> None:
    from bat_app.models.tokenizer import offline_clip_tokenizer
    from bat_app.shapes.backbone import save_pipeline, train_unet
    from bat_app.shapes.clip import CONTEXT_LENGTH, load_clip, text_tower_to_transformers

    folder = cfg.out / "backbone"
    if (folder / "model_index.json").exists():
        return _log("unet: backbone exists, skipped")
    clip_model, _, _ = load_clip(cfg.out / "clip")
    text_encoder = text_tower_to_transformers(clip_model).requires_grad_(False)
    tokenizer = offline_clip_tokenizer(model_max_length=CONTEXT_LENGTH)
    classifier = None
    if (cfg.out / "classifier" / "model.safetensors").exists():
        from bat_app.shapes.classifier import load_classifier

        classifier = load_classifier(cfg.out / "classifier")
    history = []
    eval_fn = _grid_eval(cfg, vae, text_encoder, tokenizer, classifier, history)

    _log(f"unet: training {cfg.unet_steps} steps")
    unet, info = train_unet(latents, captions, text_encoder, tokenizer, steps=cfg.unet_steps,
                            batch_size=cfg.unet_batch, lr=cfg.unet_lr, seed=cfg.seed,
                            eval_fn=eval_fn, eval_every=cfg.eval_every, log=_log,
                            device=cfg.device,
                            time_budget_s=cfg.time_budget_min * 60 if cfg.time_budget_min else None)
    _log(f"unet: {info}")
    infos = [info]
    if cfg.unet_more_steps:
        # Warm restart: a second cosine cycle from the first cycle's EMA weights, rounded to
        # fp16 exactly as they are stored, so a build resumed from a saved cycle 1 matches.
        unet = unet.half().float()
        _log(f"unet: second cycle, {cfg.unet_more_steps} steps")
        unet, info = train_unet(latents, captions, text_encoder, tokenizer,
                                steps=cfg.unet_more_steps, batch_size=cfg.unet_batch,
                                lr=cfg.unet_more_lr, seed=cfg.seed + 1, eval_fn=eval_fn,
                                eval_every=cfg.eval_every, log=_log, init_unet=unet,
                                step_offset=cfg.unet_steps, warmup=50, device=cfg.device)
        _log(f"unet: {info}")
        infos.append(info)
    save_pipeline(folder, vae, text_encoder, tokenizer, unet,
                  {"build": {k: str(v) for k, v in asdict(cfg).items()}, "unet_train": infos,
                   "eval_history": history})


def stage_unet_continue(cfg: BuildConfig, vae, latents: torch.Tensor, captions: list[str]) -> None:
    """One more cosine cycle (warm restart) on the backbone in OUT/backbone; rewrites it.

    The eval grid runs every ``eval_every`` steps and saves the EMA weights to WORK, so an
    interrupted cycle loses at most that many steps of evidence (it restarts the cycle).
    """
    from diffusers import UNet2DConditionModel

    from bat_app.models.tokenizer import offline_clip_tokenizer
    from bat_app.shapes.backbone import save_pipeline, train_unet
    from bat_app.shapes.classifier import load_classifier
    from bat_app.shapes.clip import CONTEXT_LENGTH, load_clip, text_tower_to_transformers

    folder = cfg.out / "backbone"
    meta = json.loads((folder / "bat_shapes.json").read_text())
    start = UNet2DConditionModel.from_pretrained(folder / "unet").float()
    clip_model, _, _ = load_clip(cfg.out / "clip")
    text_encoder = text_tower_to_transformers(clip_model).requires_grad_(False)
    tokenizer = offline_clip_tokenizer(model_max_length=CONTEXT_LENGTH)
    classifier = load_classifier(cfg.out / "classifier")
    done = int(meta["unet_train"][-1]["steps_done"])
    history = list(meta.get("eval_history", []))
    eval_fn = _grid_eval(cfg, vae, text_encoder, tokenizer, classifier, history)

    _log(f"unet: continuing from step {done} for {cfg.continue_steps} steps (lr {cfg.continue_lr})")
    unet, info = train_unet(latents, captions, text_encoder, tokenizer, steps=cfg.continue_steps,
                            batch_size=cfg.unet_batch, lr=cfg.continue_lr,
                            seed=cfg.seed + len(meta["unet_train"]), eval_fn=eval_fn,
                            eval_every=cfg.eval_every, log=_log, init_unet=start,
                            step_offset=done, warmup=50, device=cfg.device,
                            time_budget_s=cfg.time_budget_min * 60 if cfg.time_budget_min else None)
    _log(f"unet: {info}")
    builds = meta.get("builds", [meta.get("build")])
    builds.append({k: str(v) for k, v in asdict(cfg).items()})
    save_pipeline(folder, vae, text_encoder, tokenizer, unet,
                  {"build": meta.get("build"), "builds": builds,
                   "unet_train": meta["unet_train"] + [info], "eval_history": history})


def stage_subjects(cfg: BuildConfig) -> None:
    from bat_app.shapes.subjects import write_subjects

    write_subjects(cfg.subjects_out)
    _log(f"subjects: written under {cfg.subjects_out}")


def build(cfg: BuildConfig) -> dict:
    torch.set_num_threads(cfg.threads)
    t0 = time.time()
    timings = {}

    def timed(name, fn, *args):
        t = time.time()
        out = fn(*args)
        timings[name] = round(time.time() - t, 1)
        return out

    images, captions = timed("data", stage_data, cfg)
    vae, latents = timed("vae", stage_vae, cfg, images)
    if cfg.continue_steps:
        timed("unet", stage_unet_continue, cfg, vae, latents, captions)
        timings["total"] = round(time.time() - t0, 1)
        (cfg.work / f"timings-continue-{cfg.continue_steps}.json").write_text(json.dumps(timings, indent=2))
        _log(f"done in {timings['total'] / 60:.1f} min: {timings}")
        return timings
    timed("classifier", stage_classifier, cfg, vae)
    timed("clip", stage_clip, cfg, images, captions)
    timed("unet", stage_unet, cfg, vae, latents, captions)
    timed("subjects", stage_subjects, cfg)
    timings["total"] = round(time.time() - t0, 1)
    cfg.work.mkdir(parents=True, exist_ok=True)
    (cfg.work / "timings.json").write_text(json.dumps(timings, indent=2))
    _log(f"done in {timings['total'] / 60:.1f} min: {timings}")
    return timings
