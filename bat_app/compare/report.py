"""report.md: the metrics table, the grid, and the cost of each stage."""

from __future__ import annotations

from pathlib import Path

from ..preview.safety import describe_safety

METRIC_LABELS = {
    "clip_i": "CLIP-I ↑", "clip_t": "CLIP-T ↑", "dino": "DINO ↑", "diversity": "diversity ↑",
    "subject_fidelity": "subject fidelity ↑", "prompt_fidelity": "prompt fidelity ↑",
    "class_prior": "class prior kept ↑", "class_variety": "class variety ↑",
}


def metrics_table(metrics: dict) -> list[str]:
    methods = metrics["methods"]
    names = [k for k in METRIC_LABELS if any(k in v for v in methods.values())]
    lines = ["| method | backbone items | " + " | ".join(METRIC_LABELS[n] for n in names) + " |",
             "|---|---:|" + "---:|" * len(names)]
    for method, values in methods.items():
        count = metrics.get("counts", {}).get(method, "—")
        # "—": not measured in this run (absent, or undefined like diversity with one seed)
        cells = [f"{values[n]:.3f}" if values.get(n) is not None else "—" for n in names]
        lines.append(f"| {method} | {count} | " + " | ".join(cells) + " |")
    return lines


def write_report(out: Path, config, metrics: dict, timings: dict, outputs: dict) -> Path:
    lines = [f"# {config.token} {config.class_noun}: {', '.join(config.methods)} vs the base model", "",
             f"Model `{config.model or 'default'}`, pool `{config.pool}`, prompt set `{metrics.get('prompt_set')}`, "
             f"seeds {config.seeds}; every method trained with the same settings: `{config.train}`.", "",
             *metrics_table(metrics), ""]
    lines += [f"> {note}" for note in metrics.get("notes", [])]
    if "safety_checker" in metrics:
        safety = metrics["safety_checker"]
        lines += ["", f"Safety checker: {describe_safety(safety['enabled'], safety['present'], safety['hidden'])}."]
    if "grid" in outputs:
        lines += ["", f"![comparison grid]({outputs['grid']})", ""]
    steps = {k.partition(":")[0]: v for k, v in outputs.items() if k.endswith(":steps")}
    if steps:
        lines += ["## Earlier steps", "", "Each training also kept steps of its last third: the same prompts "
                  "and seeds, the final LoRA last. Keep the step that shows the subject best "
                  "(`methods/<method>/lora/steps/`).", ""]
        lines += [f"![{method}: its steps side by side]({picture})" for method, picture in steps.items()] + [""]
    lines += ["## Cost (wall time per stage)", "", "| stage | seconds |", "|---|---:|"]
    lines += [f"| {name} | {seconds:.1f} |" for name, seconds in timings.items()]
    lines += ["", "## Downloads", ""] + [f"- {k}: `{v}`" for k, v in outputs.items()
                                         if ":" in k and not k.endswith(":steps")]
    path = Path(out) / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
