"""Regenerate docs/benchmarks.md: every method on every shapes subject, 3 shots, several seeds.

    python scripts/bench_compare.py                          # 5 subjects x 2 seeds x 5 methods
    python scripts/bench_compare.py --subjects dot_star --seeds 0 --steps 200
    python scripts/bench_compare.py --quick                  # a smoke run (~1 min): writes under --work only

For each subject and seed it runs the compare pipeline (equal steps, seeds and sample counts;
random/clip/prior get as many items as ALBAT kept), then reports the mean and spread over seeds
of each metric, and the convergence view the paper uses: the distance of each method's LoRA
update (Delta W = B A * alpha/r, per module) over training steps to that of a reference LoRA
trained on 50 photos of the subject. Runs are resumable (re-run the same command).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from bat_app.compare import CompareConfig, pools, run_compare
from bat_app.compare.report import METRIC_LABELS
from bat_app.images import IntakeLimits, load_user_images
from bat_app.models import load_components
from bat_app.paths import assets_dir
from bat_app.shapes import SUBJECTS, subject_photos
from bat_app.train import TrainConfig, train_lora

REPO = Path(__file__).resolve().parents[1]

METHODS = ["none", "prior", "random", "clip", "albat"]


def delta_w(lora: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """Per-module LoRA update B @ A * scale from a peft state dict (keys ...lora_A/lora_B.weight)."""
    out = {}
    for key, a in lora.items():
        if ".lora_A." in key:
            b = lora[key.replace(".lora_A.", ".lora_B.")]
            out[key.replace(".lora_A.weight", "").removeprefix("unet.")] = (b.float() @ a.float()) * scale
    return out


def distance(w: dict, ref: dict) -> float:
    num = sum(float(((w[k] - ref[k]) ** 2).sum()) for k in ref)
    den = sum(float((ref[k] ** 2).sum()) for k in ref)
    return (num / den) ** 0.5


def reference_lora(comps, subject, config: TrainConfig, work: Path) -> dict:
    """A LoRA trained on 50 photos of the subject: the adaptation optimum we measure against."""
    folder = work / "reference" / subject.name
    if len(list((folder / "photos").glob("*.png"))) < 50:
        (folder / "photos").mkdir(parents=True, exist_ok=True)
        for i, (image, _) in enumerate(subject_photos(subject, n=50, seed=123)):
            image.save(folder / "photos" / f"{i:02d}.png")
    images = load_user_images(folder / "photos", limits=IntakeLimits(max_images=50)).images
    result = train_lora(comps, images, config, folder / "lora", resume=True, cache_root=work / "cache")
    return delta_w(result.unet_lora, config.lora_alpha / config.rank)


def convergence(run_dir: Path, method: str, ref: dict, scale: float) -> list[tuple[int, float]]:
    points = []
    for ckpt in sorted((run_dir / "methods" / method / "lora" / "checkpoints").glob("step-*")):
        points.append((int(ckpt.name.split("-")[1]), distance(delta_w(load_file(ckpt / "lora.safetensors"), scale), ref)))
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", default=",".join(s.name for s in SUBJECTS))
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--shots", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None, help="default: the shapes recipe (presets.json)")
    parser.add_argument("--rank", type=int, default=None, help="default: the shapes recipe")
    parser.add_argument("--m", type=int, default=100)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--draws", type=int, default=8)
    parser.add_argument("--num-prompts", type=int, default=None)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bat-bench-compare"))
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--quick", action="store_true", help="smoke run: one subject, one seed, two methods, "
                        "a few steps on a 200-item pool; writes into --work (a temporary folder), not docs/")
    args = parser.parse_args()
    if args.quick:
        work = Path(tempfile.mkdtemp(prefix="bat-bench-compare-quick-"))
        args = argparse.Namespace(**{**vars(args), "subjects": SUBJECTS[0].name, "seeds": "0", "methods": "none,random",
                                     "steps": 4, "m": 4, "k": 32, "draws": 1, "num_prompts": 1, "work": work,
                                     "out": work / "benchmarks.md"})
        pools.SHAPES_POOL_SIZE = 200
    methods = args.methods.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    comps = load_components("shapes")
    recipe = TrainConfig.for_model("shapes", args.shots)  # the preset's recipe; flags override it
    if recipe.prior and "prior" in methods:  # every column trains with class images already
        methods.remove("prior")
        print("method 'prior' left out: the recipe's prior preservation is on for every method", flush=True)
    args.lr, args.rank = args.lr or recipe.lr, args.rank or recipe.rank
    steps = args.steps or recipe.steps
    train = {"steps": steps, "lr": args.lr, "rank": args.rank, "checkpoint_every": max(1, steps // 8),
             "keep_checkpoints": 10}  # every checkpoint (<= 9) feeds the convergence curve

    per_run, curves, costs = {}, {}, {}
    for name in args.subjects.split(","):
        subject = next(s for s in SUBJECTS if s.name == name)
        photos = sorted((assets_dir() / "subjects" / name).glob("*.png"))[:args.shots]
        ref = None
        for seed in seeds:
            cfg = CompareConfig(token="sks", class_noun=subject.class_noun, model="shapes", pool="shapes",
                                methods=methods, train={**train, "seed": seed},
                                selection={"m": args.m, "k": args.k, "draws": args.draws},
                                seeds=[0, 1, 2, 3], num_prompts=args.num_prompts)
            run_dir = args.work / name / f"seed{seed}"
            t = time.perf_counter()
            result = run_compare(cfg, photos, run_dir)
            print(f"{name} seed {seed}: {time.perf_counter() - t:.0f}s", flush=True)
            per_run[(name, seed)] = result.metrics
            costs[(name, seed)] = result.timings
            if seed == seeds[0]:
                train_cfg = cfg.train_config()
                if ref is None:
                    ref = reference_lora(comps, subject, TrainConfig(**{**train_cfg.to_dict(), "steps": 2 * steps,
                                                                        "checkpoint_every": 2 * steps}), args.work)
                scale = train_cfg.lora_alpha / train_cfg.rank
                curves[name] = {m: convergence(run_dir, m, ref, scale) for m in methods}
    write_report(args, methods, seeds, per_run, curves, costs, steps)


def write_report(args, methods, seeds, per_run, curves, costs, steps) -> None:
    all_methods = ["base"] + methods
    metric_names = [k for k in METRIC_LABELS if any(k in r["methods"].get(m, {}) for r in per_run.values()
                                                   for m in all_methods)]
    lines = ["# Benchmarks: ALBAT and the baselines on the shapes backbone", "",
             f"Generated by `python scripts/bench_compare.py` on {time.strftime('%Y-%m-%d')} (CPU). "
             f"{len({s for s, _ in per_run})} held-out subjects, {args.shots} photos each, training seeds {seeds}, "
             f"{steps} steps per method (lr {args.lr}, rank {args.rank}), m = {args.m} (random/clip/prior take as many items as ALBAT kept), "
             f"K = {args.k}, R = {args.draws}; previews: the shapes prompt set, 4 sampling seeds. "
             "Values: mean ± standard deviation over subjects × seeds.", "",
             "## Sample metrics", "",
             "| method | " + " | ".join(METRIC_LABELS[n] for n in metric_names) + " |",
             "|---|" + "---:|" * len(metric_names)]
    for m in all_methods:
        cells = []
        for n in metric_names:
            vals = [r["methods"][m][n] for r in per_run.values() if r["methods"].get(m, {}).get(n) is not None]
            cells.append(f"{statistics.mean(vals):.3f} ± {statistics.pstdev(vals):.3f}" if vals else "—")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "## Per subject (mean over seeds)", ""]
    for subject in sorted({s for s, _ in per_run}):
        lines += [f"### {subject}", "", "| method | items | " + " | ".join(METRIC_LABELS[n] for n in metric_names) + " |",
                  "|---|---:|" + "---:|" * len(metric_names)]
        runs = [r for (s, _), r in per_run.items() if s == subject]
        for m in all_methods:
            cells = []
            for n in metric_names:
                vals = [r["methods"][m][n] for r in runs if r["methods"].get(m, {}).get(n) is not None]
                cells.append(f"{statistics.mean(vals):.3f}" if vals else "—")
            count = runs[0].get("counts", {}).get(m, "—")
            lines.append(f"| {m} | {count} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Convergence: distance of each method's LoRA update to the 50-photo reference", "",
              "Relative Frobenius distance ||ΔW − ΔW_ref|| / ||ΔW_ref|| summed over modules, at each checkpoint "
              "(first training seed). Lower is closer to the adaptation optimum.", ""]
    for subject, by_method in curves.items():
        steps_seen = sorted({s for pts in by_method.values() for s, _ in pts})
        lines += [f"### {subject}", "", "| method | " + " | ".join(f"step {s}" for s in steps_seen) + " |",
                  "|---|" + "---:|" * len(steps_seen)]
        for m, pts in by_method.items():
            d = dict(pts)
            lines.append(f"| {m} | " + " | ".join(f"{d[s]:.3f}" if s in d else "—" for s in steps_seen) + " |")
        lines.append("")
    lines += ["## Cost (seconds, mean over runs)", "", "| stage | seconds |", "|---|---:|"]
    stages = sorted({k for t in costs.values() for k in t})
    for st in stages:
        vals = [t[st] for t in costs.values() if st in t]
        lines.append(f"| {st} | {statistics.mean(vals):.1f} |")
    args.out.write_text("\n".join(lines) + "\n")
    (args.work / "raw.json").write_text(json.dumps({"runs": {f"{s}/{seed}": r for (s, seed), r in per_run.items()},
                                                    "curves": curves}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
