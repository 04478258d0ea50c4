"""Does a LoRA learn a shapes subject? The per-subject measurement behind the preset's recipe.

For one held-out subject: train on its first ``n_images`` example uploads with a given
``TrainConfig``, then sample through the product's own preview path (``sample_images``: the
diffusers LoRA file and, with pivotal tuning, the trigger's embedding file) and judge every
sample with the attribute classifier:

    subject     "a photo of sks <class>": share of samples showing the trait (target >= 80%)
    recontext   "a photo of sks <class> on a <bg> background" for backgrounds the photos never
                had, and "... <position>": share with the asked background / position right
                (prompt fidelity, target >= 70%; also per half) and with the trait
    class       "a photo of <class>" (no trigger): how many distinct object colours the samples
                show, with and without the LoRA (the class keeps its variety), and how many
                carry the subject's trait (leakage)

Each figure is also measured on the base model with the same prompts and seeds.

    from bat_app.shapes.personalization import measure_subject
    row = measure_subject("checkered_square", TrainConfig(...), n_images=3, samples=16, work=Path("/tmp/w"))
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from bat_app.shapes.paths import shapes_paths
from bat_app.shapes.subjects import get_subject, photo_caption
from bat_app.shapes.world import COLOURS, POSITION_PHRASES

RECONTEXT_POSITIONS = ("left", "right", "top")
_BASE_SAMPLES: dict = {}  # (components, prompts, samples) -> base-model samples, per process


def recontext_prompts(subject, photo_backgrounds: list[str], token: str = "sks", n_backgrounds: int = 3):
    """(prompt, wanted attributes) with backgrounds the training photos never showed."""
    skip = set(photo_backgrounds) | {subject.attributes["colour"]}
    backgrounds = [c for c in COLOURS if c not in skip][:n_backgrounds]
    base = f"a photo of {token} {subject.class_noun}"
    out = [(f"{base} on a {bg} background", {"background": bg}) for bg in backgrounds]
    out += [(f"{base} {POSITION_PHRASES[p]}", {"position": p}) for p in RECONTEXT_POSITIONS]
    return out


def _arrays(images) -> np.ndarray:
    return np.stack([np.asarray(im.convert("RGB")) for im in images])


def _judge(classifier, images, subject, wanted: dict | None = None) -> dict:
    pred = classifier.predict(_arrays(images))
    trait = [all(p[k] == v for k, v in subject.trait.items()) for p in pred]
    out = {"trait": float(np.mean(trait)), "class": float(np.mean([p["shape"] == subject.class_noun for p in pred]))}
    if wanted is not None:
        out["fidelity"] = float(np.mean([all(p[k] == v for k, v in wanted.items()) for p in pred]))
    out["colours"] = len({p["colour"] for p in pred})
    return out


def sample_rows(components, prompts: list[str], samples: int, lora_dir=None, lora_scale: float = 1.0,
                guidance: float | None = None, lora_start: float = 0.0, first_seed: int = 0) -> list[list]:
    from bat_app.preview import sample_images

    seeds = list(range(first_seed, first_seed + samples))
    return sample_images(components, prompts, seeds, lora_dir, batch_size=32,
                         lora_scale=lora_scale, guidance_scale=guidance, lora_start=lora_start)


def context_caption(subject, photo: dict, token: str = "sks") -> str:
    """What training makes of an example photo's shipped caption: the instance prompt, then the
    photo's position and background in the wording of the recontext prompts."""
    return f"a photo of {token} {subject.class_noun} {photo_caption(photo['position'], photo['background'])}"


def subject_photos_used(name: str, n_images: int) -> list[dict]:
    """The first ``n_images`` example uploads of subject ``name``: file, position, background."""
    import json

    meta = json.loads((shapes_paths().subjects / name / "subject.json").read_text())
    return meta["photos"][:n_images]


def measure_subject(name: str, config, n_images: int = 3, samples: int = 16, work: Path | None = None,
                    components=None, classifier=None, method: str = "none", pool_dir: Path | None = None,
                    selection: dict | None = None, photo_folder: Path | None = None) -> dict:
    """Train one LoRA for subject ``name`` and measure it against the base model (see module doc).

    ``method`` is a selector (``bat_app.albat``): its backbone items from the pool in ``pool_dir``
    are mixed into the training as the product does, with the recipe's k and m for ``n_images``
    (and ``selection``'s SelectionParams settings on top). ``photo_folder``: the training photos
    are every .png there instead (copies with .txt captions for ``config.captions``).
    """
    import tempfile

    from bat_app.albat import SelectionParams
    from bat_app.albat.run import run_selection, train_with_selection
    from bat_app.images import load_user_images
    from bat_app.models import load_components
    from bat_app.models.recipe import recipe_for

    components = components or load_components("shapes")
    photos = subject_photos_used(name, n_images)
    files = (sorted(photo_folder.glob("*.png")) if photo_folder is not None
             else [shapes_paths().subjects / name / p["file"] for p in photos])
    report = load_user_images(files, resolution=components.spec.resolution)
    work = Path(work or tempfile.mkdtemp(prefix="bat-personalize-"))
    t0 = time.perf_counter()
    params = SelectionParams(seed=config.seed, **{**recipe_for("shapes").selection_settings(n_images),
                                                  **(selection or {})})
    selection = run_selection(method, components, report.images, config, pool_dir=pool_dir, params=params)
    select_seconds = time.perf_counter() - t0
    result = train_with_selection(components, report.images, config, selection, work / name)
    row = measure_lora(name, result.out_dir, n_images, samples, config.token, components, classifier)
    row.update(method=method, selected=len(selection.rows), select_seconds=round(select_seconds, 1),
               train_seconds=round(time.perf_counter() - t0 - select_seconds, 1), steps=config.steps)
    return row


def measure_lora(name: str, lora_dir: Path, n_images: int = 3, samples: int = 16, token: str = "sks",
                 components=None, classifier=None, lora_scale: float = 1.0, guidance: float | None = None,
                 lora_start: float = 0.0, first_seed: int = 0) -> dict:
    """Sample a trained LoRA folder (and the base model) and judge the samples (see module doc).
    ``lora_scale``, ``lora_start`` and ``guidance`` change how they are sampled (default: the
    preset's; the first two only touch the LoRA's samples); ``first_seed`` moves the samples'
    seeds (default 0..samples-1) to judge the same LoRA on other draws."""
    from bat_app.models import load_components
    from bat_app.shapes import load_attribute_classifier

    subject = get_subject(name)
    photos = subject_photos_used(name, n_images)
    components = components or load_components("shapes")
    classifier = classifier or load_attribute_classifier()
    subject_prompt = f"a photo of {token} {subject.class_noun}"
    class_prompt = f"a photo of {subject.class_noun}"
    recontext = recontext_prompts(subject, [p["background"] for p in photos], token)
    prompts = [subject_prompt, class_prompt] + [p for p, _ in recontext]
    row = {"subject": name, "trait_wanted": subject.trait, "photos": n_images, "samples": samples}
    grids = {}
    for label, lora in (("base", None), ("lora", lora_dir)):
        key = (id(components), tuple(prompts), samples, guidance, first_seed)
        if lora is None and key in _BASE_SAMPLES:  # the base model's samples do not change
            images = _BASE_SAMPLES[key]
        else:
            images = sample_rows(components, prompts, samples, lora, lora_scale, guidance, lora_start, first_seed)
            if lora is None:
                _BASE_SAMPLES[key] = images
        grids[label] = images
        subj = _judge(classifier, images[0], subject)
        cls = _judge(classifier, images[1], subject)
        rc = [_judge(classifier, images[2 + i], subject, wanted) for i, (_, wanted) in enumerate(recontext)]
        row[label] = {"trait": round(subj["trait"], 3), "class": round(subj["class"], 3),
                      "recontext_fidelity": round(float(np.mean([r["fidelity"] for r in rc])), 3),
                      "recontext_trait": round(float(np.mean([r["trait"] for r in rc])), 3),
                      # which half misses: new backgrounds, or positions
                      **{f"recontext_{kind}_fidelity": round(float(np.mean(
                          [r["fidelity"] for r, (_, wanted) in zip(rc, recontext) if kind in wanted])), 3)
                         for kind in ("background", "position")},
                      "class_prompt_colours": cls["colours"], "class_prompt_trait": round(cls["trait"], 3)}
    row["prompts"] = prompts
    row["_grids"] = grids
    return row


def grid_image(row: dict, cell: int = 40, per_row: int = 8):
    """Base and LoRA rows for each prompt (first ``per_row`` seeds), labelled: a picture to look at."""
    from bat_app.images.grid import image_grid

    strips, titles = [], []
    for i, prompt in enumerate(row["prompts"]):
        for label in ("base", "lora"):
            strips.extend(row["_grids"][label][i][:per_row])
            titles.append(f"{label}: {prompt}")
    return image_grid(strips, columns=per_row, cell=cell, row_titles=titles, title_width=330, pad=2)


PICTURE_SEEDS = (0, 1)  # the app's preview seeds (ui.settings.AppSettings.seeds): what the user sees


def asked_attributes(prompt: str, class_noun: str) -> dict:
    """What a preview prompt asks the judge can read: a background colour, a position, a size.

    >>> asked_attributes("a sks star on a blue background", "star"), asked_attributes("a small sks star", "star")
    ({'background': 'blue'}, {'size': 'small'})
    """
    from bat_app.shapes.world import SIZES

    asked = {}
    for colour in COLOURS:
        if f"on a {colour} background" in prompt:
            asked["background"] = colour
    for position, phrase in POSITION_PHRASES.items():
        if prompt.endswith(phrase):
            asked["position"] = position
    for size in SIZES:
        if f"a {size} " in prompt.split(class_noun)[0]:
            asked["size"] = size
    return asked


def judge_picture(components, classifier, name: str, folders: dict, token: str = "sks",
                  seeds=PICTURE_SEEDS) -> dict[int, dict]:
    """step -> the judge's reading of the app's steps picture (``compare.steps``) for subject
    ``name``: each LoRA folder sampled on the shapes preview prompts at the preview seeds, as the
    app draws it, then

        trait     share of the samples of every prompt with the trigger that show the trait
        fidelity  share of the samples of prompts asking a background, position or size that
                  show it
        score     trait + fidelity

    The judge stands in for a user's eye: what a pick from the picture alone can be worth."""
    from bat_app.preview import load_prompt_set, sample_images

    subject = get_subject(name)
    pairs = load_prompt_set("shapes").prompts(token, subject.class_noun)
    prompts = [p for _, p in pairs]
    wanted = [asked_attributes(p, subject.class_noun) for p in prompts]
    out = {}
    for step, folder in sorted(folders.items()):
        rows = sample_images(components, prompts, list(seeds), folder)
        judged = [_judge(classifier, row, subject, want or None) for row, want in zip(rows, wanted)]
        trait = float(np.mean([j["trait"] for j in judged]))
        fidelity = float(np.mean([j["fidelity"] for j in judged if "fidelity" in j]))
        out[step] = {"trait": round(trait, 4), "fidelity": round(fidelity, 4), "score": round(trait + fidelity, 4)}
    return out
