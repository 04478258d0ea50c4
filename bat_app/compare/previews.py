"""The compare run's preview stage: every column (the base model, then each method's LoRA) on the
same prompts and seeds, and the side-by-side grid.

    columns, prompts, set_name = preview(run, loras)               # the stage, after training
    preview(lane, {"albat": loras["albat"]}, only=["albat"])         # one column, drawn by a lane

A column is keyed on its LoRA, the prompts, the seeds, the sampler and the safety check
(``stage.json``): a rerun reads it back. The base column depends on no job, so it is also kept
under the cache for every later job with the same prompts and seeds.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from ..errors import Cancelled
from ..lending import result_or_cancel
from ..paths import private_tmp
from ..preview import comparison_grid, default_prompt_set, load_prompt_set, sample_images
from ..preview.safety import check_rows, has_safety_checker
from ..progress import ProgressEvent, RateMeter
from .stages import StageRecord, stage_key

if TYPE_CHECKING:
    from .run import CompareRun

def preview(run: CompareRun, loras: dict[str, tuple[Path | None, str]], only: list[str] | None = None):
    """Every column (base model + each LoRA) on the same prompts and seeds; the grid.

    Returns (columns, prompts, prompt set name); columns[method][prompt][seed] are images.
    ``only``: draw just these columns and return None (a lane draws its method's column as soon
    as its LoRA is trained; the full stage then reads it back from its record)."""
    run.stage("preview")
    config, spec = run.config, run.components.spec
    set_name, prompts = preview_prompts(run)
    texts = [p for _, p in prompts]
    present = has_safety_checker(spec)
    check = config.safety_checker and present
    run.safety = {"enabled": config.safety_checker, "present": present, "hidden": {}}
    columns, seconds = {}, 0.0
    for method, (lora, lora_key) in loras.items():
        if only is not None and method not in only:
            continue
        key = column_key(run, texts, lora=lora_key)
        columns[method], cost, hidden = column_samples(run, StageRecord(run.out / "previews" / "samples" / method), key,
                                                 texts, lora, run.tagged(method), check,
                                                 reuse=run.resume or method in run.drawn)
        run.safety["hidden"][method] = hidden
        seconds += cost
    if only is not None:
        return None
    grid = comparison_grid(columns, texts, cell=64 if run.resolution <= 64 else 128)
    grid.save(run.out / "previews" / f"grid_{set_name}.png")
    run.result.outputs["grid"] = f"previews/grid_{set_name}.png"
    # Like the other stages, the cost is what drawing took when it ran, not the ~0 s of reading back.
    run.result.timings["preview"] = seconds
    return columns, prompts, set_name


def preview_prompts(run: CompareRun) -> tuple[str, list[tuple[str, str]]]:
    """(prompt set name, [(kind, prompt)]): the job's preview prompts, the class prompt last."""
    config, spec = run.config, run.components.spec
    set_name = config.prompt_set or default_prompt_set(spec.preset or spec.name, config.class_noun)
    prompt_set = load_prompt_set(set_name)
    prompts = prompt_set.prompts(config.token, config.class_noun, limit=config.num_prompts)
    prompts.append(("class", prompt_set.class_text(config.class_noun)))  # class-prior check, no token
    return set_name, prompts


def safety_checked(run: CompareRun) -> bool:
    """Previews go through the model's safety checker (the operator's setting, if it has one)."""
    return run.config.safety_checker and has_safety_checker(run.components.spec)


def column_key(run: CompareRun, texts: list[str], **lora) -> str:
    """The key of one column of samples: its LoRA (``lora``: the training's key, and the step
    for an earlier one), the prompts, seeds, sampler and the safety check."""
    spec = run.components.spec
    # Checked columns are other results than unchecked ones (their hidden cells are grey).
    return stage_key(stage="preview", **lora, prompts=texts, seeds=run.config.seeds, sampling=spec.sampling,
                     resolution=spec.resolution, **run.inputs, **({"safety": "checked"} if safety_checked(run) else {}))


def column_samples(run: CompareRun, record: StageRecord, key: str, prompts: list[str], lora, emit, check: bool,
             reuse: bool = True):
    """(images, seconds drawing them, how many the safety checker hid): one column of previews,
    read back when still valid (and ``reuse``). With ``check``, flagged images are never written,
    only grey ones."""
    seeds = run.config.seeds
    paths = [[record.folder / f"p{p:02d}_s{seed}.png" for seed in seeds] for p in range(len(prompts))]
    done = record.finished(key) if reuse else None
    if done and all(path.is_file() for row in paths for path in row):
        return ([[Image.open(path).convert("RGB") for path in row] for row in paths], done["seconds"],
                done.get("hidden", 0))
    if run.cancel is not None and run.cancel():
        raise Cancelled("Cancelled while rendering previews.")
    t = time.perf_counter()
    record.start(key, resume=False)  # samples are drawn whole: nothing partial to keep
    shared = _base_column_cache(run.components, prompts, seeds, check) if lora is None else None
    cached = shared is not None and _read_column(shared, len(prompts), seeds)
    if cached:
        images, hidden = cached
        emit(ProgressEvent("preview", 1, 1, message="base model: drawn before with these prompts and seeds"))
    else:
        images = _draw(run, prompts, seeds, lora, emit)
        hidden = 0
        if check:
            images, hidden = check_rows(run.components, images)
        if shared is not None:
            _write_column(shared, images, seeds, hidden)
    for row, row_paths in zip(images, paths):
        for image, path in zip(row, row_paths):
            image.save(path)
    return images, record.finish(key, time.perf_counter() - t, hidden=hidden, shared=bool(cached))["seconds"], hidden


def _draw(run: CompareRun, prompts: list[str], seeds: list[int], lora, emit) -> list[list[Image.Image]]:
    """``sample_images`` for one column; with another lane's model lent (``run.helper``, the
    plain lane once it is done: compare/lanes.py) that copy draws the second half of the prompts.
    A sample depends only on its prompt and seed (each seed its own generator), so the halves
    are the column drawn whole.

    Halves, not ALBAT's score's batches taken by whichever copy is free (``albat.score._Chunks``):
    this helper takes work only while it is already idle and serving (``only_while_serving``), so
    both copies start at once on a core each, and a copy loads the LoRA once per call."""
    half = len(prompts) // 2
    done = [0, 0]
    total = len(prompts) * len(seeds)
    meter = RateMeter(0)

    def tally(side: int):
        def report(d: int, _total: int) -> None:
            done[side] = d
            emit(ProgressEvent("preview", done[0] + done[1], total, it_per_s=meter.rate(done[0] + done[1]),
                               eta_s=meter.eta(done[0] + done[1], total)))
        return report

    future = run.helper(lambda components: sample_images(components, prompts[half:], seeds, lora,
                                                         progress=tally(1))) \
        if run.helper is not None and half and lora is not None else None
    if future is None:
        return sample_images(run.components, prompts, seeds, lora, progress=tally(0))
    mine = sample_images(run.components, prompts[:half], seeds, lora, progress=tally(0))
    return mine + result_or_cancel(future, run.cancel, "the other lane's half of the previews")


def _base_column_cache(components, prompts: list[str], seeds: list[int], check: bool) -> Path:
    """Where the base model's column for these prompts and seeds is kept for every later job:
    it depends on nothing a job trains (the weights, the sampler settings, the prompts, the
    seeds, the safety check), so a second job with the same trigger and class draws none of it."""
    from ..models.fingerprint import model_fingerprint
    from ..paths import cache_dir

    spec = components.spec
    key = stage_key(weights=model_fingerprint(components), sampling=spec.sampling, resolution=spec.resolution,
                    prompts=prompts, seeds=seeds, check=check)
    return cache_dir() / "base-previews" / key


def _read_column(folder: Path, n_prompts: int, seeds: list[int]):
    """(images, hidden) from a base-column cache folder, or None when it is not complete."""
    try:
        done = json.loads((folder / "done.json").read_text())
        return ([[Image.open(folder / f"p{p:02d}_s{seed}.png").convert("RGB") for seed in seeds]
                 for p in range(n_prompts)], int(done["hidden"]))
    except (OSError, ValueError, KeyError):
        return None


def _write_column(folder: Path, images, seeds: list[int], hidden: int) -> None:
    """Write the column, then ``done.json`` last (atomically): a reader sees all or nothing."""
    folder.mkdir(parents=True, exist_ok=True)
    for p, row in enumerate(images):
        for image, seed in zip(row, seeds):
            image.save(folder / f"p{p:02d}_s{seed}.png")
    tmp = private_tmp(folder / "done.json")
    tmp.write_text(json.dumps({"hidden": hidden}))
    os.replace(tmp, folder / "done.json")
