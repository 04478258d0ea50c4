"""The compare run's steps stage: the earlier steps each training kept, beside its final LoRA, on
the preview's prompts and seeds, one picture per method, for the user to keep the step that
shows the subject best (the Results tab; ``ui.loras.lora_choices``).

    draw_steps(lane, "albat", loras["albat"])          # a lane, after its preview column
    pictures = steps_stage(run, loras, columns)         # the stage, after the previews

Why: a LoRA trained at a high, constant learning rate does not settle. On shapes, the steps of
the last third of one training differ as much as training seeds do, and a judge that sees the
markings, picking among steps 200/250/300 on draws it is not graded on, meets both targets in 25
of 30 cells against the final step's 19 (docs/shapes.md, twenty-first session). No automatic
check here sees what the judge sees; the user's eye does. The trainer exports those steps when
``TrainConfig.step_choices`` (the recipe's) or ``save_every`` asks for them.

An earlier step's samples are keyed like a preview column (its training's key plus the step), so
a rerun reads them back; the final step's block *is* the method's preview column, not drawn again.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from ..preview.step_pick import earlier_choices, steps_picture
from .previews import column_key, column_samples, preview_prompts, safety_checked
from .stages import StageRecord

if TYPE_CHECKING:
    from .run import CompareRun

PICTURE = "previews/steps_{method}.png"  # one per method, served to the job's owner (ui.served)


def draw_steps(run: CompareRun, method: str, lora: tuple[Path | None, str]) -> tuple[dict[int, list], float]:
    """(step -> [prompt][seed] samples of each earlier step of ``method``'s LoRA, the seconds
    drawing them took when they were drawn); ``lora``: its folder and training key. Drawn, or
    read back from ``previews/steps/<method>/step-N``."""
    folder, lora_key = lora
    # the final step's samples are the preview column
    steps = earlier_choices(folder, run.train_config.steps) if folder is not None else {}
    if not steps:
        return {}, 0.0
    texts = [p for _, p in preview_prompts(run)[1]]
    emit = run.tagged(method)
    out, seconds = {}, 0.0
    for step, step_folder in steps.items():
        record = StageRecord(run.out / "previews" / "steps" / method / f"step-{step:06d}")

        def relabel(event, step=step):  # the job's progress names the stage and the step being drawn
            emit(dataclasses.replace(event, stage="steps", message=f"drawing step {step} of the {method} training"))

        key = column_key(run, texts, lora=lora_key, step=step)
        out[step], cost, hidden = column_samples(run, record, key, texts, step_folder, relabel, safety_checked(run),
                                                 reuse=run.resume or f"{method}@steps" in run.drawn)
        run.safety.setdefault("hidden", {})[f"{method}@{step}"] = hidden
        seconds += cost
    return out, seconds


def steps_stage(run: CompareRun, loras: dict[str, tuple[Path | None, str]], columns: dict) -> dict[str, str]:
    """method -> its steps picture (relative to the job's out folder), for every method whose
    training kept earlier steps; ``columns``: the preview stage's (the final steps' samples)."""
    run.stage("steps")
    texts = [p for _, p in preview_prompts(run)[1]]
    pictures, seconds = {}, 0.0
    for method, lora in loras.items():
        earlier, cost = draw_steps(run, method, lora)
        seconds += cost
        rel = PICTURE.format(method=method)
        if not earlier:  # a picture left by an earlier run into this folder would show steps that are gone
            (run.out / rel).unlink(missing_ok=True)
            continue
        picture = steps_picture({**earlier, run.train_config.steps: columns[method]}, texts, len(run.config.seeds),
                                cell=64 if run.resolution <= 64 else 128, photos=[u.image for u in run.images])
        picture.save(run.out / rel)
        pictures[method] = run.result.outputs[f"{method}:steps"] = rel
    # like the preview stage: what drawing took when it ran (a lane may have drawn them earlier)
    run.result.timings["steps"] = seconds
    return pictures
