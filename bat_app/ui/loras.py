"""A finished job's LoRA files, as the app offers them: each method's final LoRA and the earlier
steps its training kept, to download, try or push (no gradio here).

    lora_choices(out, ["none", "albat"])       # [("DreamBooth-LoRA (final, step 300)", "none"), ...,
                                               #  ("ALBAT (BAT) · step 250", "albat@250")]
    folder, config = lora_dir(settings, job_id, "albat@250")
    step_files(settings, job_id, "albat@250")  # served albat_step250_*.safetensors

Only finished jobs, only methods they trained and steps their training kept: a choice is checked
against the job's folder, so no path comes from the user. Files go out through ``served``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .. import jobs
from ..errors import InputError
from ..export.embeddings import find_embeddings
from ..jobs.store import OUT  # the pipeline's folder inside a job folder
from .handlers import METHOD_LABELS, normalize_job_id
from .served import publish
from .settings import AppSettings


def lora_choices(out: Path, methods: list[str]) -> list[tuple[str, str]]:
    """(label, value) of each LoRA of a finished job: every method's final one ("albat"), then
    the earlier steps its training kept in the last third ("albat@250"; the steps picture shows
    them, ``compare.steps``)."""
    from ..preview.step_pick import earlier_choices

    finals, earlier = [], []
    for method in methods:
        lora = out / "methods" / method / "lora"
        label = METHOD_LABELS.get(method, method)
        final = _final_step(lora)
        finals.append((f"{label}" + (f" (final, step {final})" if final else ""), method))
        if final:
            earlier += [(f"{label} · step {step}", f"{method}@{step}") for step in earlier_choices(lora, final)]
    return finals + earlier


def _final_step(lora: Path) -> int | None:
    """The final step of a LoRA folder's training (its training_log.json), None if unreadable."""
    try:
        return int(json.loads((lora / "training_log.json").read_text())["config"]["steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def split_choice(choice: str) -> tuple[str, int | None]:
    """("albat", 250) from "albat@250"; ("albat", None) from "albat" (the final LoRA).

    >>> split_choice("albat@250"), split_choice("none")
    (('albat', 250), ('none', None))
    """
    method, at, step = (choice or "").partition("@")
    if not at:
        return method, None
    if not step.isdigit():
        raise InputError(f"{choice!r} names no step: give a method ('albat') or a method and a step ('albat@250').")
    return method, int(step)


def step_files(settings: AppSettings, job_id: str, choice: str) -> list[str]:
    """The served files of one LoRA (``choice`` as in ``lora_choices``): diffusers and kohya
    .safetensors and the trigger's vectors, named ``<method>[_step<N>]_<file>``."""
    folder, config = finished_job(settings, job_id)
    method, step = split_choice(choice)
    out = folder / OUT
    prefix = method if step is None else f"{method}_step{step}"
    return publish(normalize_job_id(job_id), out, [f"downloads/{p.name}" for p in _lora_downloads(
        lora_in(folder, config, job_id, choice), out / "downloads", prefix)])


def download_files(out: Path, methods: list[str]) -> list[str]:
    """Per method: diffusers and kohya .safetensors, the trigger's pivotal-tuning vectors (saved
    as ``<method>_<trigger>.safetensors``: drop the prefix for AUTOMATIC1111, where the file name
    is the trigger; the zip has them under the plain name), and the zip (card, samples, selection).

    The LoRA files are hard-linked as ``downloads/<method>_<name>`` so that downloads of
    several methods do not all arrive as ``pytorch_lora_weights.safetensors``.
    """
    files = []
    for method in methods:
        files += [str(p) for p in _lora_downloads(out / "methods" / method / "lora", out / "downloads", method)]
        zip_path = out / "downloads" / f"{method}_lora.zip"
        if zip_path.is_file():
            files.append(str(zip_path))
    return files


def _lora_downloads(lora: Path, downloads: Path, prefix: str) -> list[Path]:
    """A LoRA folder's files users load, linked into ``downloads`` as ``<prefix>_<name>``."""
    embeddings = find_embeddings(lora) if lora.is_dir() else None  # pivotal tuning's trigger vectors
    return [_named_copy(src, downloads / f"{prefix}_{src.name}")
            for src in [lora / "pytorch_lora_weights.safetensors", *sorted(lora.glob("*_kohya.safetensors")),
                        *([embeddings[0]] if embeddings else [])]
            if src.is_file() and not src.is_symlink()]  # a copy would follow a link anywhere


def _named_copy(src: Path, dst: Path) -> Path:
    if not dst.is_file() or dst.stat().st_size != src.stat().st_size:
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(dst.name + ".tmp")
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        tmp.replace(dst)
    return dst


def finished_job(settings: AppSettings, job_id: str) -> tuple[Path, dict]:
    """(job folder, job config) of a finished job; an error naming its state otherwise."""
    status = jobs.status(normalize_job_id(job_id), settings=settings.jobs)
    if status["status"] != jobs.DONE:
        raise InputError(f"Job {job_id} is {status['status']}: pick a finished job (the Jobs tab shows yours).")
    folder = Path(status["dir"])
    return folder, json.loads((folder / "config.json").read_text())


def lora_dir(settings: AppSettings, job_id: str, choice: str) -> tuple[Path, dict]:
    """(LoRA folder, job config) of a finished job's method, or of an earlier step its training
    kept (``choice``: "albat" or "albat@250", as in ``lora_choices``)."""
    folder, config = finished_job(settings, job_id)
    return lora_in(folder, config, job_id, choice), config


def lora_in(folder: Path, config: dict, job_id: str, choice: str) -> Path:
    """The LoRA folder ``choice`` names in a finished job's ``folder`` (``finished_job``), checked
    against what the job trained and kept."""
    from ..preview.step_pick import earlier_choices

    method, step = split_choice(choice)
    if method not in config["methods"]:
        raise InputError(f"Job {job_id} did not train method {method!r}; it trained {', '.join(config['methods'])}.")
    lora = folder / OUT / "methods" / method / "lora"
    if step is None:
        return lora
    kept = earlier_choices(lora, _final_step(lora) or 0)
    if step not in kept:
        raise InputError(f"Job {job_id}'s {method} training kept no step {step}; "
                         + (f"it kept steps {', '.join(map(str, kept))}." if kept else "it kept only its final LoRA."))
    return kept[step]
