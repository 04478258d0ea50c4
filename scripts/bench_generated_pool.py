"""Issue 14: does ALBAT do as well on a self-generated pool as on the backbone's real pool?

Stated before any run (not changed after):

- Unit: one (subject, training seed) pair. Both arms share the photos (the first 3), the
  shapes recipe, the training seed, ALBAT's score seed, the preview prompts and sampling seeds;
  only the pool differs: "real" = the shapes pool (10,000 items of the backbone's own pretraining
  stream), "generated" = N of the backbone's own samples of the subject's class
  (``pool generate``'s templates, cached per model and class), the pool a user of a real
  backbone without LAION at hand gets.
- PRIMARY metric: subject fidelity of the ALBAT column (share of preview samples in which the
  judge sees the subject's trait; bat_app.metrics). SECONDARY: prompt fidelity of the same column.
- Report: every pair's values, and the mean paired difference generated - real with a 95%
  percentile bootstrap CI over the pairs (10,000 resamples). A CI that includes 0 means "no
  difference detected at this size", not "equal".

    python scripts/bench_generated_pool.py                  # 2 subjects x 3 seeds, N = 400
    python scripts/bench_generated_pool.py --subjects checkered_square --seeds 0,1,2,3
    python scripts/bench_generated_pool.py --quick          # smoke run: tiny pools, a few steps
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from bat_app.albat.evaluation import paired_bootstrap
from bat_app.albat.experiment import fmt_ci
from bat_app.compare import CompareConfig, pools, run_compare
from bat_app.paths import assets_dir
from bat_app.shapes import get_subject

METRICS = ("subject_fidelity", "prompt_fidelity")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", default="checkered_square,striped_heart")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--n", type=int, default=400, help="generated pool size (>= ALBAT's K)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bat-bench-generated-pool"))
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 subject, 1 seed, 40-item pools, "
                    "4 steps, 4 prompts; writes into a temporary folder; its figures are not results")
    args = ap.parse_args(argv)
    train, selection, num_prompts = {}, {}, None
    if args.quick:
        args.subjects, args.seeds, args.n = "checkered_square", "0", 40
        args.work = Path(tempfile.mkdtemp(prefix="bat-bench-generated-pool-quick-"))
        pools.SHAPES_POOL_SIZE = 200
        train, selection, num_prompts = {"steps": 4, "pivotal": False, "num_class_images": 4}, {"m": 4, "k": 16, "draws": 2}, 4

    from bat_app.models import load_components
    from bat_app.pool import load_embedder

    comps = load_components("shapes")
    embedder = load_embedder("shapes")
    rows = []
    for name in args.subjects.split(","):
        subject = get_subject(name)
        photos = sorted((assets_dir() / "subjects" / name).glob("*.png"))[:3]
        t = time.perf_counter()
        generated = pools.ensure_generated_pool(comps, subject.class_noun, args.n, embedder)
        print(f"{name}: generated pool of {args.n} {subject.class_noun}s ready "
              f"({time.perf_counter() - t:.0f} s)", flush=True)
        for seed in (int(s) for s in args.seeds.split(",")):
            row = {"subject": name, "seed": seed}
            for arm, pool in (("real", "shapes"), ("generated", str(generated))):
                cfg = CompareConfig(token="sks", class_noun=subject.class_noun, model="shapes", pool=pool,
                                    methods=["albat"], train={**train, "seed": seed}, selection=selection,
                                    seeds=[0, 1, 2, 3], num_prompts=num_prompts)
                t = time.perf_counter()
                result = run_compare(cfg, photos, args.work / name / f"seed{seed}" / arm)
                albat = result.metrics["methods"]["albat"]
                row[arm] = {k: albat.get(k, float("nan")) for k in METRICS} | {"seconds": round(time.perf_counter() - t, 1)}
                print(f"{name} seed {seed} {arm}: {row[arm]}", flush=True)
            rows.append(row)
    report = {"rows": rows, "n_generated": args.n, "diffs": {}}
    lines = ["| subject | seed | subject fidelity: real / generated | prompt fidelity: real / generated |",
             "| --- | --- | --- | --- |"]
    lines += [f"| {r['subject']} | {r['seed']} | {r['real']['subject_fidelity']:.3f} / "
              f"{r['generated']['subject_fidelity']:.3f} | {r['real']['prompt_fidelity']:.3f} / "
              f"{r['generated']['prompt_fidelity']:.3f} |" for r in rows]
    lines.append("")
    for key in METRICS:
        ci = paired_bootstrap([r["generated"][key] - r["real"][key] for r in rows])
        report["diffs"][key] = ci
        lines.append(f"- {key}, generated - real over {len(rows)} pairs: {fmt_ci(ci, 3)}")
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
