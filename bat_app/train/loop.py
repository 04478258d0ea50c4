"""DreamBooth-LoRA training: the loop, named by stage.

    from bat_app.images import load_user_images
    from bat_app.train import TrainConfig, train_lora
    report = load_user_images("photos/")
    result = train_lora("shapes", report.images, TrainConfig(token="sks", class_noun="star"), "out/")

Stages: ``check_inputs`` -> ``prepare_groups`` (instance, prior, augmentation) ->
``encode_groups`` (latents and text once, cached) -> ``add_adapters`` -> ``make_optimizer`` ->
``restore`` (with resume) -> ``training_step`` x N (checkpoints) -> ``export``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from diffusers.optimization import get_scheduler

from ..errors import Cancelled, InputError
from ..images.buckets import bucket_sizes, split_by_bucket
from ..models import Components, load_components
from ..models.memory import adamw_class, check_environment, load_settings
from ..paths import cache_dir
from . import checkpoint as ckpt
from .adapters import add_adapters, lora_state_dicts, lora_text_encoders, remove_adapters
from .config import TrainConfig
from .data import Example, ExampleGroup, instance_examples, with_backdrop_swaps
from ..models.families import Cond, cat_cond, cond_to, stack_cond
from .encode import LatentCache, TextCache, sample_latents, stack_loss_weights, subject_loss_weights
from .offload import idle_text_encoders_offloaded
from .objective import draw_noise
from .pivotal import PivotalTokens
from .resume import restore_state, save_state
from .tail_average import TailAverage
from .prior import class_prompts, ensure_class_images, load_class_images
from ..progress import ProgressCallback, ProgressEvent, RateMeter

log = logging.getLogger(__name__)

LOSS_LOG = "loss_log.jsonl"  # one {"step", "loss"} line per step, for live loss curves


@dataclass
class TrainResult:
    out_dir: Path
    files: dict[str, Path]
    steps: int
    losses: list[float]
    seconds: float
    steps_per_s: float
    resumed_from: int = 0
    unet_lora: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    text_encoder_lora: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    embeddings: dict[str, torch.Tensor] | None = field(default=None, repr=False)  # pivotal vectors by file key


@dataclass
class _Encoded:
    """A group ready for training: latent stats, and per example either its cached conditioning
    or (``live``) its token ids per text encoder, encoded every step (a text-encoder LoRA or
    the pivotal vectors change them); with aspect-ratio buckets, per example the conditioning
    its placement adds (SDXL: its time ids); with masked training, per example its loss weights
    on the latent grid (None: the whole photo counts; an empty list: no example has any)."""

    group: ExampleGroup
    latent_stats: list[tuple[torch.Tensor, torch.Tensor]]
    text: list
    live: bool = False
    image_cond: list[Cond] = field(default_factory=list)
    loss_weights: list[torch.Tensor | None] = field(default_factory=list)


def train_lora(
    model: Components | str,
    images: Sequence,
    config: TrainConfig,
    out_dir: str | Path,
    *,
    augment: Sequence[Example] = (),
    resume: bool = False,
    progress: ProgressCallback | None = None,
    cancel: Callable[[], bool] | None = None,
    cache_root: Path | None = None,
    export: bool = True,
    snapshot: tuple[int, Callable[[dict[str, torch.Tensor]], None]] | None = None,
) -> TrainResult:
    """Train a DreamBooth-LoRA on ``images`` (checked UserImages) plus ``augment`` examples.

    Args:
        model: loaded Components, or a preset/folder/hub id to load.
        images: the user's subject images (``bat_app.images.UserImage``).
        config: every training setting; see :class:`TrainConfig`.
        out_dir: where checkpoints, LoRA files and the model card go.
        augment: backbone examples (image + own caption) mixed into every step, weight
            ``config.aug_weight`` (lambda). This is where BAT's selected items come in.
        resume: continue from the newest checkpoint in ``out_dir`` (same settings required).
        progress: called with a :class:`ProgressEvent` on every step of every stage.
        cancel: polled every step; when it returns True a checkpoint is saved and
            :class:`~bat_app.errors.Cancelled` is raised.
        cache_root: where encoded latents and class images are cached (default BAT cache).
        export: write the diffusers/kohya files and the model card at the end.
        snapshot: (step, callback): the UNet LoRA state dict is handed to the callback after
            that step (ALBAT's surrogate taken from a plain training: ``albat.surrogate``).
    """
    started = time.perf_counter()
    # 8-bit Adam and a 4-bit base need bitsandbytes and CUDA: say so before any weights load
    check_environment(config, model.spec.preset if isinstance(model, Components) else model)
    components = model if isinstance(model, Components) else load_components(model, **load_settings(config))
    config = config.resolve_targets(components.family)
    out_dir = Path(out_dir)
    cache_root = Path(cache_root) if cache_root is not None else cache_dir()
    emit = progress or (lambda event: None)
    resolution = config.resolution or components.spec.resolution

    check_inputs(components, images, config, resolution)
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = prepare_groups(components, images, config, augment, resolution, cache_root, emit)
    pivotal = add_pivotal_tokens(components, config)
    try:
        encoded = encode_groups(components, groups, config, resolution, cache_root, emit, pivotal)
        torch.manual_seed(config.seed)  # LoRA A matrices are drawn from the global RNG
        unet_params, te_params = add_adapters(components, config)
        if config.compile:  # in place, after the adapters: module names and state dicts stay as they are
            components.denoiser.compile()
        optimizer, lr_scheduler = make_optimizer(unet_params, te_params, config, pivotal)
        generator = torch.Generator().manual_seed(config.seed)
        fingerprint = config.fingerprint()
        losses: list[float] = []
        start_step = 0
        tail = TailAverage(config.steps, config.tail_average)
        export_steps = set(config.export_steps())  # earlier LoRAs the user may keep (save_every, step_choices)
        if resume and (latest := ckpt.latest_checkpoint(out_dir)) is not None:
            start_step, losses = restore_state(components, config, latest, fingerprint, optimizer, lr_scheduler,
                                               generator, pivotal, tail)
            emit(ProgressEvent("train", start_step, config.steps, message=f"resumed from {latest.name}"))

        loss_log = _LossLog(out_dir / LOSS_LOG, losses)
        meter = RateMeter(start_step)
        autocast = _autocast(components)
        # fp16 gradients underflow without loss scaling; bf16 and fp32 need none.
        scaler = torch.amp.GradScaler("cuda", enabled=components.dtype == torch.float16)
        components.denoiser.train()
        if config.train_text_encoder:
            for te in lora_text_encoders(components):
                te.train()
        params = unet_params + te_params + (pivotal.params if pivotal else [])
        # with embeddings_only_steps the trigger's vectors train alone first (the LoRA rests), and
        # with freeze_embeddings_after the LoRA alone after (the vectors rest)
        resting_first = unet_params + te_params
        resting_after = pivotal.params if pivotal is not None and config.freeze_embeddings_after else []
        # Conditioning computed once before the loop: the frozen encoders wait on the CPU meanwhile
        with idle_text_encoders_offloaded(components, needed=any(e.live for e in encoded)):
            for step in range(start_step + 1, config.steps + 1):
                if cancel is not None and cancel():
                    save_state(components, config, out_dir, step - 1, fingerprint, losses, optimizer, lr_scheduler,
                               generator, pivotal, tail)
                    raise Cancelled(f"Training cancelled at step {step - 1}/{config.steps}; "
                                    f"a checkpoint is kept in {out_dir / 'checkpoints'} (resume with --resume).")
                with autocast:
                    loss = training_step(components, config, encoded, generator)
                scaler.scale(loss).backward()
                vectors_only = step <= config.embeddings_only_steps
                vectors_frozen = not vectors_only and config.freeze_embeddings_after
                for p in resting_first if vectors_only else resting_after:
                    p.grad = None  # AdamW skips parameters without a gradient
                if config.max_grad_norm > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                if pivotal is not None and not vectors_frozen:
                    pivotal.retract(config.embedding_retract)
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(float(loss.detach()))
                loss_log.append(step, losses[-1])
                if snapshot is not None and step == snapshot[0]:
                    snapshot[1](lora_state_dicts(components, config)[0])
                saving = step in export_steps
                if step in tail.points or saving:  # one copy of the weights for both
                    current = (*lora_state_dicts(components, config), pivotal.vectors() if pivotal else None)
                    if step in tail.points:
                        tail.keep(step, *current)
                    if saving:
                        ckpt.save_step(components, config, out_dir, step, *current)
                if config.checkpoint_every and (step % config.checkpoint_every == 0 or step == config.steps):
                    save_state(components, config, out_dir, step, fingerprint, losses, optimizer, lr_scheduler,
                               generator, pivotal, tail)
                emit(ProgressEvent("train", step, config.steps, loss=losses[-1],
                                   it_per_s=meter.rate(step), eta_s=meter.eta(step, config.steps)))

        components.denoiser.eval()
        for te in components.text_encoders:
            te.eval()
        # with tail_average, the mean of the last steps' LoRAs (rank n r) is what the user gets
        unet_lora, te_lora, vectors = tail.mean(*lora_state_dicts(components, config),
                                                pivotal.vectors() if pivotal else None)
        seconds = time.perf_counter() - started
        steps_run = config.steps - start_step
        result = TrainResult(out_dir, {}, config.steps, losses, seconds,
                             (meter.rate(config.steps) or 0.0) if steps_run else 0.0, start_step, unet_lora, te_lora,
                             vectors)
        if export:
            from ..export import export_lora

            emit(ProgressEvent("export", 0, 1))
            extra = {"augmentation_examples": len(augment)} | (
                {"tail_average_steps": sorted(tail.points)} if tail.points else {})
            result.files = export_lora(components, tail.export_config(config), out_dir, unet_lora, te_lora,
                                       losses=losses, extra=extra, embeddings=result.embeddings)
            emit(ProgressEvent("export", 1, 1))
        return result
    finally:
        remove_adapters(components)
        if pivotal is not None:
            pivotal.remove()


# --- stages ------------------------------------------------------------------------------

def check_inputs(components: Components, images: Sequence, config: TrainConfig, resolution: int) -> None:
    if not images:
        raise InputError("No instance images: give at least one image of the subject.")
    if resolution % 8:
        raise InputError(f"`resolution` has to be divisible by 8 but is {resolution}.")
    if components.family.uses_buckets:
        bucket_sizes(resolution, components.family.bucket_step(components))  # InputError if too small
    # here, not in TrainConfig.validate: an export of an early step copies the config with fewer steps
    if config.embeddings_only_steps >= config.steps:
        raise InputError(f"`embeddings_only_steps` ({config.embeddings_only_steps}) must be below `steps` "
                         f"({config.steps}), or the LoRA never trains.")
    if config.pivotal and not components.family.supports_pivotal:
        raise InputError(f"Pivotal tuning is not supported for {components.family.display_name} models yet: "
                         f"turn it off (--no-pivotal, or pivotal: false).")
    known = {name for name, _ in components.denoiser.named_modules()}
    targets = [t for t in config.target_modules if any(n == t or n.endswith("." + t) for n in known)]
    if not targets:
        raise InputError(f"None of target_modules {config.target_modules} exists in this "
                         f"{components.family.display_name} model; its default targets are "
                         f"{', '.join(components.family.lora_targets)}.")


def prepare_groups(components, images, config, augment, resolution, cache_root, emit) -> list[ExampleGroup]:
    examples = instance_examples(images, config.prompt, config.token, config.captions, config.caption_mix)
    if config.backdrop_swaps:
        examples, swapped = with_backdrop_swaps(examples, config.backdrop_swaps, config.prompt, config.seed)
        kept = [name for name in dict.fromkeys(e.name for e in examples) if name not in swapped]
        message = f"backdrop swaps: {len(swapped)} of {len(swapped) + len(kept)} photos also shown on " \
                  f"{config.backdrop_swaps} other plain colours" + (f"; as they are: {', '.join(kept)}" if kept else "")
        log.info(message)
        emit(ProgressEvent("encode", 1, 1, message=message))
    groups = [ExampleGroup("instance", examples, 1.0)]
    if config.prior and config.prior_weight > 0:
        cycle = config.class_prompt_cycle
        paths = ensure_class_images(
            components, cycle, config.num_class_images, resolution, cache_root, seed=config.seed,
            progress=lambda done, total: emit(ProgressEvent("class_images", done, total)))
        prompts = class_prompts(cycle, len(paths))
        groups.append(ExampleGroup("prior", [Example(im, p) for im, p in zip(load_class_images(paths), prompts)],
                                   config.prior_weight))
    if augment and config.aug_weight > 0:
        groups.append(ExampleGroup("augment", list(augment), config.aug_weight))
    return groups


def add_pivotal_tokens(components: Components, config: TrainConfig) -> PivotalTokens | None:
    """The trigger's fresh embedding vectors (pivotal tuning), or None when it is off."""
    if not config.pivotal:
        return None
    return PivotalTokens(components, config.token, config.pivotal_vectors, seed=config.seed)


def encode_groups(components, groups, config, resolution, cache_root, emit, pivotal=None) -> list[_Encoded]:
    family = components.family
    latents = LatentCache(components, resolution, cache_root, buckets=family.uses_buckets)
    texts = TextCache(components)
    encoded = []
    for group in groups:
        refine = config.refine_latents if group.role == "instance" else 0  # only the user's photos
        message = f"{group.role} images" + (" (refining their latents)" if refine else "")
        stats = latents.get(group.examples, refine=refine, anchor=config.refine_anchor,
                            subject_weight=config.refine_subject_weight,
                            progress=lambda d, t, m=message: emit(ProgressEvent("encode", d, t, message=m)))
        captions = [e.caption for e in group.examples]
        if pivotal is not None:
            captions = [pivotal.expand(c) for c in captions]
        # A text-encoder LoRA (every group) or trained trigger vectors (the instance prompts)
        # change the embeddings every step: keep token ids for those instead.
        live = config.train_text_encoder or (pivotal is not None and group.role == "instance")
        if live:
            ids = components.family.tokenize(components, captions)  # one (n, L) tensor per encoder
            text = [[per_encoder[i] for per_encoder in ids] for i in range(len(captions))]
        else:
            text = texts.get(captions)
        image_cond = [family.placement_cond(latents.placement(e)) for e in group.examples] \
            if latents.buckets else []
        weights = subject_loss_weights(group, stats, latents, config, resolution, emit)
        encoded.append(_Encoded(group, stats, text, live, image_cond if any(image_cond) else [], weights))
    return encoded


def make_optimizer(unet_params, te_params, config: TrainConfig, pivotal: PivotalTokens | None = None):
    groups = [{"params": unet_params, "lr": config.lr}]
    if te_params:
        groups.append({"params": te_params, "lr": config.text_encoder_lr})
    if pivotal is not None:
        # No weight decay: it would pull the trigger towards the zero vector, a dead token.
        groups.append({"params": list(pivotal.params), "lr": config.embedding_lr, "weight_decay": 0.0})
    optimizer = adamw_class(config.optimizer)(groups, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    if config.lr_schedule == "drop":  # diffusers' piecewise schedule: x1, then x0.1 from the drop step on
        drop = max(1, round(config.steps * (1 - config.lr_drop_fraction)))
        scheduler = get_scheduler("piecewise_constant", optimizer=optimizer, step_rules=f"1:{drop},0.1")
    else:
        scheduler = get_scheduler(config.lr_schedule, optimizer=optimizer, num_warmup_steps=config.warmup_steps,
                                  num_training_steps=config.steps)
    return optimizer, scheduler


def training_step(components: Components, config: TrainConfig, encoded: list[_Encoded],
                  generator: torch.Generator) -> torch.Tensor:
    """One step: ``batch_size`` examples from each group, weighted group losses. The denoiser
    sees one batch per aspect-ratio bucket among the step's examples (``split_by_bucket``):
    a batch never mixes shapes. Without buckets that is one pass over all of them."""
    picks = [torch.randint(len(e.group.examples), (config.batch_size,), generator=generator) for e in encoded]
    chosen = [e.latent_stats[i] for e, idx in zip(encoded, picks) for i in idx.tolist()]
    family, device = components.family, components.device
    cond = step_cond(components, encoded, picks)
    batches = split_by_bucket([tuple(mean.shape) for mean, _ in chosen])
    maps = [e.loss_weights[i] if e.loss_weights else None for e, idx in zip(encoded, picks) for i in idx.tolist()]
    parts = []
    for positions in batches:
        latents = sample_latents(components, [chosen[p] for p in positions], generator)
        noise, timesteps = draw_noise(latents.shape, generator, family.num_timesteps(components))
        index = torch.tensor(positions, device=device)
        part_cond = cond if len(batches) == 1 else {k: v.index_select(0, index) for k, v in cond.items()}
        weight = stack_loss_weights([maps[p] for p in positions], latents.shape[-2:], device)
        parts.append(family.loss(components, latents.to(device), part_cond, noise.to(device), timesteps.to(device),
                                 weight))
    losses = parts[0] if len(batches) == 1 else \
        torch.cat(parts)[torch.argsort(torch.tensor([p for b in batches for p in b], device=device))]
    per_group = losses.view(len(encoded), config.batch_size).mean(dim=1)
    weights = torch.tensor([e.group.weight for e in encoded], device=per_group.device)
    return (per_group * weights).sum()


def step_cond(components: Components, encoded: list[_Encoded], picks: list[torch.Tensor]) -> Cond:
    """The conditioning of a step's picks, group after group: cached text conditionings, or the
    live ones encoded now, plus each example's placement conditioning (SDXL's time ids)."""
    family, device = components.family, components.device
    conds = []
    for e, idx in zip(encoded, picks):
        items = [e.text[i] for i in idx.tolist()]
        if e.live:
            ids = [torch.stack([item[j] for item in items]) for j in range(len(items[0]))]
            cond = family.encode(components, ids)
        else:
            cond = cond_to(stack_cond(items), device)
        if e.image_cond:
            cond = cond | cond_to(stack_cond([e.image_cond[i] for i in idx.tolist()]), device)
        conds.append(cond)
    return {k: v.float() if v.is_floating_point() else v for k, v in cat_cond(conds).items()}


# --- helpers -----------------------------------------------------------------------------

class _LossLog:
    """Appends each step's loss to a JSONL file that live views (the UI) read while training.
    On resume it is rewritten from the checkpoint's history, so it never shows lost steps."""

    def __init__(self, path: Path, history: list[float]):
        import json

        self.path = path
        path.write_text("".join(json.dumps({"step": i + 1, "loss": v}) + "\n" for i, v in enumerate(history)))

    def append(self, step: int, loss: float) -> None:
        with open(self.path, "a") as f:
            f.write(f'{{"step": {step}, "loss": {loss!r}}}\n')


def _autocast(components: Components):
    if components.device.type == "cuda" and components.dtype in (torch.float16, torch.bfloat16):
        return torch.autocast("cuda", dtype=components.dtype)
    return contextlib.nullcontext()
