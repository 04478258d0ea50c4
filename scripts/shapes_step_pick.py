"""Keep the step CLIP scores best: the measurement behind ``bat_app.preview.step_pick``.

A ``shapes_personalize.py --keep-loras DIR --save-every N`` run leaves, per subject, the final
LoRA in DIR/<subject> and earlier ones in DIR/<subject>/steps/step-N. This script scores every
step of every subject with ``score_steps`` (the shapes CLIP, seeds apart from the judge's; the
scores are kept in DIR/step_scores.json) and, given the judged record of each step
(``shapes_personalize.py --judge DIR --step N --out ...``; the final step's is the training
record), writes the record of the picked steps: per subject, the judged row of the step the
pick kept. It also prints the oracle, the judge's own best step per subject (a bound, not a
method).

    python scripts/shapes_step_pick.py /tmp/l0 --records 200=/tmp/s200.json 250=/tmp/s250.json \\
        300=/tmp/s300.json --out /tmp/picked.json
    python scripts/shapes_personalize.py --table /tmp/picked.json docs/shapes-personalization/...
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bat_app.compare.pools import default_embedder
from bat_app.images import load_user_images
from bat_app.models import load_components
from bat_app.preview.step_pick import best_step, candidate_steps, score_steps
from bat_app.shapes import get_subject, shapes_paths
from bat_app.shapes.personalization import subject_photos_used
from bat_app.train.checkpoint import saved_steps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kept", type=Path, help="a --keep-loras --save-every folder")
    p.add_argument("--records", nargs="+", default=[], metavar="STEP=RECORD",
                   help="the judged record of each step (the final step: the training record)")
    p.add_argument("--out", type=Path, default=None, help="the picked steps' record")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    scores = step_scores(args.kept)
    records = {int(k): json.loads(Path(v).read_text()) for k, v in (r.split("=", 1) for r in args.records)}
    picks = {name: best_step({int(s): v for s, v in by_step.items()}) for name, by_step in scores.items()}
    print("picked:", json.dumps(picks))
    if not records:
        return 0
    missing = {s for by_step in scores.values() for s in map(int, by_step)} - set(records)
    if missing:
        raise SystemExit(f"no judged record for steps {sorted(missing)}: give STEP=RECORD for each")
    print("oracle (the judge's best step per subject, both targets first):",
          json.dumps({name: oracle_step(records, name) for name in scores}))
    if args.out:
        from shapes_personalize import figures, record_text  # noqa: E402 (scripts/ is on sys.path)

        final = records[max(records)]
        rows = {name: records[picks[name]]["subjects"][name] | {"step": picks[name]} for name in scores}
        summary = {**final["summary"], **figures(rows), "picked": "step CLIP picks of "
                   + "/".join(str(s) for s in sorted(records)), "picks": picks}
        args.out.write_text(record_text(summary, rows))
        print("wrote", args.out)
    return 0


def step_scores(kept: Path) -> dict[str, dict]:
    """subject -> step -> CLIP scores, computed once per folder (cached in step_scores.json)."""
    cache = kept / "step_scores.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    record = json.loads((kept / "record.json").read_text())
    n_images, steps = record["summary"]["images_per_subject"], record["summary"]["train"]["steps"]
    components = load_components("shapes", device="cpu")
    embedder = default_embedder(components, None, None)
    out = {}
    for name in record["subjects"]:
        subject = get_subject(name)
        files = [shapes_paths().subjects / name / p["file"] for p in subject_photos_used(name, n_images)]
        photos = [u.image for u in load_user_images(files, resolution=components.spec.resolution).images]
        folders = candidate_steps(saved_steps(kept / name), steps, kept / name)
        t0 = time.perf_counter()
        out[name] = score_steps(components, folders, photos, embedder, "sks", subject.class_noun)
        print(f"{name}: {json.dumps(out[name])} ({time.perf_counter() - t0:.1f} s)", flush=True)
    cache.write_text(json.dumps(out, indent=1))
    return json.loads(cache.read_text())


def oracle_step(records: dict[int, dict], name: str) -> int:
    """The step whose judged row meets most targets, then has the highest trait + recontext."""
    def key(step):
        row = records[step]["subjects"][name]["lora"]
        met = (row["trait"] >= 0.8) + (row["recontext_fidelity"] >= 0.7)
        return met, row["trait"] + row["recontext_fidelity"], step
    return max(records, key=key)


if __name__ == "__main__":
    raise SystemExit(main())
