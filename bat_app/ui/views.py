"""What the app shows about a job, read from its record and folder (no gradio here).

    view = job_view(settings, job_id)      # progress text, loss curve, selected backbone images
    res = job_results(settings, job_id)    # grids, metrics table, download files (finished jobs)
    api_status(settings, job_id)           # the JSON the `status` API endpoint returns

The job folder layout is the compare pipeline's (see bat_app.compare.run), under ``out/``.
Everything here is shown to whoever holds the job id: texts go through ``public`` (no server
paths), files through ``served`` (only a job's results, copied out of the jobs folder).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .. import jobs
from ..errors import InputError
from ..export.plots import loss_curve
from .handlers import METHOD_LABELS, normalize_job_id
from .loras import OUT, download_files, lora_choices
from .public import public_job_text
from .served import publish
from .settings import AppSettings

GALLERY_LIMIT = 24    # selected backbone images shown per method
THUMB = 128           # the shapes world is 32 px: show it larger, pixels kept sharp


@dataclass
class JobView:
    job_id: str
    status: dict
    text: str                                  # markdown: status, stage, step/total, ETA, loss
    finished: bool
    loss_image: Image.Image | None = None      # None: unchanged since ``shown_key`` (or no training yet)
    selection: list[tuple[Image.Image, str]] | None = None  # None: unchanged since ``shown_key``
    shown_key: str = ""                        # what the page shows now: pass it back on the next tick


def job_view(settings: AppSettings, job_id: str, shown_key: str | None = None) -> JobView:
    """The job's progress. The loss curve and the selection gallery are drawn only when they
    differ from what ``shown_key`` (the previous view's) says the page shows: a tick every
    second must not re-encode and re-send the same pictures, which on a small machine takes
    the CPU the job itself needs."""
    job_id = normalize_job_id(job_id)
    status = jobs.status(job_id, settings=settings.jobs)
    folder = Path(status["dir"])
    shown_selection, _, shown_loss = (shown_key or "").partition("|")
    selection_key, gallery = _selection_gallery(settings, folder, shown_selection if shown_key else None)
    loss_key, loss = _loss_image(folder, status, shown_loss if shown_key else None)
    return JobView(job_id, status, progress_text(status), status["status"] in jobs.FINISHED,
                   loss, gallery, f"{selection_key}|{loss_key}")


def progress_text(status: dict) -> str:
    """One short markdown block a user can read at a glance."""
    state = status["status"]
    lines = [f"**Job** `{status['id']}` — **{state}**"]
    if state == jobs.QUEUED and (status.get("queue_position") or 0) <= 1 and not status.get("running"):
        lines.append("Next in line: it starts as soon as a worker is free.")
    elif state == jobs.QUEUED:
        lines.append(f"Waiting in the queue: position {status['queue_position']} of {status['queue_length']}.")
    elif state == jobs.RUNNING:
        what = status["stage"] + (f" · {METHOD_LABELS.get(status['method'], status['method'])}"
                                  if status.get("method") else "")
        step = f" · step {status['step']}/{status['total']}" if status.get("total", 0) > 1 else ""
        eta = f" · ETA {format_seconds(status['eta_s'])}" if status.get("eta_s") else ""
        loss = f" · loss {status['loss']:.4f}" if status.get("loss") is not None and status["stage"] == "train" else ""
        lines.append(f"Stage: {what}{step}{eta}{loss}")
    elif state == jobs.DONE:
        took = (status.get("finished_at") or 0) - (status.get("started_at") or 0)
        lines.append(f"Finished in {format_seconds(took)}: the **Results** tab has the grids, metrics and downloads.")
    elif state == jobs.FAILED:
        lines.append(f"Failed: {public_job_text(status.get('error')) or 'no reason recorded'}")
    elif state == jobs.CANCELLED:
        lines.append("Cancelled. Finished stages are kept in the job folder.")
    if status.get("message") and state != jobs.DONE:
        lines.append(f"Last message: {public_job_text(status['message'])}")
    return "\n\n".join(lines)


def format_seconds(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, s = divmod(seconds, 60)
    return f"{minutes} min {s:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


LOSS_REDRAW_BYTES = 2000  # redraw the curve after about 30 more logged steps (one line each)


def _loss_image(folder: Path, status: dict, shown_key: str | None = None) -> tuple[str, Image.Image | None]:
    """(key, the loss curve of the method training now (or trained last), or None when the
    page's curve, ``shown_key``, is still current). The key moves with the log's growth in
    ``LOSS_REDRAW_BYTES`` steps and once more when the job ends (the full curve)."""
    logs = list((folder / OUT / "methods").glob("*/lora/loss_log.jsonl"))
    if not logs:
        return "", None
    current = folder / OUT / "methods" / str(status.get("method")) / "lora" / "loss_log.jsonl"
    log = current if current in logs else max(logs, key=lambda p: p.stat().st_mtime)
    ended = status.get("status") in jobs.FINISHED
    key = f"{log.parent.parent.name}:{log.stat().st_size // LOSS_REDRAW_BYTES}:{int(ended)}"
    if key == shown_key:
        return key, None
    losses = []
    for line in log.read_text().splitlines():
        try:
            losses.append(float(json.loads(line)["loss"]))
        except (ValueError, KeyError, TypeError):
            continue  # a line being written right now
    method = log.parent.parent.name
    return key, loss_curve(losses, title=f"training loss: {METHOD_LABELS.get(method, method)}")


def _selection_gallery(settings: AppSettings, folder: Path, shown_key: str | None = None):
    """(key, [(image, caption)] or None if unchanged): the backbone images each method selected."""
    sheets = sorted((folder / OUT / "methods").glob("*/selection/selection.jsonl"))
    key = ";".join(f"{p.parent.parent.name}:{p.stat().st_mtime_ns}" for p in sheets)
    if key == shown_key:
        return key, None
    if not sheets:
        return key, []
    config = json.loads((folder / "config.json").read_text())
    pool = _open_pool(settings, config.get("pool"))
    items = []
    for sheet in sheets:
        method = sheet.parent.parent.name
        rows = [json.loads(line) for line in sheet.read_text().splitlines() if line.strip()]
        for row in rows[:GALLERY_LIMIT]:
            image = _row_image(row, pool)
            if image is None:
                continue
            score = f" · score {row['score']:.3g}" if row.get("score") is not None else ""
            items.append((image, f"{method}{score} · {row.get('caption', '')}"))
    return key, items


def _open_pool(settings: AppSettings, pool: str | None):
    if not pool:
        return None
    from ..compare.pools import shapes_pool_dir
    from ..pool import Pool

    folder = Path(pool)
    if pool == "shapes":  # in the job processes' data dir; its size may be set by their environment
        pools = settings.jobs.data_dir / "pools"
        built = sorted(pools.glob("shapes-*/manifest.json"), key=lambda p: p.stat().st_mtime)
        folder = pools / shapes_pool_dir().name
        if not (folder / "manifest.json").is_file() and built:
            folder = built[-1].parent
    try:
        return Pool.open(folder)
    except Exception:  # the gallery is a courtesy: a pool being rebuilt must not break progress
        return None


def _row_image(row: dict, pool) -> Image.Image | None:
    try:
        if row.get("pool_id") is not None and pool is not None:
            image = pool.load_image(row["pool_id"])
        elif row.get("path") and Path(row["path"]).is_file():
            with Image.open(row["path"]) as im:
                image = im.convert("RGB")
        else:
            return None
    except Exception:
        return None
    if max(image.size) < THUMB:
        image = image.resize((THUMB, THUMB * image.height // image.width), Image.NEAREST)
    return image


# --- results -------------------------------------------------------------------------------

@dataclass
class Results:
    job_id: str
    methods: list[str]
    grids: list[tuple[str, str]]               # (served png path, caption)
    metric_headers: list[str]
    metric_rows: list[list]
    downloads: list[str]                       # served files, named <method>_<file> so they never collide
    report: str                                # report.md
    config: dict
    steps: list[tuple[str, str]]               # (served steps picture, caption): per method that kept steps
    choices: list[tuple[str, str]]             # (label, value) of every LoRA to try, push or download:
    #                                            each method's final one, then its earlier steps ("albat@250")


def job_results(settings: AppSettings, job_id: str) -> Results:
    job_id = normalize_job_id(job_id)
    status = jobs.status(job_id, settings=settings.jobs)
    if status["status"] != jobs.DONE:
        hint = {"queued": "it is still waiting in the queue", "running": f"it is still running (stage {status['stage']})",
                "failed": f"it failed: {public_job_text(status.get('error'))}",
                "cancelled": "it was cancelled"}[status["status"]]
        raise InputError(f"Job {job_id} has no results: {hint}. Results appear here when it finishes.")
    folder = Path(status["dir"])
    out = folder / OUT
    config = json.loads((folder / "config.json").read_text())
    methods = list(config["methods"])
    grids = [(path, Path(path).stem.removeprefix("grid_"))
             for path in publish(job_id, out, [f"previews/{p.name}" for p in sorted((out / "previews").glob("grid_*.png"))])]
    metrics = json.loads((out / "metrics.json").read_text())
    headers, rows = metrics_table(metrics)
    report = (out / "report.md").read_text() if (out / "report.md").is_file() else ""
    downloads = publish(job_id, out, [f"downloads/{Path(p).name}" for p in download_files(out, methods)])
    from ..compare.steps import PICTURE

    pictures = [m for m in methods if (out / PICTURE.format(method=m)).is_file()]
    steps = list(zip(publish(job_id, out, [PICTURE.format(method=m) for m in pictures]),
                     [f"{METHOD_LABELS.get(m, m)}: its steps side by side" for m in pictures]))
    return Results(job_id, methods, grids, headers, rows, downloads, report, config, steps,
                   lora_choices(out, methods))


def metrics_table(metrics: dict) -> tuple[list[str], list[list]]:
    """Rows per method; ``method`` is the name the grid's column titles use, ``name`` what it is."""
    per_method = metrics.get("methods", {})
    keys = list(dict.fromkeys(k for values in per_method.values() for k in values))
    headers = ["method", "name", "backbone images", *keys]
    rows = []
    for method, values in per_method.items():
        count = metrics.get("counts", {}).get(method, 0 if method == "base" else None)
        rows.append([method, METHOD_LABELS.get(method, "base model" if method == "base" else method), count,
                     *[_round(values.get(k)) for k in keys]])
    return headers, rows


def _round(value):
    if value is None:
        return "—"  # not measured for this run (e.g. diversity with one seed)
    return round(value, 4) if isinstance(value, float) else value


# --- this browser's jobs -------------------------------------------------------------------

JOB_COLUMNS = ["job id", "status", "stage", "methods", "submitted"]


def remember(history: list | None, job_id: str, keep: int = 10) -> list[str]:
    """The browser's job list with ``job_id`` first (no duplicates, at most ``keep``)."""
    return [job_id, *[j for j in (history or []) if j != job_id]][:keep]


def jobs_table(settings: AppSettings, history: list | None) -> list[list]:
    """One row per job this browser started or followed; jobs cleaned up since are left out."""
    import time

    rows = []
    for job_id in history or []:
        try:
            status = jobs.status(job_id, settings=settings.jobs)
        except jobs.JobNotFound:
            continue
        config = json.loads((Path(status["dir"]) / "config.json").read_text())
        rows.append([job_id, status["status"], status["stage"], ", ".join(config.get("methods", [])),
                     time.strftime("%Y-%m-%d %H:%M", time.localtime(status["created_at"]))])
    return rows


# --- API -----------------------------------------------------------------------------------

def api_status(settings: AppSettings, job_id: str) -> dict:
    """The job's status for API clients: record fields a client needs, no internal ones."""
    status = jobs.status(normalize_job_id(job_id), settings=settings.jobs)
    keep = ("id", "status", "stage", "method", "step", "total", "loss", "eta_s", "it_per_s", "message",
            "error", "queue_position", "queue_length", "created_at", "started_at", "finished_at")
    view = {k: status.get(k) for k in keep}
    view["error"], view["message"] = public_job_text(view["error"]), public_job_text(view["message"])
    view["outputs"] = sorted(status.get("outputs", {}))
    return view
