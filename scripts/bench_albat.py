"""ALBAT's pre-registered experiment on the shapes backbone (issue 12), and its score's stability.

    python scripts/bench_albat.py run                # the registered experiment, CPU settings (hours)
    python scripts/bench_albat.py run --gpu          # 5 seeds, 400 steps, m = 100, parallel workers
    python scripts/bench_albat.py run --app-recipe   # the same at the app's recipe (lr 1e-3, prior)
    python scripts/bench_albat.py run --quick        # smoke test: 1 subject, 1 seed, a few steps
    python scripts/bench_albat.py stability          # score seed vs R: rank correlation, top-m Jaccard

Each (subject, training seed) writes ``<work>/runs/<subject>-s<seed>.json`` and is skipped
when that file exists with the same plan, so an interrupted run continues. The report replaces
only the text between this script's markers in docs/benchmarks.md (``--doc``; with --quick the
default is a file in the work folder) and the frontier plot goes to docs/albat_frontier.png.
Uses the installed bat_app package (``pip install -e .``).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import platform
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from bat_app.albat.experiment import fmt_ci, frontier, summarise, write_section

# --- fixed before any run: the metrics and the decision rule --------------------------------
PREREGISTRATION = """\
Pre-registration (written into scripts/bench_albat.py before any run; not changed after):

- Unit of analysis: one (subject, training seed) pair. Subjects: the 5 held-out shapes subjects,
  3 photos each (00-02.png); >= 3 training seeds. All arms of a pair share photos, recipe,
  training seed, checkpoints and evaluation draws.
- PRIMARY metric (lower is better): subject loss = the diffusion training loss of the LoRA on
  E >= 40 fresh photos of the subject, rendered on backgrounds none of its training photos has,
  at every position and two scales, with the instance prompt; R_eval fixed stratified draws
  (latent sample, timestep, noise: seed 4242, identical for every arm and checkpoint). Measured
  at the checkpoints; summarised per run as MIN over checkpoints and AREA over checkpoints
  (trapezoid over steps / step span).
- SECONDARY: drift = mean over 100 random pool items (fixed ids, seed 4243) of
  l(x, own caption; LoRA) - l(x, own caption; base), same fixed-draw scheme, at the checkpoints
  (reported: last checkpoint). At the end: sample metrics (subject fidelity, prompt fidelity,
  class prior, CLIP-I, CLIP-T; bat_app.metrics) on the shapes prompt set + class prompt with
  S >= 16 samples per prompt, seeds 0..S-1 for every arm.
- Arms: none; none_eq (equal compute: batch 2, and e extra steps where e = ALBAT's selection
  seconds / seconds per training step of the albat arm; its checkpoints shifted by e); prior;
  random; clip (top-m by CLIP, de-duplicated like ALBAT); shortlist (m random items of ALBAT's
  K-candidate CLIP shortlist, de-duplicated); albat; albat_neg (the m most negative scores).
  Equal item counts: every arm with items takes as many as albat kept.
- Statistics: paired differences per (subject, seed); mean and 95% percentile bootstrap CI
  (10,000 resamples of the pairs). Primary comparisons: albat - shortlist, albat - none.
- Decision rule for variants (albat_prompt, albat_both, albat_std): a variant is adopted only
  if its primary-metric CI lies below 0 against BOTH shortlist and albat.
- --quick is a smoke test of the code path with smaller numbers; its figures are not results.
"""

# The same experiment at the app's recipe (issue 12: "run the final table once the new recipe
# has landed"), registered on 2026-12-02 before any of its runs, after the first experiment's 15
# pairs were in. Its records and report are kept apart from the first experiment's.
PREREGISTRATION_APP_RECIPE = """\
Pre-registration of the app-recipe run (`run --app-recipe`; written before any of its runs):

- Everything above holds (unit, metrics, draws, statistics, decision rule), with two changes.
- Training: the shapes preset's recipe as the app trains it on 2026-12-02, pinned: LoRA lr 1e-3
  and prior preservation (the base model's own class images in every arm's training; the
  preset's 50 class images), instead of lr 5e-4 without class images.
- Arms: the registered ones without `prior` (class images as backbone items): with prior
  preservation every arm already trains on the class images (the app refuses that column then).
"""

EVAL_SEED, DRIFT_SEED = 4242, 4243
# Fewer pairs than this: the report gives means only. A percentile bootstrap over 2 pairs has 3
# possible resample means, and its "interval" excludes 0 whenever both pairs agree in sign.
MIN_PAIRS_FOR_CI = 5

# name -> (selector, SelectionParams overrides). Order matters: albat first (its count and
# selection cost set the others'), none_eq last (needs the albat arm's seconds per step).
ARMS = {
    "albat": ("albat", {}),
    "albat_neg": ("albat", {"negative_fraction": 1.0}),
    "albat_prompt": ("albat", {"score": "prompt_specific"}),
    "albat_both": ("albat", {"negative_fraction": 0.5}),
    "albat_std": ("albat", {"standardise": True}),
    "shortlist": ("shortlist", {}),
    "clip": ("clip", {}),
    "random": ("random", {}),
    "prior": ("prior", {}),
    "none": ("none", {}),
    "none_eq": ("none", {}),
}
REGISTERED = ["albat", "albat_neg", "shortlist", "clip", "random", "prior", "none", "none_eq"]
COMPARISONS = [("albat", "shortlist"), ("albat", "none"), ("albat", "none_eq"), ("albat", "random"),
               ("albat", "clip"), ("albat", "prior"), ("albat", "albat_neg"), ("shortlist", "none")]
VARIANTS = ("albat_prompt", "albat_both", "albat_std")


@dataclass
class Plan:
    """Everything that decides the numbers (hashed: a changed plan reruns every pair)."""

    subjects: list[str] = field(default_factory=lambda: ["striped_heart", "dotted_moon", "checkered_square",
                                                         "dot_star", "outlined_circle"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    checkpoints: list[int] = field(default_factory=lambda: [25, 50, 100, 200])
    arms: list[str] = field(default_factory=lambda: list(REGISTERED))
    shots: int = 3
    m: int = 30
    k: int = 300
    draws: int | None = None          # ALBAT's R (None: SelectionParams' default)
    pool_size: int = 10_000
    eval_photos: int = 60
    eval_draws: int = 4
    drift_items: int = 100
    samples: int = 16                 # per prompt, at the last checkpoint
    checkpoint_samples: int = 0       # per prompt at the other checkpoints (0: none)
    num_prompts: int | None = None
    train: dict = field(default_factory=dict)  # TrainConfig settings over the preset's recipe
    sample_steps: int | None = None   # sampler steps (None: the preset's training-data sampling, 25 on
    #                                   shapes: what the registered records were judged with, though
    #                                   the app's previews now draw with 15)
    sample_batch: int = 16
    workers: int = 1

    def key(self) -> str:
        """What one pair's numbers depend on: not which subjects and seeds run beside it (so that
        runs of different subsets, on different days or machines, add up to one experiment)."""
        skip = ("workers", "sample_batch", "subjects", "seeds")
        data = {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


# The training recipe the experiment was registered and first run with (the shapes preset's on
# 2026-12-01: LoRA lr 5e-4, no prior preservation). Pinned, so that every pair of one experiment
# trains alike although the preset's recipe has moved on (prior preservation and lr 1e-3 since).
REGISTERED_TRAIN = {"lr": 5e-4, "prior": False}  # pinned: registered (see above)
APP_RECIPE_TRAIN = {"lr": 1e-3, "prior": True}    # pinned: registered (PREREGISTRATION_APP_RECIPE)

PLANS = {
    "cpu": Plan(train=dict(REGISTERED_TRAIN)),
    "cpu-app-recipe": Plan(train=dict(APP_RECIPE_TRAIN), arms=[a for a in REGISTERED if a != "prior"]),
    # the code path only: every arm, two checkpoints, a few items; pivotal off (its per-run setup
    # and teardown would be most of the time)
    "quick": Plan(subjects=["dot_star"], seeds=[0], checkpoints=[2, 4], m=2, k=16, draws=2, pool_size=1000,
                  eval_photos=6, eval_draws=2, drift_items=6, samples=1, num_prompts=1, sample_batch=8,
                  sample_steps=3, train={"pivotal": False, "prior": False}),
    "gpu": Plan(train=dict(REGISTERED_TRAIN), seeds=[0, 1, 2, 3, 4], checkpoints=[25, 50, 100, 200, 400], m=100, k=1000, eval_draws=8,
                checkpoint_samples=4, sample_batch=256, workers=12),
}


@dataclass(frozen=True)
class Mode:
    """How one plan shows outside its numbers: the flag that runs it, the docs section its report
    rewrites and the plot it draws. Kept apart from Plan, whose fields make the records' key."""
    flag: str
    section: str = "experiment"
    title: str = "ALBAT: the pre-registered experiment"
    plot: str = "albat_frontier.png"
    registration: str = ""  # added below PREREGISTRATION in the report


MODES = {
    "cpu": Mode(flag=""),
    "cpu-app-recipe": Mode(flag=" --app-recipe", section="experiment-app-recipe",
                           title="ALBAT: the pre-registered experiment at the app's recipe",
                           plot="albat_frontier_app_recipe.png", registration=PREREGISTRATION_APP_RECIPE),
    "quick": Mode(flag=" --quick"),
    "gpu": Mode(flag=" --gpu"),
}


# --- one (subject, seed): select and train every arm, probing at the checkpoints ----------

def fresh_photos(subject, seen_backgrounds: set[str], n: int):
    """Examples of the subject on backgrounds outside ``seen_backgrounds``: every position, two
    scales, interleaved so that any prefix spreads over backgrounds and positions."""
    from bat_app.shapes.world import COLOURS, POSITIONS, is_pretraining, render
    from bat_app.train.data import Example

    backgrounds = [c for c in COLOURS if c not in seen_backgrounds | {subject.attributes["colour"]}]
    combos = [(p, b, s) for s in (0.93, 1.07) for i, p in enumerate(POSITIONS)
              for b in backgrounds[i % len(backgrounds):] + backgrounds[:i % len(backgrounds)]]
    out = []
    for position, background, scale in combos[:n]:
        attributes = subject.photo_attributes(position, background, scale)
        assert not is_pretraining(attributes)
        out.append(Example(render(attributes, 64), ""))
    if len(out) < n:
        raise SystemExit(f"only {len(out)} fresh photos of {subject.name} exist; ask for fewer")
    return out


def trigger_expander(components, token: str):
    """Prompt -> prompt with a pivotal trigger's extra tokens ("sks" -> "sks sks_1") while they
    are in the tokenizer (pivotal tuning adds them for the run); the identity otherwise."""
    def expand(text: str) -> str:
        added = components.tokenizer.get_added_vocab()
        extra = [f"{token}_{i}" for i in range(1, 65) if f"{token}_{i}" in added]
        return " ".join(" ".join([w, *extra]) if w == token else w for w in text.split(" ")) if extra else text
    return expand


class Probes:
    """The pre-registered measurements, taken on the UNet as it is at a checkpoint."""

    def __init__(self, comps, subject, config, pool, plan: Plan, photos_meta, cache):
        from bat_app.albat.evaluation import FixedDrawLoss
        from bat_app.train.data import Example

        res = comps.spec.resolution
        seen = {p["background"] for p in photos_meta}
        fresh = [replace(e, caption=config.prompt) for e in fresh_photos(subject, seen, plan.eval_photos)]
        self.subject = FixedDrawLoss(comps, fresh, res, draws=plan.eval_draws, seed=EVAL_SEED, cache_root=cache)
        ids = np.random.default_rng(DRIFT_SEED).choice(len(pool), min(plan.drift_items, len(pool)), replace=False)
        items = [Example(pool.load_image(int(i)), pool.item(int(i)).caption) for i in ids]
        self.drift = FixedDrawLoss(comps, items, res, draws=plan.eval_draws, seed=DRIFT_SEED, cache_root=cache)
        self.expand = trigger_expander(comps, config.token)
        self.base = {"subject_loss": float(self.subject().mean()), "pool_loss": self.drift()}

    def __call__(self) -> dict:
        drift = self.drift(self.expand) - self.base["pool_loss"]
        return {"subject_loss": float(self.subject(self.expand).mean()), "drift": float(drift.mean())}


def sample_now(comps, prompts: list[str], seeds: list[int], expand, batch: int, steps: int | None = None):
    """images[p][s] from the UNet/text encoder as they are now (the training adapter active)."""
    import torch

    from bat_app.albat.evaluation import _autocast
    from bat_app.models import build_pipeline

    pipe, spec = build_pipeline(comps), comps.spec
    modes = (comps.denoiser.training, comps.text_encoder.training)
    comps.denoiser.eval(), comps.text_encoder.eval()
    jobs = [(p, s) for p in range(len(prompts)) for s in range(len(seeds))]
    out = [[None] * len(seeds) for _ in prompts]
    try:
        for lo in range(0, len(jobs), batch):
            chunk = jobs[lo:lo + batch]
            with torch.no_grad(), _autocast(comps):
                images = pipe([expand(prompts[p]) for p, _ in chunk], height=spec.resolution, width=spec.resolution,
                              num_inference_steps=steps or spec.training_sampling().get("steps", 30),
                              guidance_scale=spec.sampling.get("guidance_scale", 7.5),
                              generator=[torch.Generator().manual_seed(seeds[s]) for _, s in chunk]).images
            for (p, s), image in zip(chunk, images):
                out[p][s] = image
    finally:
        comps.denoiser.train(modes[0]), comps.text_encoder.train(modes[1])
    return out


class ScoreMemo:
    """Wraps a Score so the albat-family arms of one pair score the shortlist once."""

    def __init__(self, inner):
        self.inner, self.name, self.memo = inner, inner.name, {}

    def __call__(self, ctx, examples, surrogate):
        p = ctx.params
        key = (tuple(e.key for e in examples), p.draws, p.score_seed, p.standardise, p.batch_size, p.race,
               p.m, p.negative_fraction)
        if key not in self.memo:
            self.memo[key] = self.inner(ctx, examples, surrogate)
        return self.memo[key]


def train_config(plan: Plan, subject, seed: int):
    from bat_app.train import TrainConfig

    settings = dict(token="sks", class_noun=subject.class_noun, seed=seed, steps=plan.checkpoints[-1],
                    checkpoint_every=0, **plan.train)
    return TrainConfig.for_model("shapes", plan.shots, **settings)  # the preset's recipe, then the plan's


def run_pair(plan: Plan, name: str, seed: int, work: Path, records: Path) -> dict:
    """Every arm of one (subject, training seed); its record is kept in ``records``."""
    import torch

    from bat_app.albat import AlbatSelector, SelectionContext, SelectionParams, get_score, get_selector
    from bat_app.pool import embedder_for_pool
    from bat_app.compare.pools import shapes_pool_dir
    from bat_app.images import load_user_images
    from bat_app.metrics import compute_metrics
    from bat_app.models import load_components
    from bat_app.paths import assets_dir
    from bat_app.pool import Pool
    from bat_app.preview import load_prompt_set
    from bat_app.shapes import get_subject, load_attribute_classifier
    from bat_app.train import train_lora

    out_file = records / f"{name}-s{seed}.json"
    if out_file.is_file() and json.loads(out_file.read_text()).get("plan") == plan.key():
        return json.loads(out_file.read_text())
    # parallel workers share the machine's cores instead of each taking all of them
    default_threads = max(1, (os.cpu_count() or 1) // plan.workers) if plan.workers > 1 else torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("BAT_TORCH_THREADS", default_threads)))
    cache = work / "cache"
    comps = load_components("shapes")
    pool = Pool.open(shapes_pool_dir(plan.pool_size))
    embedder = embedder_for_pool(pool)
    subject = get_subject(name)
    folder = assets_dir() / "subjects" / name
    photos_meta = json.loads((folder / "subject.json").read_text())["photos"][:plan.shots]
    images = load_user_images([folder / p["file"] for p in photos_meta]).images
    config = train_config(plan, subject, seed)
    probes = Probes(comps, subject, config, pool, plan, photos_meta, cache)
    prompt_set = load_prompt_set("shapes")
    prompts = prompt_set.prompts(config.token, config.class_noun, limit=plan.num_prompts)
    prompts.append(("class", prompt_set.class_text(config.class_noun)))
    score = ScoreMemo(get_score("loss_reduction"))
    classifier = load_attribute_classifier()
    pair_started = time.perf_counter()
    record = {"plan": plan.key(), "subject": name, "seed": seed, "config": config.to_dict(), "base": {
        "subject_loss": probes.base["subject_loss"]}, "arms": {}}
    count = plan.m
    albat_cost = albat_step_s = None
    for arm in [a for a in ARMS if a in plan.arms]:
        method, overrides = ARMS[arm]
        params = SelectionParams(**{"m": plan.m if arm == "albat" else count, "k": plan.k, "seed": seed,
                                    **({"draws": plan.draws} if plan.draws else {}), **overrides})
        ctx = SelectionContext(comps, images, config, pool, embedder, params, cache_root=cache)
        t = time.perf_counter()
        selector = AlbatSelector(score=score if params.score == "loss_reduction" else None) \
            if method == "albat" else get_selector(method)
        selection = selector.select(ctx)
        selection.pool = pool
        select_s = time.perf_counter() - t
        if arm == "albat":
            count, albat_cost = max(1, len(selection)), select_s
        arm_config, shift = config, 0
        if arm == "none_eq":
            shift = math.ceil(albat_cost / albat_step_s) if albat_cost and albat_step_s else 0
            arm_config = replace(config, batch_size=2 * config.batch_size, steps=config.steps + shift)
        wanted = {c + shift: c for c in plan.checkpoints}
        curve, probe_s = [], [0.0]

        def on_progress(event, wanted=wanted, curve=curve, probe_s=probe_s):
            if event.stage != "train" or event.step not in wanted:
                return
            t0 = time.perf_counter()
            point = {"step": event.step, "nominal_step": wanted[event.step], **probes()}
            last = event.step == max(wanted)
            n_samples = plan.samples if last else plan.checkpoint_samples
            if n_samples:
                columns = sample_now(comps, [p for _, p in prompts], list(range(n_samples)), probes.expand,
                                     plan.sample_batch, plan.sample_steps)
                point["samples"] = compute_metrics({arm: columns}, prompts, [u.image for u in images], embedder,
                                                   config.token, config.class_noun, subject=subject,
                                                   classifier=classifier)["methods"][arm]
            curve.append(point)
            probe_s[0] += time.perf_counter() - t0

        result = train_lora(comps, images, arm_config, work / "tmp" / f"{name}-s{seed}-{arm}",
                            augment=selection.examples(), progress=on_progress, cache_root=cache, export=False)
        train_s = result.seconds - probe_s[0]
        if arm == "albat":
            albat_step_s = train_s / arm_config.steps
        record["arms"][arm] = {"items": len(selection), "select_s": select_s, "train_s": train_s,
                               "extra_steps": shift, "curve": curve, "selection_stats": selection.stats}
        print(json.dumps({"subject": name, "seed": seed, "arm": arm, "items": len(selection),
                          "select_s": round(select_s, 1), "train_s": round(train_s, 1),
                          "subject_loss": [round(p["subject_loss"], 5) for p in curve]}), flush=True)
    record.update(wall_s=time.perf_counter() - pair_started, threads=torch.get_num_threads(),
                  load=os.getloadavg()[0] if hasattr(os, "getloadavg") else None, date=time.strftime("%Y-%m-%d"))
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(json.dumps(record, indent=1, default=float))
    return record


def _pair_worker(args):
    return run_pair(*args)


def recorded_pairs(plan: Plan, records: Path) -> list[dict]:
    """Every finished pair of this plan in ``records`` (from this run or earlier ones), in the
    plan's order."""
    found = []
    for seed in plan.seeds:
        for name in plan.subjects:
            path = records / f"{name}-s{seed}.json"
            if path.is_file() and (record := json.loads(path.read_text())).get("plan") == plan.key():
                found.append(record)
    return found


# --- statistics and the report ------------------------------------------------------------

def report(records: list[dict], plan: Plan, mode: str, plot: Path, doc: Path, seconds: float,
           new_pairs: int) -> str:
    arms = [a for a in ARMS if a in plan.arms]
    s = summarise(records, arms, comparisons(arms))
    cost = {a: (np.mean([r["arms"][a]["select_s"] for r in records]), np.mean([r["arms"][a]["train_s"] for r in records]))
            for a in arms}
    items = {a: np.mean([r["arms"][a]["items"] for r in records]) for a in arms}
    planned = len(plan.subjects) * len(plan.seeds)
    walls = [r["wall_s"] / 60 for r in records if "wall_s" in r]
    names = [f"{r['subject']} s{r['seed']}" for r in records]
    per_pair = f"; {np.mean(walls):.0f} min per pair" if walls else ""
    lines = [f"Generated by `python scripts/bench_albat.py run{MODES[mode].flag}` on "
             f"{time.strftime('%Y-%m-%d')} ({platform.node() or 'host'}, {_device()}), this run {seconds / 60:.1f} min, "
             f"{new_pairs} new pair(s); "
             f"**{len(records)} of {planned} planned pairs finished** "
             f"({', '.join(names)}{per_pair}); plan "
             f"{plan.key()}: subjects {', '.join(plan.subjects)}; training seeds {plan.seeds}; checkpoints "
             f"{plan.checkpoints}; m = {plan.m}, K = {plan.k}, R = {plan.draws or 'default'}; {plan.eval_photos} "
             f"fresh photos x {plan.eval_draws} draws; drift on {plan.drift_items} pool items; {plan.samples} samples "
             f"per prompt at the end; pool {plan.pool_size}; training: the shapes recipe with {plan.train} "
             f"(pinned); backbone {_backbone_id()}.", ""]
    if mode == "quick":
        lines += ["**Smoke test (--quick): these numbers are not results.**", ""]
    registration = "\n\n".join(r.rstrip() for r in (PREREGISTRATION, MODES[mode].registration) if r)
    lines += ["<details><summary>Pre-registration</summary>", "", "```", registration, "```", "",
              "</details>", "", f"### Per arm (mean{' [95% bootstrap CI]' if s['pairs'] >= MIN_PAIRS_FOR_CI else ''} over {s['pairs']} "
              f"(subject, seed) pairs{'' if s['pairs'] >= MIN_PAIRS_FOR_CI else f'; intervals from {MIN_PAIRS_FOR_CI} pairs on'})",
              "",
              "| arm | items | subject loss min ↓ | subject loss area ↓ | drift (last) ↓ | subject fidelity ↑ | "
              "prompt fidelity ↑ | selection s | training s |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    def show(ci, digits=4):
        return fmt_ci(ci, digits) if s["pairs"] >= MIN_PAIRS_FOR_CI else "—" if math.isnan(ci[0]) else f"{ci[0]:.{digits}f}"

    nan = (float("nan"),) * 3
    for a in arms:
        m = s["per_arm"][a]
        lines.append(f"| {a} | {items[a]:.0f} | {show(m.get('subject_loss_min', nan))} | "
                     f"{show(m.get('subject_loss_area', nan))} | {show(m.get('drift_last', nan))} | "
                     f"{show(m.get('subject_fidelity', nan), 3)} | {show(m.get('prompt_fidelity', nan), 3)} | "
                     f"{cost[a][0]:.1f} | {cost[a][1]:.1f} |")
    lines += ["", "### Paired differences (a − b; loss and drift: negative = a better)", "",
              "| a − b | metric | n | mean [95% CI] | CI excludes 0 |", "|---|---|---:|---:|---|"]
    for d in s["diffs"]:
        mean, lo, hi = d["ci"]
        if d["n"] < MIN_PAIRS_FOR_CI:  # a bootstrap over 2-4 pairs has a handful of possible means
            lines.append(f"| {d['a']} − {d['b']} | {d['metric']} | {d['n']} | {mean:.4f} (no interval below "
                         f"{MIN_PAIRS_FOR_CI} pairs) | — |")
            continue
        excludes = "yes" if (lo > 0 or hi < 0) else "no"
        lines.append(f"| {d['a']} − {d['b']} | {d['metric']} | {d['n']} | {fmt_ci(d['ci'], 4)} | {excludes} |")
    try:
        rel = plot.resolve().relative_to(doc.resolve().parent)
    except ValueError:
        rel = plot
    lines += ["", f"![frontier]({rel})", ""]
    return "\n".join(lines)


def comparisons(arms: list[str]) -> list[tuple[str, str]]:
    """The registered comparisons, then each variant against plain albat and the shortlist arm."""
    return COMPARISONS + [(v, ref) for v in VARIANTS if v in arms for ref in ("albat", "shortlist")]


def _device() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"


def _backbone_id() -> str:
    from bat_app.paths import assets_dir

    weights = sorted((assets_dir() / "shapes" / "backbone" / "unet").glob("*.safetensors"))
    if not weights:
        return "missing"
    return "unet sha256 " + hashlib.sha256(weights[0].read_bytes()).hexdigest()[:12]


# --- commands -----------------------------------------------------------------------------

def cmd_run(args) -> None:
    from bat_app.compare.pools import ensure_shapes_pool

    mode = "quick" if args.quick else "gpu" if args.gpu else "cpu-app-recipe" if args.app_recipe else "cpu"
    plan = PLANS[mode]
    if args.arms:
        plan = replace(plan, arms=args.arms.split(","))
    if args.workers:
        plan = replace(plan, workers=args.workers)
    unknown = [a for a in plan.arms if a not in ARMS]
    if unknown:
        raise SystemExit(f"unknown arm(s) {unknown}; known: {', '.join(ARMS)}")
    if "none_eq" in plan.arms and "albat" not in plan.arms:
        raise SystemExit("none_eq needs the albat arm (its selection cost sets the extra steps)")
    # --subjects/--seeds choose which pairs run now; the report covers every recorded pair of the plan
    subjects = args.subjects.split(",") if args.subjects else plan.subjects
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else plan.seeds
    plan = replace(plan, subjects=list(dict.fromkeys(plan.subjects + subjects)),
                   seeds=list(dict.fromkeys(plan.seeds + seeds)))
    work = args.work or Path(f"/tmp/bat-bench-albat-{mode}")
    # the records of the real plans live in the repo, so that runs on different days add up
    records = args.records or (work / "runs" if mode == "quick" else Path("docs/bench-albat") / mode)
    doc = args.doc or (work / "benchmarks.md" if mode == "quick" else Path("docs/benchmarks.md"))
    plot = args.plot or (work if mode == "quick" else Path("docs")) / MODES[mode].plot
    started = time.perf_counter()
    recorded_before = len(recorded_pairs(plan, records))
    ensure_shapes_pool(plan.pool_size)
    # seed-major: an interrupted run has covered every subject once before any twice
    jobs = [(plan, name, seed, work, records) for seed in seeds for name in subjects]
    def time_is_up() -> bool:
        if args.stop_after is None or time.perf_counter() - started < 60 * args.stop_after:
            return False
        print(f"stopping: {args.stop_after} minutes have passed; the next run continues from here", flush=True)
        return True

    if plan.workers > 1:
        import multiprocessing as mp
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        # a new pair starts only when a worker is free and time is left (--stop-after)
        with ProcessPoolExecutor(plan.workers, mp_context=mp.get_context("spawn")) as ex:
            pending, queue = set(), list(jobs)
            while queue or pending:
                while queue and len(pending) < plan.workers:
                    if time_is_up():
                        queue.clear()
                        break
                    pending.add(ex.submit(_pair_worker, queue.pop(0)))
                if not pending:
                    break
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    future.result()  # a failed pair fails the run, as without workers
    else:
        for job in jobs:
            if time_is_up():
                break
            _pair_worker(job)
    done = recorded_pairs(plan, records)
    if not done:
        raise SystemExit(f"no finished pair in {records}")
    arms = [a for a in ARMS if a in plan.arms]
    frontier(done, arms, plot)
    body = report(done, plan, mode, plot, doc, time.perf_counter() - started, len(done) - recorded_before)
    write_section(doc, MODES[mode].section, MODES[mode].title, body)
    (work / "summary.json").parent.mkdir(parents=True, exist_ok=True)
    (work / "summary.json").write_text(json.dumps(summarise(done, arms, comparisons(arms)), indent=1, default=float))
    print(body)


def cmd_stability(args) -> None:
    """Score the same K candidates with two score seeds; R vs rank correlation and top-m Jaccard."""
    import torch

    from bat_app.albat.albat import rank_and_pick
    from bat_app.albat.retrieval import nearest_items, user_embeddings
    from bat_app.pool import embedder_for_pool
    from bat_app.albat.score import loss_matrix
    from bat_app.albat.stability import aggregate, jaccard, pair_stability, stability_curve
    from bat_app.albat.surrogate import train_surrogate
    from bat_app.compare.pools import ensure_shapes_pool
    from bat_app.images import load_user_images
    from bat_app.models import load_components
    from bat_app.paths import assets_dir
    from bat_app.pool import Pool
    from bat_app.shapes import get_subject
    from bat_app.train.data import Example

    torch.set_num_threads(int(os.environ.get("BAT_TORCH_THREADS", torch.get_num_threads())))
    started = time.perf_counter()
    pool = Pool.open(ensure_shapes_pool(args.pool_size))
    embedder, comps = embedder_for_pool(pool), load_components("shapes")
    cache = args.work / "cache"
    args.work.mkdir(parents=True, exist_ok=True)
    draws = [r for r in (1, 2, 4, 8, 16, 32, 64) if r <= args.rmax and args.rmax % r == 0]
    rows, legacy, selected = [], [], []
    for name in args.subjects.split(","):
        subject = get_subject(name)
        photos = sorted((assets_dir() / "subjects" / name).glob("*.png"))[:3]
        images = load_user_images(photos).images
        config = train_config(PLANS["cpu"], subject, 0)
        surrogate = train_surrogate(comps, images, config, args.surrogate_steps, cache)
        ids, _ = nearest_items(pool, user_embeddings(embedder, images), args.k)
        examples = [Example(pool.load_image(i), pool.item(i).caption) for i in ids]
        run = lambda seed, r, independent=False: loss_matrix(comps, examples, comps.spec.resolution, surrogate,
                                                             config, draws=r, seed=seed, independent=independent,
                                                             cache_root=cache)[0]
        a, b = run(0, args.rmax), run(1, args.rmax)
        for standardise in (True, False):
            rows += [{"subject": name, **row} for row in stability_curve(a, b, draws, args.m, standardise=standardise)]
        if args.legacy:
            la, lb = run(100, args.legacy, True), run(101, args.legacy, True)
            legacy.append({"subject": name, "draws": args.legacy, **pair_stability(la.mean(0), lb.mean(0), args.m)})
        np.savez(args.work / f"matrices-{name}.npz", a=a, b=b, ids=np.asarray(ids))  # for re-analysis
        emb = pool.embeddings()
        for standardise in (True, False):
            pick = lambda mat: rank_and_pick(ids, aggregate(mat, standardise), emb, args.m, 0.95)[0]
            selected.append({"subject": name, "draws": args.rmax, "standardise": standardise,
                             "jaccard": jaccard(pick(a), pick(b)), "selected": [len(pick(a)), len(pick(b))],
                             "positive": float((aggregate(a, standardise) > 0).mean())})
        print(json.dumps(rows[-1]), flush=True)
    seconds = time.perf_counter() - started
    lines = [f"Generated by `python scripts/bench_albat.py stability --subjects {args.subjects} --k {args.k} --m "
             f"{args.m} --rmax {args.rmax} --pool-size {args.pool_size} --surrogate-steps {args.surrogate_steps}` on "
             f"{time.strftime('%Y-%m-%d')} ({_device()}, {seconds:.0f} s); backbone {_backbone_id()}; recipe lr "
             f"{config.lr}, rank {config.rank}, pivotal {getattr(config, 'pivotal', False)}. Two score seeds "
             f"score the same K = {args.k} CLIP-shortlisted candidates; every R below {args.rmax} is an R-draw "
             f"stratified subset of the R_max draws (bat_app/albat/stability.py; mean [min, max] over 20 picks).", "",
             "| subject | R | per-stratum standardised | rank correlation | top-m Jaccard |", "|---|---:|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['subject']} | {r['draws']} | {'yes' if r['standardise'] else 'no'} | {r['rank_corr']:.3f} "
                     f"[{r['rank_corr_range'][0]:.2f}, {r['rank_corr_range'][1]:.2f}] | {r['jaccard']:.3f} "
                     f"[{r['jaccard_range'][0]:.2f}, {r['jaccard_range'][1]:.2f}] |")
    if legacy:
        lines += ["", "Former scheme (every candidate its own unstratified draws), for reference:", "",
                  "| subject | R | rank correlation | top-m Jaccard |", "|---|---:|---:|---:|"]
        lines += [f"| {r['subject']} | {r['draws']} | {r['rank_corr']:.3f} | {r['jaccard']:.3f} |" for r in legacy]
    lines += ["", f"Selected sets (score > 0, de-duplicated, top m = {args.m}) at R = {args.rmax}, seed 0 vs 1:", "",
              "| subject | standardised | Jaccard | items selected (seed 0, 1) | share of candidates with score > 0 |",
              "|---|---|---:|---:|---:|"]
    lines += [f"| {r['subject']} | {'yes' if r['standardise'] else 'no'} | {r['jaccard']:.3f} | "
              f"{r['selected'][0]}, {r['selected'][1]} | {r['positive']:.2f} |" for r in selected]
    body = "\n".join(lines)
    write_section(args.doc, "stability", "ALBAT: stability of the score across score seeds", body)
    (args.work / "stability.json").parent.mkdir(parents=True, exist_ok=True)
    (args.work / "stability.json").write_text(json.dumps({"rows": rows, "legacy": legacy, "selected": selected},
                                                         indent=1))
    print(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="the pre-registered experiment")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="tiny smoke test (1 subject, 1 seed, few steps)")
    size.add_argument("--gpu", action="store_true", help="the GPU plan: 5 seeds, 400 steps, m = 100")
    size.add_argument("--app-recipe", action="store_true", help="the CPU plan at the app's recipe (lr 1e-3, "
                      "prior preservation): its own records, section and plot")
    p.add_argument("--subjects", help="comma-separated subjects to run now (default: the plan's)")
    p.add_argument("--seeds", help="comma-separated training seeds")
    p.add_argument("--arms", help=f"comma-separated arms (default: the registered {','.join(REGISTERED)}; "
                                  f"variants: {','.join(VARIANTS)})")
    p.add_argument("--workers", type=int, help="parallel (subject, seed) processes")
    p.add_argument("--work", type=Path, help="work folder (default /tmp/bat-bench-albat-<mode>)")
    p.add_argument("--records", type=Path, help="folder of the per-pair records (default docs/bench-albat/<mode>; "
                                                "--quick: <work>/runs)")
    p.add_argument("--stop-after", type=float, help="start no new pair after this many minutes")
    p.add_argument("--doc", type=Path, help="markdown file whose bench_albat section is rewritten")
    p.add_argument("--plot", type=Path, help="frontier PNG")
    p.set_defaults(func=cmd_run)
    s = sub.add_parser("stability", help="score seed vs R: rank correlation and top-m Jaccard")
    s.add_argument("--subjects", default="dot_star,striped_heart")
    s.add_argument("--k", type=int, default=150)
    s.add_argument("--m", type=int, default=15)
    s.add_argument("--rmax", type=int, default=8, help="draws per seed; every R dividing it is measured")
    s.add_argument("--legacy", type=int, default=4, help="R of the former independent-draw scheme (0: skip)")
    s.add_argument("--pool-size", type=int, default=2000)
    s.add_argument("--surrogate-steps", type=int, default=50)
    s.add_argument("--work", type=Path, default=Path("/tmp/bat-bench-albat-stability"))
    s.add_argument("--doc", type=Path, default=Path("docs/benchmarks.md"))
    s.set_defaults(func=cmd_stability)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
