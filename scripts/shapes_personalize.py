"""Personalization on the shapes backbone with the preset's recipe: the per-subject table.

For every held-out subject: train with ``TrainConfig.for_model("shapes", n_photos)`` (the recipe
in presets.json; flags override it) on its first N example uploads, then sample through the
product's preview path (LoRA + pivotal embeddings) and judge with the attribute classifier
(``bat_app.shapes.personalization``):

    trait       "a photo of sks <class>": share of samples with the subject's trait (target >= 80%)
    recontext   new backgrounds and positions: asked attribute right (target >= 70%), trait kept
    class       "a photo of <class>": distinct colours (variety kept) and trait leakage

Writes assets/shapes/personalization.json (``shapes targets`` prints it) and, with --grids,
one picture per subject (base and LoRA rows for every prompt).

    python scripts/shapes_personalize.py --grids docs/shapes-personalization   # all subjects
    python scripts/shapes_personalize.py --subjects dot_star --no-pivotal --out /tmp/p.json
    python scripts/shapes_personalize.py --method albat --lr 1e-3 --out /tmp/a.json   # with ALBAT's items
    python scripts/shapes_personalize.py --method albat --selection '{"score": "prompt_specific"}'
    python scripts/shapes_personalize.py --images 5 --seed 1 --out /tmp/s1.json   # another training seed
    python scripts/shapes_personalize.py --quick            # a smoke run: writes nothing
    python scripts/shapes_personalize.py --table docs/shapes-personalization/recipe10-5photos-*.json
    python scripts/shapes_personalize.py --seed 2 --keep-loras /tmp/l2 --out /tmp/l2.json  # LoRAs kept
    python scripts/shapes_personalize.py --judge /tmp/l2 --guidance 6 --out /tmp/l2-g6.json  # re-sampled
    python scripts/shapes_personalize.py --seed 2 --save-every 50 --keep-loras /tmp/l2 --out /tmp/s300.json
    python scripts/shapes_personalize.py --judge /tmp/l2 --step 200 --out /tmp/s200.json  # an earlier step
    python scripts/shapes_personalize.py --pick-steps /tmp/l2 --step-records 200=/tmp/s200.json \
        300=/tmp/s300.json --out /tmp/picked.json                  # the step the shapes CLIP picks
    python scripts/shapes_personalize.py --pick-steps /tmp/l2 --pick-by pixels ...   # ... the pixel match picks
    python scripts/shapes_personalize.py --pick-steps /tmp/l2 --pick-by picture ...  # ... the judge on the app's picture
    python scripts/shapes_personalize.py --pick-steps /tmp/l2 --pick-by identity ... # ... the identity network on it
    python scripts/shapes_personalize.py --judge /tmp/l2 --first-seed 1000 --out /tmp/far.json  # other draws
    python scripts/shapes_personalize.py --pool /tmp/s300.json /tmp/far.json --out /tmp/both.json  # 32 samples
    python scripts/shapes_personalize.py --average-steps /tmp/l2 --at-steps 200 250 300 --out /tmp/l2-avg

``--table`` reads such records (any methods, any training seeds) and prints the per-subject
table and each method paired with plain DreamBooth-LoRA: the difference per (subject, training
seed), same photos and sample seeds, with a bootstrap 95% interval over those pairs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bat_app.albat import METHODS, needs_pool
from bat_app.compare.pools import ensure_shapes_pool
from bat_app.models import load_components
from bat_app.shapes import SUBJECTS, get_subject, load_attribute_classifier, shapes_paths
from bat_app.shapes.personalization import grid_image, measure_subject
from bat_app.train import TrainConfig
from bat_app.train.config import CAPTION_MIXES
from bat_app.train.checkpoint import saved_steps
from bat_app.shapes.records import figures, oracle_step, record_text, records_table, summarize
from bat_app.train.tail_average import average_lora, average_vectors


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subjects", nargs="*", default=[s.name for s in SUBJECTS])
    p.add_argument("--samples", type=int, default=16, help="samples per prompt and model (seeds 0..N-1)")
    p.add_argument("--images", type=int, default=3, help="training photos per subject (3-5)")
    p.add_argument("--steps", type=int, default=None, help="default: the recipe's")
    p.add_argument("--lr", type=float, default=None, help="default: the recipe's")
    p.add_argument("--rank", type=int, default=None, help="default: the recipe's")
    p.add_argument("--lr-schedule", default=None, help="TrainConfig.lr_schedule (default: constant)")
    p.add_argument("--batch-size", type=int, default=None, help="default: the recipe's")
    p.add_argument("--targets", nargs="+", default=None,
                   help="LoRA target modules (default: the family's, attention projections)")
    p.add_argument("--pivotal", action=argparse.BooleanOptionalAction, default=None,
                   help="pivotal tuning on/off (default: the recipe's)")
    p.add_argument("--embedding-lr", type=float, default=None, help="default: the recipe's")
    p.add_argument("--embeddings-only-steps", type=int, default=None,
                   help="the first N steps train the trigger's vectors alone (TrainConfig.embeddings_only_steps)")
    p.add_argument("--freeze-embeddings-after", action="store_true", default=None,
                   help="with --embeddings-only-steps: the vectors stop when the LoRA joins")
    p.add_argument("--embedding-retract", type=float, default=None,
                   help="pull the pivotal vectors' spread toward the table's by this power per step "
                   "(TrainConfig.embedding_retract; default: the recipe's)")
    p.add_argument("--background-weight", type=float, default=None,
                   help="masked training's weight on the photos' plain backgrounds (TrainConfig.background_weight; "
                   "default: the recipe's)")
    p.add_argument("--backdrop-swaps", type=int, default=None,
                   help="other plain backdrops each photo is also shown on (TrainConfig.backdrop_swaps; "
                   "default: the recipe's)")
    p.add_argument("--refine-latents", type=int, default=None,
                   help="decoder-inversion steps for the photos' latents (TrainConfig.refine_latents; "
                   "default: the recipe's)")
    p.add_argument("--refine-anchor", type=float, default=None,
                   help="with --refine-latents: the pull toward the encoder's latent (TrainConfig.refine_anchor)")
    p.add_argument("--refine-subject-weight", type=float, default=None,
                   help="with --refine-latents: the subject's pixels' weight (TrainConfig.refine_subject_weight)")
    p.add_argument("--save-every", type=int, default=None,
                   help="also export the LoRA every N steps (TrainConfig.save_every; with --keep-loras: "
                   "DIR/<subject>/steps/step-N, judged with --judge DIR --step N)")
    p.add_argument("--tail-average", type=int, default=None,
                   help="export the mean of the LoRAs at N steps over the last third (TrainConfig.tail_average)")
    p.add_argument("--class-images", type=int, default=None, help="class images for prior preservation "
                   "(default: the recipe's)")
    p.add_argument("--method", default="none", choices=METHODS,
                   help="backbone augmentation as the product runs it (the shapes pool, the recipe's k and m)")
    p.add_argument("--selection", type=json.loads, default={}, metavar="JSON",
                   help="selection parameters on top of the recipe's, e.g. '{\"fill\": true}' or "
                   "'{\"score\": \"prompt_specific\", \"negative_fraction\": 0.5}' (SelectionParams)")
    p.add_argument("--out", type=Path, default=None, help="default: assets/shapes/personalization.json")
    p.add_argument("--grids", type=Path, default=None, help="folder for one sample grid per subject (png)")
    p.add_argument("--seed", type=int, default=0, help="training seed (also the selection's draws); "
                   "the sample seeds stay 0..N-1")
    p.add_argument("--threads", type=int, default=2, help="torch threads (1 on a busy machine)")
    p.add_argument("--quick", action="store_true", help="smoke run: one subject, 5 steps, 2 samples; "
                   "prints the result and leaves assets/ alone (unless --out is given)")
    p.add_argument("--context-captions", nargs="?", const="all", choices=CAPTION_MIXES, default=None,
                   help="train on the example photos' shipped captions, which state each photo's position and "
                   "background (\"a photo of sks heart at the bottom on a black background\"), as the app's "
                   "'Use example' does; the value is the trainer's caption_mix ('half': each photo also once "
                   "with the plain instance prompt, 'third': twice)")
    p.add_argument("--caption-source", choices=("shipped", "clip-backgrounds", "backgrounds"), default="shipped",
                   help="with --context-captions: the example's shipped captions (position and background), "
                   "each photo's background as the shapes CLIP names it (what the app could write), or "
                   "its true background only (what a user who corrects that writes)")
    p.add_argument("--prior-contexts", choices=("world",), default=None,
                   help="'world': the class images' prompts take in turn the bare class prompt, each position "
                   "phrase and each background phrase of the shapes world (TrainConfig.prior_contexts); "
                   "default: the recipe's")
    p.add_argument("--keep-loras", type=Path, default=None, metavar="DIR",
                   help="train into DIR/<subject> and keep the LoRAs (and the record, DIR/record.json)")
    p.add_argument("--judge", type=Path, default=None, metavar="DIR",
                   help="no training: sample and judge the LoRAs a --keep-loras run left in DIR")
    p.add_argument("--step", type=int, default=None, help="with --judge: the LoRA that --save-every kept "
                   "after this step (DIR/<subject>/steps/step-N) instead of the final one")
    p.add_argument("--first-seed", type=int, default=0, help="with --judge: sample at seeds FIRST..FIRST+samples-1 "
                   "(default 0: the judge's own seeds; others judge the same LoRA on independent draws)")
    p.add_argument("--guidance", type=float, default=None, help="CFG scale of the judged samples "
                   "(default: the preset's)")
    p.add_argument("--lora-scale", type=float, nargs="+", default=[1.0],
                   help="LoRA strength of the judged samples; several: one record each, --out holds {scale}")
    p.add_argument("--lora-start", type=float, nargs="+", default=[0.0],
                   help="share of the sampling steps drawn without the LoRA (sample_images' lora_start); "
                   "several: one record each, --out holds {start}")
    p.add_argument("--pool", nargs="+", type=Path, default=[], metavar="RECORD",
                   help="records of the same LoRAs judged on other draws (--first-seed): write to --out one "
                   "record whose figures are their means (as many samples as all of them)")
    p.add_argument("--pick-steps", type=Path, default=None, metavar="DIR",
                   help="no training: score the steps a --keep-loras --save-every run kept in DIR with "
                   "bat_app.preview.step_pick; with --step-records, write the picked steps' record to --out")
    p.add_argument("--pick-by", choices=("clip", "pixels", "pixels-zero", "judge", "picture", "identity"),
                   default="clip",
                   help="with --pick-steps: CLIP-I + CLIP-T (twentieth session), the pixel match + CLIP-T "
                   "(pixels-zero: as first stated, a sample with no subject found counts 0), the judge "
                   "itself on other sampling seeds (--pick-records: the ceiling of any self-check), the "
                   "judge on the app's steps picture, or the identity network + CLIP-T on that picture")
    p.add_argument("--identity", type=Path, default=None, metavar="DIR",
                   help="with --pick-by identity: the identity network (default: assets/shapes/identity)")
    p.add_argument("--pick-records", nargs="+", default=[], metavar="STEP=RECORD",
                   help="with --pick-by judge: each step judged at other seeds (--judge --first-seed)")
    p.add_argument("--picture-seeds", type=int, default=2, metavar="N",
                   help="with --pick-by picture: the steps picture drawn at seeds 0..N-1 (the app's: 2)")
    p.add_argument("--step-records", nargs="+", default=[], metavar="STEP=RECORD",
                   help="with --pick-steps: the judged record of each step (the final step: the training record)")
    p.add_argument("--average-steps", type=Path, default=None, metavar="DIR",
                   help="no training: write into --out the exact mean of the LoRAs DIR kept at --at-steps "
                   "(the tail average), to judge with --judge")
    p.add_argument("--at-steps", type=int, nargs="+", default=[], help="with --average-steps: the steps")
    p.add_argument("--table", nargs="+", type=Path, metavar="RECORD",
                   help="print the table of these records (--out files) and the paired comparison; trains nothing")
    args = p.parse_args(argv)
    if args.table:
        print(records_table(args.table))
        return 0
    if args.quick:
        args.subjects, args.steps, args.samples, args.batch_size = args.subjects[:1], 5, 2, 1
        args.class_images = 4
    torch.set_num_threads(args.threads)
    if args.judge:
        return judge_kept(args)
    if args.pick_steps:
        return pick_steps(args)
    if args.pool:
        return pool_records(args.pool, args.out)
    if args.average_steps:
        if args.out is None or not args.at_steps:
            raise SystemExit("--average-steps needs --at-steps and --out (a folder)")
        return average_steps(args)
    overrides = {"steps": args.steps, "lr": args.lr, "rank": args.rank, "batch_size": args.batch_size,
                 "pivotal": args.pivotal, "embedding_lr": args.embedding_lr,
                 "embeddings_only_steps": args.embeddings_only_steps,
                 "freeze_embeddings_after": args.freeze_embeddings_after,
                 "embedding_retract": args.embedding_retract, "lr_schedule": args.lr_schedule,
                 "background_weight": args.background_weight, "backdrop_swaps": args.backdrop_swaps,
                 "refine_latents": args.refine_latents, "refine_anchor": args.refine_anchor,
                 "refine_subject_weight": args.refine_subject_weight,
                 "save_every": args.save_every,
                 "tail_average": args.tail_average,
                 "num_class_images": args.class_images, "target_modules": args.targets,
                 "prior_contexts": world_contexts() if args.prior_contexts == "world" else None}
    components = load_components("shapes", device="cpu")
    classifier = load_attribute_classifier(shapes_paths().classifier)
    results, config = {}, None
    pool_dir = ensure_shapes_pool() if needs_pool(args.method) else None
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep_loras or Path(tmp)
        for name in args.subjects:
            subject = get_subject(name)
            config = TrainConfig.for_model("shapes", args.images, token="sks", class_noun=subject.class_noun,
                                           checkpoint_every=0, seed=args.seed, mixed_precision="no",
                                           captions=bool(args.context_captions),
                                           caption_mix=args.context_captions or "half", **overrides)
            photos = (captioned_copies(name, args.images, Path(tmp) / "photos" / name, args.caption_source,
                                       components) if args.context_captions else None)
            row = measure_subject(name, config, args.images, args.samples, work, components, classifier,
                                  args.method, pool_dir, args.selection, photo_folder=photos)
            if args.grids:
                args.grids.mkdir(parents=True, exist_ok=True)
                grid_image(row).save(args.grids / f"{name}.png")
            row.pop("_grids")
            results[name] = row
            print(f"{name}: LoRA {row['lora']}  base {row['base']}  (select {row['select_seconds']}s, "
                  f"train+judge {row['train_seconds']}s)", flush=True)
    summary = summarize(results, config, args.images, args.method)
    summary["selection"] = args.selection
    summary["context_captions"] = args.context_captions
    if args.context_captions and args.caption_source != "shipped":
        summary["caption_source"] = args.caption_source
    record = record_text(summary, results)
    out = args.out or (None if args.quick else shapes_paths().root / "personalization.json")
    if out is not None:
        out.write_text(record)
    if args.keep_loras:
        (args.keep_loras / "record.json").write_text(record)
    print(json.dumps(summary, indent=2))
    return 0


def judge_kept(args) -> int:
    """Sample and judge the LoRAs of a --keep-loras run again, with --guidance and --lora-scale:
    the same training (its record's settings), other sampling settings. The base model's samples
    are drawn once per subject for all the strengths."""
    from bat_app.shapes.personalization import measure_lora

    settings = [(scale, start) for scale in args.lora_scale for start in args.lora_start]
    for flag, values, field in (("--lora-scale", args.lora_scale, "{scale}"), ("--lora-start", args.lora_start,
                                                                              "{start}")):
        if len(values) > 1 and (args.out is None or field not in str(args.out)):
            raise SystemExit(f"several {flag} values write one record each: put {field} in --out")
    kept = json.loads((args.judge / "record.json").read_text())
    components = load_components("shapes", device="cpu")
    classifier = load_attribute_classifier(shapes_paths().classifier)
    results: dict = {setting: {} for setting in settings}
    for name, old in kept["subjects"].items():
        for scale, start in settings:
            folder = args.judge / name / ("steps/step-%06d" % args.step if args.step else "")
            row = measure_lora(name, folder, kept["summary"]["images_per_subject"], args.samples, "sks",
                               components, classifier, lora_scale=scale, guidance=args.guidance, lora_start=start,
                               first_seed=args.first_seed)
            row.pop("_grids")
            results[scale, start][name] = {**{k: v for k, v in old.items() if k not in row}, **row}
            print(f"{name} (LoRA scale {scale:g}, from {start:g} of the steps): LoRA {row['lora']}  "
                  f"base {row['base']}", flush=True)
    for scale, start in settings:
        # the kept run's settings; every figure measured again
        sampling = ({"guidance": args.guidance, "lora_scale": scale} | ({"lora_start": start} if start else {})
                    | ({"first_seed": args.first_seed} if args.first_seed else {}))
        summary = {**kept["summary"], **figures(results[scale, start]), "sampling": sampling}
        if args.step:
            summary["step"] = args.step
        if args.out:
            out = str(args.out).replace("{scale}", f"{scale:g}").replace("{start}", f"{start:g}")
            Path(out).write_text(record_text(summary, results[scale, start]))
        print(json.dumps(summary, indent=2))
    return 0


def world_contexts() -> list[str]:
    """The bare class prompt, then each position and each background phrase of the shapes world."""
    from bat_app.shapes.world import COLOURS, POSITION_PHRASES, _article

    return ["", *POSITION_PHRASES.values(), *(f"on {_article(c)} {c} background" for c in COLOURS)]


def captioned_copies(name: str, n_images: int, folder: Path, source: str = "shipped", components=None) -> Path:
    """The subject's first photos copied into ``folder``, each with a .txt caption: the shipped one
    (``source`` "shipped": position and background), the background the shapes CLIP names
    ("clip-backgrounds", ``clip_backgrounds``; needs the shapes ``components``), or its true
    background ("backgrounds")."""
    from bat_app.shapes.personalization import subject_photos_used

    folder.mkdir(parents=True, exist_ok=True)
    used = subject_photos_used(name, n_images)
    photos = [shapes_paths().subjects / name / photo["file"] for photo in used]
    named = {"shipped": None, "backgrounds": [f"on a {photo['background']} background" for photo in used],
             "clip-backgrounds": None}[source]
    if source == "clip-backgrounds":
        named = clip_backgrounds(components, photos, get_subject(name).class_noun)
    for i, image in enumerate(photos):
        shutil.copy(image, folder / image.name)
        if named is None:
            shutil.copy(image.with_suffix(".txt"), folder / image.with_suffix(".txt").name)
        else:
            (folder / image.with_suffix(".txt").name).write_text(named[i] + "\n")
    return folder


def clip_backgrounds(components, photos: list[Path], class_noun: str) -> list[str]:
    """Each photo's background phrase ("on a blue background") as the shapes CLIP names it: what
    the Train tab's *Suggest backgrounds* writes (``images.background_captions``)."""
    from PIL import Image

    from bat_app.compare.pools import default_embedder
    from bat_app.images.background_captions import background_phrases, suggest_backgrounds

    return suggest_backgrounds(default_embedder(components, None, None), [Image.open(p).convert("RGB") for p in photos],
                               class_noun, background_phrases("shapes"))


def pick_steps(args) -> int:
    """Pick one step per subject of a --keep-loras --save-every folder (``step_picks``) and, given
    the judged record of each step (--step-records; the final step's is the training record),
    write the record of the picked steps; print the oracle (the judge's best step: a bound, not a
    method)."""
    picks = step_picks(args)
    print("picked:", json.dumps(picks))
    records = step_records(args.step_records)
    if not records:
        return 0
    missing = set(picks.values()) - set(records)
    if missing:
        raise SystemExit(f"no judged record for steps {sorted(missing)}: give STEP=RECORD for each")
    print("oracle (the judge's best step per subject, both targets first):",
          json.dumps({name: oracle_step(records, name) for name in picks}))
    if args.out:
        final = records[max(records)]
        rows = {name: records[step]["subjects"][name] | {"step": step} for name, step in picks.items()}
        by = {"clip": "CLIP", "pixels": "pixel-match", "pixels-zero": "pixel-match (no subject: 0)",
              "judge": "judge-at-other-seeds", "picture": "judge-on-the-steps-picture"
              + (f"-at-{args.picture_seeds}-seeds" if args.picture_seeds != 2 else ""),
              "identity": "identity-network-on-the-steps-picture"}[args.pick_by]
        summary = {**final["summary"], **figures(rows), "picked": f"step {by} picks of "
                   + "/".join(str(s) for s in sorted(records)), "picks": picks}
        args.out.write_text(record_text(summary, rows))
        print("wrote", args.out)
    return 0


def step_picks(args) -> dict[str, int]:
    """subject -> the step --pick-by chooses: the judge's on other draws (--pick-records), or the
    best ``step_pick`` score (CLIP-I or the pixel match, + CLIP-T; seeds apart from the judge's,
    cached in DIR/step_scores.json and step_appearance.json)."""
    from bat_app.metrics.subject_match import mean_found
    from bat_app.preview.step_pick import best_step

    if args.pick_by == "judge":
        others = step_records(args.pick_records)
        return {name: oracle_step(others, name) for name in next(iter(others.values()))["subjects"]}
    if args.pick_by in ("picture", "identity"):
        scores = (step_picture(args.pick_steps, args.picture_seeds) if args.pick_by == "picture"
                  else step_identity(args.pick_steps, args.identity))
        print("scores:", json.dumps(scores))
        return {name: best_step({int(s): v for s, v in by_step.items()}) for name, by_step in scores.items()}
    scores = step_scores(args.pick_steps)
    if args.pick_by != "clip":
        matches = step_appearance(args.pick_steps)
        look = (lambda m: float(np.mean([x or 0.0 for x in m]))) if args.pick_by == "pixels-zero" else mean_found
        scores = {name: {s: {"appearance": round(look(matches[name][s]), 4), "clip_t": v["clip_t"],
                             "score": round(look(matches[name][s]) + v["clip_t"], 4)} for s, v in by_step.items()}
                  for name, by_step in scores.items()}
        print("scores:", json.dumps(scores))
    return {name: best_step({int(s): v for s, v in by_step.items()}) for name, by_step in scores.items()}


def step_records(pairs: list[str]) -> dict[int, dict]:
    """STEP=RECORD arguments -> step -> the judged record."""
    return {int(step): json.loads(Path(path).read_text()) for step, path in (p.split("=", 1) for p in pairs)}


def pool_records(paths: list[Path], out: Path | None) -> int:
    """One record from records of the same LoRAs judged on disjoint draws: each figure the mean of
    theirs (every figure is a share over as many samples per record, so the mean is the share over
    all of them), the sample count their sum."""
    records = [json.loads(p.read_text()) for p in paths]
    first = records[0]
    # records older than a setting lack its key, and ran with its default (no change)
    sampling = [{"guidance": None, "lora_scale": 1.0} | (r["summary"].get("sampling") or {}) for r in records]
    seeds = [s.pop("first_seed", 0) for s in sampling]

    def same_training(a: dict, b: dict) -> bool:
        return all(a[k] == b[k] for k in a.keys() & b.keys())

    for path, r, how in zip(paths[1:], records[1:], sampling[1:]):
        same = (same_training(r["summary"]["train"], first["summary"]["train"])
                and r["summary"].get("step") == first["summary"].get("step") and how == sampling[0]
                and {n: (row["prompts"], row["samples"]) for n, row in r["subjects"].items()}
                == {n: (row["prompts"], row["samples"]) for n, row in first["subjects"].items()})
        if not same:
            raise SystemExit(f"{path} judged another training, step, sampling, prompt list or sample count than "
                             f"{paths[0]}: only draws of the same judgement pool")
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"the records share their first seed ({seeds}): pooling them would count draws twice")
    rows = {}
    for name, row in first["subjects"].items():
        rows[name] = row | {"samples": sum(r["subjects"][name]["samples"] for r in records)}
        for side in ("base", "lora"):
            rows[name][side] = {key: round(float(np.mean([r["subjects"][name][side][key] for r in records])), 3)
                                for key in row[side]}
    summary = {**first["summary"], **figures(rows), "sampling": sampling[0] | {"pooled_first_seeds": seeds}}
    if out is None:
        raise SystemExit("--pool needs --out")
    out.write_text(record_text(summary, rows))
    print("wrote", out)
    return 0


def subject_photos(name: str, n_images: int, resolution: int) -> list:
    """The photos a kept run trained ``name`` on (PIL, at the preset's resolution)."""
    from bat_app.images import load_user_images
    from bat_app.shapes.personalization import subject_photos_used

    files = [shapes_paths().subjects / name / p["file"] for p in subject_photos_used(name, n_images)]
    return [u.image for u in load_user_images(files, resolution=resolution).images]


def step_appearance(kept: Path) -> dict[str, dict]:
    """subject -> step -> each subject-prompt sample's pixel match to the photos, None where no
    subject is found (cached in step_appearance.json)."""
    from bat_app.preview.step_pick import appearance_steps

    return cached_per_step(kept, "step_appearance.json", lambda components, folders, photos, noun: appearance_steps(
        components, folders, photos, "sks", noun))


def step_picture(kept: Path, n_seeds: int = 2) -> dict[str, dict]:
    """subject -> step -> the judge's reading of the app's steps picture drawn at seeds
    0..n_seeds-1 (cached in step_picture.json; step_picture-seeds4.json for 4 seeds)."""
    from bat_app.shapes.personalization import PICTURE_SEEDS, judge_picture

    classifier = load_attribute_classifier(shapes_paths().classifier)
    by_noun = {s.class_noun: s.name for s in SUBJECTS}
    seeds = tuple(range(n_seeds))
    cache = "step_picture.json" if seeds == PICTURE_SEEDS else f"step_picture-seeds{n_seeds}.json"
    return cached_per_step(kept, cache, lambda components, folders, photos, noun: judge_picture(
        components, classifier, by_noun[noun], folders, seeds=seeds))


def step_identity(kept: Path, network: Path | None) -> dict[str, dict]:
    """subject -> step -> the identity network's and CLIP's reading of the app's steps picture
    (``step_pick.picture_scores``; cached in step_identity.json)."""
    from bat_app.compare.pools import default_embedder
    from bat_app.preview import load_prompt_set, sample_images
    from bat_app.preview.step_pick import picture_scores
    from bat_app.shapes.identity import load_identity
    from bat_app.shapes.personalization import PICTURE_SEEDS

    identity = load_identity(network)

    def score(components, folders, photos, noun):
        pairs = load_prompt_set("shapes").prompts("sks", noun)
        samples = {step: sample_images(components, [p for _, p in pairs], list(PICTURE_SEEDS), folder)
                   for step, folder in folders.items()}
        return picture_scores(samples, pairs, photos, identity, default_embedder(components, None, None), "sks")
    return cached_per_step(kept, "step_identity.json", score)


def step_scores(kept: Path) -> dict[str, dict]:
    """subject -> step -> CLIP scores (cached in step_scores.json)."""
    from bat_app.compare.pools import default_embedder
    from bat_app.preview.step_pick import score_steps

    def score(components, folders, photos, noun):
        return score_steps(components, folders, photos, default_embedder(components, None, None), "sks", noun)
    return cached_per_step(kept, "step_scores.json", score)


def cached_per_step(kept: Path, cache_name: str, score) -> dict[str, dict]:
    """subject -> ``score(components, {step: folder}, photos, class noun)`` over the candidate
    steps of a --keep-loras --save-every folder, computed once (cached in ``kept/cache_name``)."""
    from bat_app.preview.step_pick import candidate_steps

    cache = kept / cache_name
    if cache.is_file():
        return json.loads(cache.read_text())
    record = json.loads((kept / "record.json").read_text())
    n_images, steps = record["summary"]["images_per_subject"], record["summary"]["train"]["steps"]
    components = load_components("shapes", device="cpu")
    out = {}
    for name in record["subjects"]:
        photos = subject_photos(name, n_images, components.spec.resolution)
        folders = candidate_steps(saved_steps(kept / name), steps, kept / name)
        t0 = time.perf_counter()
        out[name] = score(components, folders, photos, get_subject(name).class_noun)
        print(f"{name}: {json.dumps(out[name])} ({time.perf_counter() - t0:.1f} s)", flush=True)
    cache.write_text(json.dumps(out, indent=1))
    return json.loads(cache.read_text())


def average_steps(args) -> int:
    """Average the LoRAs a --keep-loras --save-every run kept at --at-steps into --out
    (``bat_app.train.tail_average``: exact, rank n r), to judge with --judge without training again."""
    record = json.loads((args.average_steps / "record.json").read_text())
    final = record["summary"]["train"]["steps"]
    args.out.mkdir(parents=True, exist_ok=True)
    for name in record["subjects"]:
        folders = [args.average_steps / name if s == final else args.average_steps / name / "steps" / f"step-{s:06d}"
                   for s in args.at_steps]
        average_lora_folders(folders, args.out / name)
    record["summary"]["averaged_steps"] = args.at_steps
    (args.out / "record.json").write_text(json.dumps(record, indent=2) + "\n")
    print("wrote", args.out)
    return 0


def average_lora_folders(folders: list[Path], out: Path) -> Path:
    """Write into ``out`` the mean of the diffusers LoRAs (and trigger embeddings) in ``folders``."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from bat_app.export import DIFFUSERS_FILE

    out.mkdir(parents=True, exist_ok=True)
    tensors, metas = [], []
    for folder in folders:
        with safe_open(str(folder / DIFFUSERS_FILE), "pt") as f:
            tensors.append({k: f.get_tensor(k) for k in f.keys()})
            metas.append(f.metadata())
    n = len(folders)
    merged = average_lora(tensors)
    meta = json.loads(metas[0]["lora_adapter_metadata"])
    for key in [k for k in meta if k.endswith(".r")]:
        prefix = key[: -len("r")]
        meta[key] *= n
        meta[prefix + "lora_alpha"] = meta[prefix + "lora_alpha"] * n
    save_file(merged, out / DIFFUSERS_FILE, metadata={**metas[0], "lora_adapter_metadata": json.dumps(meta)})
    embeddings = sorted(folders[0].glob("*.safetensors"))
    for emb in [e for e in embeddings if e.name != DIFFUSERS_FILE and "kohya" not in e.name]:
        with safe_open(str(emb), "pt") as f:
            emb_meta = f.metadata()
            keys = list(f.keys())
        vectors = average_vectors([{k: _tensor(folder / emb.name, k) for k in keys} for folder in folders])
        save_file(vectors, out / emb.name, metadata=emb_meta)
    for extra in ("README.md",):
        if (folders[-1] / extra).is_file():
            shutil.copy(folders[-1] / extra, out / extra)
    return out


def _tensor(path: Path, key: str) -> torch.Tensor:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.get_tensor(key)


if __name__ == "__main__":
    raise SystemExit(main())
