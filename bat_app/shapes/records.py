"""Judged personalization records (``scripts/shapes_personalize.py --out``): their summary
figures, how a table names each arm, the per-subject table with paired differences, and the
judge's best step among kept ones.

    record = record_text(summary(...), rows)      # one JSON record per run
    print(records_table([Path("a.json"), Path("b.json")]))

A record is ``{"summary": {...}, "subjects": {name: {"lora": {...}, "base": {...}, ...}}}``, the
figures of each subject being shares of its judged samples (``shapes.personalization``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bat_app.albat import METHODS
from bat_app.models.recipe import recipe_for

if TYPE_CHECKING:
    from bat_app.train import TrainConfig


def figures(results: dict) -> dict:
    """The record's summary figures, from its per-subject rows (LoRA and base model)."""
    lora, base = [r["lora"] for r in results.values()], [r["base"] for r in results.values()]
    mean = lambda key, rows: round(float(np.mean([r[key] for r in rows])), 3)  # noqa: E731
    return {"lora_trait_mean": mean("trait", lora),
            "base_trait_mean": mean("trait", base),
            "lora_recontext_fidelity_mean": mean("recontext_fidelity", lora),
            "lora_recontext_background_mean": mean("recontext_background_fidelity", lora),
            "lora_recontext_position_mean": mean("recontext_position_fidelity", lora),
            "base_recontext_position_mean": mean("recontext_position_fidelity", base),
            "subjects_trait_ge_80": sum(r["trait"] >= 0.8 for r in lora),
            "subjects_recontext_ge_70": sum(r["recontext_fidelity"] >= 0.7 for r in lora),
            "n_subjects": len(results)}


def summarize(results: dict, config: TrainConfig, images: int, method: str = "none") -> dict:
    return {**figures(results), "images_per_subject": images, "method": method,
            "train": {k: getattr(config, k) for k in ("seed", "steps", "lr", "rank", "batch_size", "pivotal",
                                                       "pivotal_vectors", "embedding_lr", "prior",
                                                       "num_class_images", "aug_weight", "target_modules",
                                                       "captions", "caption_mix", "prior_contexts",
                                                       "embedding_retract", "lr_schedule",
                                                       "background_weight", "backdrop_swaps",
                                                       "tail_average", "refine_latents", "refine_anchor",
                                                       "refine_subject_weight", "embeddings_only_steps",
                                                       "freeze_embeddings_after")},
            "target": "trait >= 0.80 of 'a photo of sks <class>' samples; recontext fidelity >= 0.70"}


def record_text(summary: dict, results: dict) -> str:
    return json.dumps({"summary": summary, "subjects": results}, indent=2) + "\n"


TABLE_METRICS = (("trait", "trait", 0.8), ("recontext", "recontext_fidelity", 0.7),
                 ("backgrounds", "recontext_background_fidelity", None),
                 ("positions", "recontext_position_fidelity", None))


def method_label(summary: dict) -> str:
    """A record's method as the table names it: the selector, the captions it trained on, and
    whether its class images went through contexts."""
    captions = summary.get("context_captions")
    kind = {"clip-backgrounds": "CLIP background captions", "backgrounds": "true background captions"}.get(
        summary.get("caption_source"), "context captions")
    suffix = f" + {kind}" + (f" ({captions})" if captions != "all" else "") if captions else ""
    train, recipe = summary["train"], recipe_for("shapes")
    if train.get("prior_contexts"):
        suffix += f" + prior contexts ({len(train['prior_contexts'])})"
    if train.get("target_modules"):
        suffix += " + LoRA on " + " ".join(train["target_modules"])
    if train.get("steps") and train["steps"] != recipe.train_settings(summary.get("images_per_subject"))["steps"]:
        suffix += f" + {train['steps']} steps"
    if train.get("batch_size") and train["batch_size"] != recipe.batch_size:
        suffix += f" + batch {train['batch_size']}"
    if train.get("lr_schedule", "constant") != "constant":
        suffix += f" + {train['lr_schedule']} lr {train['lr']:g}"
    if train.get("embeddings_only_steps"):
        suffix += f" + vectors alone for {train['embeddings_only_steps']} steps" + (
            ", then the LoRA alone" if train.get("freeze_embeddings_after") else "")
    if train.get("embedding_retract"):
        suffix += f" + retract {train['embedding_retract']:g}"
    if train.get("background_weight", 1.0) != recipe.background_weight:
        suffix += f" + background weight {train['background_weight']:g}"
    if train.get("backdrop_swaps", 0) != recipe.backdrop_swaps:
        suffix += f" + {train['backdrop_swaps']} backdrop swaps"
    if train.get("refine_latents"):
        # records from before the anchor existed refined without one
        subject = train.get("refine_subject_weight", 1.0)
        suffix += (f" + refined latents ({train['refine_latents']} steps, anchor {train.get('refine_anchor', 0):g}"
                   + (f", subject x{subject:g})" if subject != 1 else ")"))
    if summary.get("step"):
        suffix += f" at step {summary['step']}"
    if summary.get("picked"):
        suffix += f" + {summary['picked']}"
    if summary.get("averaged_steps"):
        suffix += " + mean of steps " + "/".join(map(str, summary["averaged_steps"]))
    if train.get("tail_average", 1) > 1:
        suffix += f" + tail average of {train['tail_average']}"
    sampling = summary.get("sampling") or {}
    if sampling.get("guidance"):
        suffix += f" + guidance {sampling['guidance']:g}"
    if sampling.get("lora_scale", 1.0) != 1.0:
        suffix += f" + LoRA scale {sampling['lora_scale']:g}"
    if sampling.get("lora_start"):
        suffix += f" + LoRA from {sampling['lora_start']:g} of the steps"
    if sampling.get("first_seed"):
        suffix += f" (judged at seeds {sampling['first_seed']}+)"
    if sampling.get("pooled_first_seeds"):
        suffix += " (judged at seeds " + "+, ".join(map(str, sampling["pooled_first_seeds"])) + "+, pooled)"
    return summary["method"] + suffix


def method_order(label: str) -> tuple:
    """The product's order (none first): the comparison is then "method - plain DreamBooth-LoRA"."""
    selector = label.split(" + ")[0]
    return (METHODS.index(selector) if selector in METHODS else len(METHODS), label)


def cell_text(value: float | None, goal: float | None) -> str:
    """A percentage, bold when below its target; "-" when the record lacks it."""
    if value is None:
        return "-"
    return f"**{100 * value:.0f}**" if goal and value < goal else f"{100 * value:.0f}"


def records_table(paths: list[Path]) -> str:
    """Markdown: per subject and method, each metric at every training seed; then, for every
    other method, the paired difference (method - the first, plain DreamBooth-LoRA when present)
    per metric with a bootstrap 95% CI over the (subject, seed) pairs both have."""
    from bat_app.albat.evaluation import paired_bootstrap

    cells: dict = {}  # (method, subject, seed) -> the LoRA's row
    for path in paths:
        record = json.loads(path.read_text())
        summary = record["summary"]
        method = method_label(summary)
        seed = summary["train"].get("seed", 0)  # records from before --seed: TrainConfig's default
        for name, row in record["subjects"].items():
            cells[(method, name, seed)] = row["lora"]
    methods = sorted(dict.fromkeys(m for m, _, _ in cells), key=method_order)
    subjects = list(dict.fromkeys(n for _, n, _ in cells))
    seeds = sorted({s for _, _, s in cells})

    def value(m, n, s, key):
        return cells.get((m, n, s), {}).get(key)

    lines = [f"Each cell: % at training seeds {', '.join(map(str, seeds))}; bold below the target "
             "(trait >= 80, recontext >= 70).", "",
             "| subject | method | " + " | ".join(label for label, _, _ in TABLE_METRICS) + " |",
             "| --- | --- |" + " --- |" * len(TABLE_METRICS)]
    for name in subjects:
        for m in methods:
            lines.append(f"| {name} | {m} | " + " | ".join(
                " / ".join(cell_text(value(m, name, s, key), goal) for s in seeds) for _, key, goal in TABLE_METRICS)
                + " |")
    lines.append("")
    for m in methods:
        met = [(value(m, n, s, "trait") >= 0.8 and value(m, n, s, "recontext_fidelity") >= 0.7)
               for n in subjects for s in seeds if (m, n, s) in cells]
        lines.append(f"- {m}: both targets met in {sum(met)} of {len(met)} (subject, seed) cells.")
    first = methods[0]
    for second in methods[1:]:
        pairs = [(n, s) for n in subjects for s in seeds if (first, n, s) in cells and (second, n, s) in cells]
        lines += ["", f"Paired difference {second} - {first} over {len(pairs)} (subject, training seed) pairs "
                  "(percentage points; mean [95% bootstrap CI]):", "",
                  "| metric | difference |", "| --- | --- |"]
        for label, key, _ in TABLE_METRICS:
            diffs = [value(second, n, s, key) - value(first, n, s, key) for n, s in pairs
                     if value(second, n, s, key) is not None and value(first, n, s, key) is not None]
            if diffs:
                mean, low, high = paired_bootstrap(diffs)
                lines.append(f"| {label} ({len(diffs)} pairs) | {100 * mean:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}] |")
    return "\n".join(lines)


def oracle_step(records: dict[int, dict], name: str) -> int:
    """The step whose judged row meets most targets, then has the highest trait + recontext."""
    def key(step):
        row = records[step]["subjects"][name]["lora"]
        met = (row["trait"] >= 0.8) + (row["recontext_fidelity"] >= 0.7)
        return met, row["trait"] + row["recontext_fidelity"], step
    return max(records, key=key)
