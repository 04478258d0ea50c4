"""Time the app's default example job twice, as the app configures it, without a browser.

The config is what the Start button submits for the example subject with every default
(``bat_app.ui.handlers.build_config``: the preset's recipe, DreamBooth-LoRA + ALBAT, the
app's preview prompts and seeds); the compare pipeline runs it in-process, once in a fresh
data folder (the first job: only the pool exists) and once more into another job folder (the
same photos and settings again: what the caches kept between jobs save). Prints both jobs'
stage timings. The issue's target is <= 3 minutes for the example job on an idle 2-core machine.

    python scripts/bench_example_job.py                      # checkered_square, the shapes pool
    python scripts/bench_example_job.py --pool /path/to/shapes-pool   # reuse a built pool
    python scripts/bench_example_job.py --step-choices 0     # without the earlier steps to choose from
    python scripts/bench_example_job.py --quick              # smoke run: 4 steps, 1 prompt; not a result

Unlike ``take_screenshots.py`` no Chromium and no Gradio server share the CPU, so the figures
are the pipeline's own.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--example", default="checkered_square")
    p.add_argument("--pool", type=Path, default=None, help="a built shapes pool folder (default: build or "
                   "reuse the one under BAT_HOME)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="write the timings as JSON here")
    p.add_argument("--step-choices", type=int, default=None, metavar="N",
                   help="earlier steps kept to choose from (default: the recipe's; 0 to time the job without)")
    p.add_argument("--quick", action="store_true", help="smoke run: 4 training steps, 1 preview prompt, "
                   "a small shortlist, 4 class images")
    args = p.parse_args(argv)
    home = Path(tempfile.mkdtemp(prefix="bat-example-job-"))
    os.environ["BAT_HOME"] = str(home)  # a fresh data folder: nothing cached from earlier jobs

    import torch

    from bat_app.compare import run_compare
    from bat_app.compare.pools import ensure_shapes_pool
    from bat_app.paths import assets_dir
    from bat_app.ui.handlers import build_config, get_example
    from bat_app.ui.settings import AppSettings

    torch.set_num_threads(args.threads)
    if args.quick:
        from bat_app.compare import pools

        pools.SHAPES_POOL_SIZE = 200
    example = get_example(assets_dir() / "subjects", args.example)
    pool = str(args.pool) if args.pool else str(ensure_shapes_pool())
    settings = AppSettings.from_env()
    overrides = {"steps": 4, "k": 16, "m": 4, "num_class_images": 4} if args.quick else {}
    if args.step_choices is not None:
        overrides["step_choices"] = args.step_choices
    config = build_config(settings, class_noun=example.class_noun, model="shapes", n_images=len(example.images),
                          **overrides)
    data = config.to_dict() | {"pool": pool}
    if args.quick:
        data["num_prompts"] = 1
    config = type(config).from_dict(data)
    report = {"example": args.example, "photos": len(example.images), "methods": config.methods,
              "threads": args.threads, "step_choices": config.train_config().step_choices, "jobs": []}
    for job in ("first", "again"):
        start = time.perf_counter()
        result = run_compare(config, example.images, home / "jobs" / job)
        seconds = round(time.perf_counter() - start, 1)
        stages = {k: round(v, 1) for k, v in result.timings.items()}
        report["jobs"].append({"job": job, "seconds": seconds, "stages_s": stages})
        print(f"{job}: {seconds} s  {json.dumps(stages)}", flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
