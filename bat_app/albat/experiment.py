"""The pre-registered ALBAT experiment's records, summarised: per-run metrics, paired
differences with bootstrap CIs, the frontier plot, and the markdown section they go into.

    stats = summarise(records, arms, [("albat", "shortlist")])   # records: scripts/bench_albat.py
    write_section(Path("docs/benchmarks.md"), "experiment", "ALBAT: ...", markdown)
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .evaluation import area_over_steps, paired_bootstrap
from .frontier import Panel, line_panels

MARK = "bench_albat:{}"


def per_run_metrics(arm_record: dict) -> dict:
    """The registered summaries of one arm of one run: subject loss min and area over the
    checkpoints, drift at the last one, and the sample metrics drawn at the last one."""
    curve = arm_record["curve"]
    steps = [p["nominal_step"] for p in curve]
    losses = [p["subject_loss"] for p in curve]
    out = {"subject_loss_min": min(losses), "subject_loss_area": area_over_steps(steps, losses),
           "drift_last": curve[-1]["drift"]}
    for key, value in curve[-1].get("samples", {}).items():
        out[key] = value
    return out


def summarise(records: list[dict], arms: list[str], comparisons: list[tuple[str, str]]) -> dict:
    """Per arm: mean and bootstrap CI of each per-run metric; per comparison (a, b) present
    in ``arms``: the paired differences a - b over the (subject, seed) pairs with their CI."""
    metrics = {(r["subject"], r["seed"]): {a: per_run_metrics(r["arms"][a]) for a in r["arms"]} for r in records}
    per_arm = {}
    for arm in arms:
        rows = [m[arm] for m in metrics.values() if arm in m]
        per_arm[arm] = {key: paired_bootstrap([r[key] for r in rows if key in r])
                        for key in (rows[0] if rows else {})}
        per_arm[arm]["n"] = len(rows)
    pairs = [c for c in comparisons if c[0] in arms and c[1] in arms]
    diffs = []
    for a, b in pairs:
        for key in ("subject_loss_min", "subject_loss_area", "drift_last", "subject_fidelity", "prompt_fidelity"):
            d = [m[a][key] - m[b][key] for m in metrics.values() if a in m and b in m and key in m[a] and key in m[b]]
            if d:
                diffs.append({"a": a, "b": b, "metric": key, "n": len(d), "ci": paired_bootstrap(d)})
    return {"per_arm": per_arm, "diffs": diffs, "pairs": len(metrics)}


def frontier(records: list[dict], arms: list[str], path: Path) -> None:
    """Two panels, mean over the runs: subject loss vs drift over every checkpoint, and
    prompt vs subject fidelity over the checkpoints that drew samples."""
    def mean_curve(arm, key_x, key_y, sampled=False):
        by_step: dict[int, list] = {}
        for r in records:
            for p in r["arms"].get(arm, {}).get("curve", []):
                if sampled and "samples" not in p:
                    continue
                src = p["samples"] if sampled else p
                if key_x in src and key_y in src:
                    by_step.setdefault(p["nominal_step"], []).append((src[key_x], src[key_y]))
        return [(float(np.mean([v[0] for v in vs])), float(np.mean([v[1] for v in vs])))
                for _, vs in sorted(by_step.items())]

    losses = Panel("loss frontier over checkpoints (mean over pairs)", "subject loss on fresh photos (lower better)",
                   "drift on pool items", {a: mean_curve(a, "subject_loss", "drift") for a in arms})
    samples = Panel("sample frontier over sampled checkpoints", "prompt fidelity", "subject fidelity",
                    {a: mean_curve(a, "prompt_fidelity", "subject_fidelity", sampled=True) for a in arms},
                    note="(shapes classifier on generated samples)")
    path.parent.mkdir(parents=True, exist_ok=True)
    line_panels([losses, samples]).save(path)


def fmt_ci(ci, digits=4) -> str:
    """'mean [low, high]' of a (mean, low, high) triple; '—' when there is no value."""
    mean, lo, hi = ci
    return "—" if math.isnan(mean) else f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def write_section(doc: Path, part: str, title: str, body: str) -> None:
    """Replace the text between this part's markers in ``doc``; append the section when absent.
    Everything outside the markers (hand-written text) is kept."""
    start, end = f"<!-- {MARK.format(part)}:start -->", f"<!-- {MARK.format(part)}:end -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    text = doc.read_text() if doc.is_file() else ""
    if start in text and end in text:
        text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + ("\n\n" if text.strip() else "") + f"## {title}\n\n{block}\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text if text.endswith("\n") else text + "\n")
