"""Measure selection on the shapes pool: how related the selected items are to each subject.

    python scripts/bench_selection.py                    # 5 subjects, 3 shots, pool of 10,000
    python scripts/bench_selection.py --subjects dot_star --m 50 --out docs/selection_benchmark.md
    python scripts/bench_selection.py --quick           # a smoke run (~1 min): writes under --work only

For each held-out subject (3 of its photos) and each of random / clip / albat, with the same m:
the fraction of selected items that share >= 1 and >= 2 of the subject's attributes (shape,
colour, pattern, size; read from the items' captions), ALBAT's Delta distribution, and the
selection wall time as a fraction of one training run with the same settings.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from bat_app.albat import SelectionParams
from bat_app.albat.run import run_selection
from bat_app.compare.pools import ensure_shapes_pool
from bat_app.images import load_user_images
from bat_app.models import load_components
from bat_app.paths import assets_dir
from bat_app.pool import Pool, embedder_for_pool
from bat_app.shapes import SUBJECTS, parse_caption
from bat_app.train import TrainConfig, train_lora

REPO = Path(__file__).resolve().parents[1]
COMPARED = ("shape", "colour", "pattern", "size")


def shared_attributes(subject, caption: str) -> int:
    wanted = {"shape": subject.class_noun, **{k: v for k, v in subject.attributes.items() if k in COMPARED}}
    found = parse_caption(caption)
    return sum(found.get(k) == v for k, v in wanted.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", default=",".join(s.name for s in SUBJECTS))
    parser.add_argument("--shots", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None, help="final training steps (default: TrainConfig's)")
    parser.add_argument("--m", type=int, default=100)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--draws", type=int, default=8)
    parser.add_argument("--pool-size", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "selection_benchmark.md")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bat-bench-selection"))
    parser.add_argument("--quick", action="store_true", help="smoke run: one subject, a 200-item pool, small "
                        "m/K/R and a few steps; writes into a temporary --work, not docs/")
    args = parser.parse_args()
    if args.quick:
        work = Path(tempfile.mkdtemp(prefix="bat-bench-selection-quick-"))
        args = argparse.Namespace(**{**vars(args), "subjects": SUBJECTS[0].name, "steps": 4, "m": 8, "k": 32,
                                     "draws": 1, "pool_size": 200, "work": work, "out": work / "selection.md"})

    pool_dir = ensure_shapes_pool(args.pool_size)
    pool = Pool.open(pool_dir)
    embedder = embedder_for_pool(pool)
    comps = load_components("shapes")
    rows, deltas = [], {}
    for name in args.subjects.split(","):
        subject = next(s for s in SUBJECTS if s.name == name)
        photos = sorted((assets_dir() / "subjects" / name).glob("*.png"))[:args.shots]
        images = load_user_images(photos).images
        # The preset's recipe for this many photos (presets.json); --steps overrides its steps.
        config = TrainConfig.for_model("shapes", len(images), token="sks", class_noun=subject.class_noun,
                                       checkpoint_every=0, steps=args.steps or None,
                                       num_class_images=4 if args.quick else None)
        t = time.perf_counter()
        train_lora(comps, images, config, args.work / name / "train-none", export=False,
                   cache_root=args.work / "cache")
        train_seconds = time.perf_counter() - t
        for method in ("random", "clip", "albat"):
            params = SelectionParams(m=args.m, k=args.k, draws=args.draws)
            t = time.perf_counter()
            sel = run_selection(method, comps, images, config, pool=pool, embedder=embedder, params=params,
                                out_dir=args.work / name / method, cache_root=args.work / "cache")
            seconds = time.perf_counter() - t
            shared = [shared_attributes(subject, r.caption) for r in sel.rows]
            n = max(1, len(shared))
            rows.append({"subject": name, "method": method, "selected": len(sel),
                         "share>=1": sum(s >= 1 for s in shared) / n, "share>=2": sum(s >= 2 for s in shared) / n,
                         "select_s": seconds, "train_s": train_seconds, "fraction_of_training": seconds / train_seconds})
            if method == "albat":
                deltas[name] = sel.stats
            print(json.dumps(rows[-1]), flush=True)

    lines = ["# Selection on the shapes pool", "",
             f"Pool: {len(pool)} pretraining items of the shapes backbone; {args.shots} photos per subject; "
             f"m = {args.m}, K = {args.k}, R = {args.draws}; training {TrainConfig().steps if not args.steps else args.steps} steps. "
             "Attributes compared: shape, colour, pattern, size (from each item's caption). "
             f"Generated by `python scripts/bench_selection.py` on {time.strftime('%Y-%m-%d')}.", "",
             "| subject | method | selected | share >= 1 attr | share >= 2 attrs | selection s | "
             "selection / one training |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['subject']} | {r['method']} | {r['selected']} | {r['share>=1']:.2f} | {r['share>=2']:.2f} "
                     f"| {r['select_s']:.1f} | {r['fraction_of_training']:.2f} |")
    lines += ["", "## Mean over subjects", "", "| method | share >= 1 | share >= 2 | selection / training |",
              "|---|---:|---:|---:|"]
    for method in ("random", "clip", "albat"):
        rs = [r for r in rows if r["method"] == method]

        def mean(key, rs=rs):
            return sum(r[key] for r in rs) / len(rs)

        lines.append(f"| {method} | {mean('share>=1'):.2f} | {mean('share>=2'):.2f} | {mean('fraction_of_training'):.2f} |")
    lines += ["", "## ALBAT's Delta distribution (over the K candidates)", "",
              "| subject | candidates | Delta > 0 | mean | q10 | q50 | q90 | max | near-duplicates dropped | surrogate steps |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, st in deltas.items():
        d = st["delta"]
        lines.append(f"| {name} | {st['candidates']} | {d['positive_fraction']:.2f} | {d['mean']:.2e} | {d['q10']:.2e} | "
                     f"{d['q50']:.2e} | {d['q90']:.2e} | {d['q100']:.2e} | {st['near_duplicates']} | {st['surrogate_steps']} |")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
