"""``bat-app compare``: every method trained with equal steps and seeds, previews side by side.

    python -m bat_app compare --images photos/ --class-noun dog --pool shapes --out runs/compare
"""

from __future__ import annotations

from pathlib import Path

from ..cli import add_memory_profile
from ..progress import TqdmProgress


def register(sub) -> None:
    p = sub.add_parser("compare", help="train the baselines and ALBAT, render grids side by side, score them",
                       description="Select and train every method with equal steps and seeds, then sample the "
                                   "same prompts and seeds through the base model and each LoRA.")
    p.add_argument("--images", required=True, nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--class-noun", default=None)
    p.add_argument("--token", default=None)
    p.add_argument("--model", default=None)
    p.add_argument("--pool", default=None, help="pool folder, or 'shapes' (built in the data dir on first use)")
    p.add_argument("--methods", default=None, help="comma-separated, e.g. none,prior,random,clip,albat")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--m", type=int, default=None, help="items ALBAT may select (others get as many as it kept)")
    p.add_argument("--seeds", default=None, help="comma-separated preview seeds (default 0,1)")
    p.add_argument("--num-prompts", type=int, default=None, help="use only N prompts of the set")
    p.add_argument("--no-safety-checker", dest="safety_checker", action="store_false", default=None,
                   help="show previews as drawn, not through the model's safety checker (when it has one)")
    p.add_argument("--config", type=Path, help="a job/compare config JSON (flags override it)")
    add_memory_profile(p)
    p.set_defaults(func=run_compare_cmd)


def run_compare_cmd(args) -> int:
    from . import CompareConfig, run_compare

    data = CompareConfig.from_file(args.config).to_dict() if args.config else {}
    for key in ("class_noun", "token", "model", "pool", "num_prompts", "safety_checker"):
        if getattr(args, key) is not None:
            data[key] = getattr(args, key)
    if args.methods:
        data["methods"] = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.seeds:
        data["seeds"] = [int(s) for s in args.seeds.split(",")]
    for key, value in (("steps", args.steps), ("memory_profile", args.memory_profile)):
        if value is not None:
            data["train"] = {**data.get("train", {}), key: value}
    if args.m is not None:
        data["selection"] = {**data.get("selection", {}), "m": args.m}
    config = CompareConfig.from_dict(data)
    bars = TqdmProgress()
    try:
        result = run_compare(config, [Path(p) for p in args.images] if len(args.images) > 1 else Path(args.images[0]),
                             args.out, progress=bars)
    finally:
        bars.close()
    print(Path(args.out, result.outputs["report"]).read_text())
    print(f"done: {len(config.methods)} methods in {sum(result.timings.values()):.0f}s -> "
          f"{Path(args.out) / result.outputs['report']}, {Path(args.out) / result.outputs['grid']}")
    return 0
