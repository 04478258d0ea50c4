"""What the web UI and the CLI call: submit, status, cancel, list, queue position.

    job_id = submit({"class_noun": "star", "model": "shapes", "methods": ["none", "albat"]},
                    ["photos/01.png", "photos/02.png", "photos/03.png"])
    status(job_id)["status"]          # queued, running, done, failed or cancelled
    queue_position(job_id)            # 1 = next to start; None once it runs
    cancel(job_id)

Every function takes ``settings=`` (default: ``JobSettings.from_env()``, i.e. BAT_HOME and
BAT_REDIS_URL). User mistakes raise BatError subclasses: InputError / ImageError / LimitError
(refused at submit), QueueFull (ClientQueueFull: this client's cap), JobNotFound.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from ..errors import ClientQueueFull, InputError, QueueFull
from .pipelines import config_reader_for
from .queue import connect
from .record import CANCELLED, FINISHED, QUEUED, RUNNING, JobRecord
from .settings import JobSettings
from .store import CONFIG, INPUTS, write_json_atomic


def submit(config, images: Sequence[str | Path] | str | Path, *, pipeline: str = "compare",
           settings: JobSettings | None = None, client: str | None = None, limits=None,
           captions: Sequence[str | None] | None = None) -> str:
    """Validate ``config`` and ``images``, copy them into a new job folder, queue it; returns the id.

    Args:
        config: a dict (JSON object) or the pipeline's config object (a ``CompareConfig`` for
            "compare"); the pipeline's reader validates a dict: unknown keys and bad values
            raise InputError here, before anything is written.
        images: image files and/or folders of images (checked with ``load_user_images``:
            ImageError lists every unusable file). They are copied, so the caller may delete them.
        pipeline: what the job runs (see ``bat_app.jobs.pipelines``).
        client: who submits, for the per-client cap (the web app passes its user, IP or session);
            None (the CLI, an operator) has no cap. Only a keyed hash of it is stored.
        limits: a ``bat_app.limits.Limits`` (default: from the environment); the config was
            checked against them when it was built, the photos are checked here.
        captions: one per image, in order (None or blank: none for that image), each saved as the
            image's .txt caption in the job; an image without one keeps the .txt beside its source,
            if any. The config's ``train.captions`` says whether training reads them.

    Raises:
        QueueFull: ``settings.max_queue`` jobs are already waiting.
        ClientQueueFull: ``client`` already has ``settings.max_per_client`` jobs queued or running.
    """
    from bat_app.images import load_user_images
    from bat_app.limits import Limits

    settings, store, dispatch = connect(settings)
    limits = limits or Limits.from_env()
    # The pipeline's own config: CompareConfig for "compare", what a registered one reads.
    parsed = config if not isinstance(config, dict) else config_reader_for(pipeline)(config)
    data = parsed.to_dict() if hasattr(parsed, "to_dict") else dict(config)
    sources = [Path(p) for p in images] if isinstance(images, (list, tuple)) else Path(images)
    report = load_user_images(sources, limits=limits.intake())
    texts = _caption_texts(report.images, captions)
    client_key = _client_key(store.root, client) if client else None

    job_id = secrets.token_hex(16)
    staging = store.root / f".incoming-{job_id}"  # invisible to listings until renamed into place
    try:
        (staging / INPUTS).mkdir(parents=True)
        names = _input_names([Path(u.name).name for u in report.images])
        for user, name, text in zip(report.images, names, texts):
            shutil.copyfile(user.source, staging / INPUTS / name)
            if text:
                (staging / INPUTS / name).with_suffix(".txt").write_text(text, encoding="utf-8")
        write_json_atomic(staging / CONFIG, data)
        record = JobRecord(job_id, pipeline=pipeline, images=[f"{INPUTS}/{n}" for n in names],
                           client=client_key)
        for warning in report.warnings:
            record.say(f"warning: {warning}")
        with store.submit_lock():  # count and add as one step: concurrent submits cannot overshoot
            _check_room(store.all(), settings, client_key)
            record.enqueued_at = time.time()
            record.say("queued")
            store.write(record, folder=staging)
            staging.rename(store.folder(job_id))
            dispatch.push(job_id)  # under the submit lock: queue order = record order
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return job_id


def status(job_id: str, *, settings: JobSettings | None = None) -> dict:
    """The record as a dict, plus ``queue_position`` (None unless queued), ``queue_length``,
    ``running`` (jobs running now; counted only while this one waits) and ``dir``."""
    settings, store, _ = connect(settings)
    record = store.read(job_id)
    records = store.all() if record.status == QUEUED else []
    view = _view(record, _queued(records), store.folder(job_id))
    view["running"] = sum(1 for r in records if r.status == RUNNING)
    return view


def list_jobs(*, status: str | None = None, settings: JobSettings | None = None) -> list[dict]:
    """Every job (or those with ``status``), newest first, as ``status()`` shows them."""
    settings, store, _ = connect(settings)
    records = store.all()
    queued = _queued(records)
    shown = [r for r in records if status is None or r.status == status]
    shown.sort(key=lambda r: r.created_at, reverse=True)
    return [_view(r, queued, store.folder(r.id)) for r in shown]


def queue_position(job_id: str, *, settings: JobSettings | None = None) -> int | None:
    """1 for the next job to start, 2 for the one after ...; None when the job is not waiting."""
    return status(job_id, settings=settings)["queue_position"]


def cancel(job_id: str, *, settings: JobSettings | None = None) -> dict:
    """Cancel a job in any stage. A queued job is cancelled at once; a running one is asked to
    stop (it saves a checkpoint) and is stopped by its worker after ``cancel_grace_s`` at most.
    A finished job is left as it is. Returns the new status."""
    settings, store, _ = connect(settings)

    def change(rec: JobRecord) -> bool:
        if rec.finished or rec.cancel_requested:
            return False
        now = time.time()
        rec.cancel_requested = True
        if rec.status == QUEUED:
            rec.status, rec.finished_at, rec.stage = CANCELLED, now, "cancelled"
            rec.say("cancelled before it started", now)
        else:
            rec.say(f"cancel requested during stage {rec.stage!r}", now)
        return True

    store.update(job_id, change)
    return status(job_id, settings=settings)


def wait(job_id: str, statuses: Sequence[str] = FINISHED, timeout: float | None = None,
         poll_s: float = 0.2, *, settings: JobSettings | None = None) -> dict:
    """Block until the job's status is one of ``statuses``; returns its status (TimeoutError after ``timeout``)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        current = status(job_id, settings=settings)
        if current["status"] in statuses:
            return current
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} is still {current['status']} (stage {current['stage']}) "
                               f"after {timeout}s")
        time.sleep(poll_s)


def job_dir(job_id: str, *, settings: JobSettings | None = None) -> Path:
    """The job's folder (its ``outputs`` are relative to it)."""
    settings, store, _ = connect(settings)
    store.read(job_id)  # JobNotFound for an unknown id
    return store.folder(job_id)


# --- helpers -----------------------------------------------------------------------------

def _check_room(records: list[JobRecord], settings: JobSettings, client_key: str | None) -> None:
    """QueueFull when the queue, or this client's share of it, is full (messages for web users)."""
    if client_key is not None:
        mine = sum(1 for r in records if r.client == client_key and r.status in (QUEUED, RUNNING))
        if mine >= settings.max_per_client:
            raise ClientQueueFull(
                f"You already have {mine} job(s) queued or running, the most one user may have at a time "
                f"({settings.max_per_client}). Wait until one finishes, or cancel one (Jobs tab), then "
                f"try again.")
    waiting = sum(1 for r in records if r.status == QUEUED)
    if waiting >= settings.max_queue:
        raise QueueFull(f"The queue is full ({waiting} jobs are waiting): please try again later.")


def _client_key(root: Path, client: str) -> str:
    """A keyed hash of the client (an IP address or user name is not kept in job records); the
    key is random per data dir, so the hash cannot be reversed by trying every IP address."""
    path = root / ".client-key"
    if not path.is_file():
        # written aside and linked into place: a concurrent reader never sees a half-written key
        tmp = root / f".client-key.{secrets.token_hex(8)}"
        tmp.write_bytes(secrets.token_bytes(32))
        os.chmod(tmp, 0o600)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process made it first: use theirs
        finally:
            tmp.unlink()
    key = path.read_bytes()
    return hmac.new(key, client.encode(), hashlib.sha256).hexdigest()[:32]


def _queued(records: list[JobRecord]) -> list[str]:
    return [r.id for r in sorted((r for r in records if r.status == QUEUED), key=JobRecord.queue_key)]


def _view(record: JobRecord, queued: list[str], folder: Path) -> dict:
    view = record.to_dict()
    view["queue_position"] = queued.index(record.id) + 1 if record.id in queued else None
    view["queue_length"] = len(queued)
    view["dir"] = str(folder)
    return view


def _caption_texts(images, captions) -> list[str | None]:
    """Each image's caption: the one given for it, else the .txt beside its source (or None)."""
    from bat_app.train.data import read_caption

    if captions is not None and len(captions) != len(images):
        raise InputError(f"{len(captions)} caption(s) for {len(images)} image(s): give one per image, "
                         f"in the images' order (an empty one for an image without).")
    given = list(captions) if captions is not None else [None] * len(images)
    return [(text or "").strip() or (read_caption(Path(user.source)) if user.source else None)
            for user, text in zip(images, given)]


def _input_names(names: list[str]) -> list[str]:
    """The uploads' own names where unique; otherwise numbered so none overwrites another."""
    if len(set(names)) == len(names) and all(n and not n.startswith(".") for n in names):
        return names
    return [f"{i:02d}_{n.lstrip('.') or 'image'}" for i, n in enumerate(names)]


__all__ = ["cancel", "job_dir", "list_jobs", "queue_position", "status", "submit", "wait"]
