"""Content flags: pool items scored as unsafe or watermarked are never selected nor shown
by default.

Each item gets a score in [0, 1] per flag (NaN: not scored), kept in ``safety.npy``
(N, 2 float32; column 0 ``unsafe``, 1 ``watermark``). Where a score comes from, in order:

1. the source's own column: LAION's ``punsafe`` / ``pwatermark`` (parquet, clip-retrieval
   metadata, the json img2dataset writes with ``--save_additional_columns``);
2. else a zero-shot check with the pool's own CLIP: the softmax mass on "flagged" prompts
   against neutral ones (``safety_prompts.json``). It runs by default only for CLIPs trained
   on web data (open_clip pretrained tags, hf-hub ids): the shapes CLIP and local folders
   know nothing of such content and would flag at random (``clip="on"`` forces it);
3. else unscored, and allowed.

An item is flagged when its score exceeds the threshold in the pool's manifest. Which flags
exclude items is a setting of the opened pool: ``Pool.open(folder, filters=("unsafe",))``,
``pool.set_filters(())``, or ``BAT_POOL_FILTERS=none|unsafe|watermark|unsafe,watermark``.

    build_pool(src, out, emb, safety=SafetyConfig(watermark=False, unsafe_threshold=0.3))
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bat_app.errors import PoolError

FLAGS = ("unsafe", "watermark")
# LAION's (punsafe, pwatermark) first, then COYO-700M's names for the same probabilities.
SOURCE_COLUMNS = {"unsafe": ("punsafe", "nsfw_score_opennsfw2"),
                  "watermark": ("pwatermark", "watermark_score")}
SAFETY_FILE = "safety.npy"
FILTERS_ENV = "BAT_POOL_FILTERS"
CLIP_MODES = ("auto", "on", "off")
_CHUNK = 65_536


@dataclass
class SafetyConfig:
    """How a build scores items (``pool build --no-unsafe-check --clip-safety on ...``)."""

    unsafe: bool = True             # score items for unsafe content (nudity, gore)
    watermark: bool = True          # score items for watermarks
    clip: str = "auto"              # zero-shot CLIP where the source has no column: auto|on|off
    unsafe_threshold: float = 0.5   # flagged above this (LAION's punsafe is a probability)
    watermark_threshold: float = 0.5  # SD 1.x trained on pwatermark < 0.5

    def __post_init__(self):
        if self.clip not in CLIP_MODES:
            raise PoolError(f"clip safety check must be one of {', '.join(CLIP_MODES)}, got {self.clip!r}.")
        for name in ("unsafe_threshold", "watermark_threshold"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise PoolError(f"{name} must be a number in [0, 1], got {value!r}.")

    def enabled(self, flag: str) -> bool:
        return bool(getattr(self, flag))

    def threshold(self, flag: str) -> float:
        return float(getattr(self, f"{flag}_threshold"))

    def to_dict(self) -> dict:
        return asdict(self)


def from_metadata(meta: dict) -> dict[str, float] | None:
    """Flag scores found in a source row / json (``{"unsafe": 0.02}``); None when none are."""
    found = {}
    for flag, columns in SOURCE_COLUMNS.items():  # the first column present wins
        for column in columns:
            value = meta.get(column)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0:
                found[flag] = float(value)
                break
    return found or None


def scores_row(found: dict[str, float] | None) -> list[float]:
    """One row of safety.npy: the source's scores, NaN where it had none."""
    return [found.get(f, np.nan) if found else np.nan for f in FLAGS]


def clip_check_runs(config: SafetyConfig, model_id: str, embedder) -> tuple[bool, str]:
    """Whether the zero-shot check runs for this model, and why (recorded in the manifest)."""
    if config.clip == "off":
        return False, "off (--clip-safety off)"
    web = model_id.startswith("open_clip:hf-hub:") or (
        model_id.startswith("open_clip:") and not model_id.startswith("open_clip:local-dir:")
        and "/file:" not in model_id and not model_id.endswith("/random"))
    if config.clip == "auto" and not web:
        return False, (f"not run: {model_id} is not a known web-trained CLIP, so a zero-shot "
                       "check would flag at random (force it with --clip-safety on)")
    if embedder is None or isinstance(embedder, str):
        return False, ("not run: the embeddings were adopted without loading the model's text "
                       "tower (install its weights and rebuild, or rely on source columns)")
    return True, "on (forced)" if config.clip == "on" else "on (web-trained CLIP)"


def zero_shot_scores(embedder, vectors: np.ndarray, flag: str) -> np.ndarray:
    """P(flagged prompts) per row of ``vectors`` (unit CLIP image embeddings), float32."""
    prompts = _prompts()
    spec = prompts[flag]
    texts = np.asarray(embedder.encode_texts(spec["flagged"] + spec["neutral"]), np.float32)
    n_flagged = len(spec["flagged"])
    out = np.empty(len(vectors), np.float32)
    for start in range(0, len(vectors), _CHUNK):
        logits = prompts["temperature"] * (np.asarray(vectors[start:start + _CHUNK], np.float32) @ texts.T)
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        out[start:start + _CHUNK] = p[:, :n_flagged].sum(axis=1) / p.sum(axis=1)
    return out


def finalize(folder: Path, config: SafetyConfig, embedder, model_id: str, from_column: dict,
             column_names: dict | None = None) -> dict:
    """Fill unscored rows with the zero-shot check where it runs; the manifest's ``safety``.

    Idempotent: a build killed here and run again fills the rows still NaN, and the counts
    come from the build state (``from_column``), not from the file. ``column_names``: the
    source column each flag was read from, for the manifest (default LAION's names).
    """
    column_names = column_names or {f: cols[0] for f, cols in SOURCE_COLUMNS.items()}
    scores = np.load(folder / SAFETY_FILE, mmap_mode="r+")
    n = len(scores)
    runs, clip_note = clip_check_runs(config, model_id, embedder)
    vectors = np.load(folder / "embeddings.npy", mmap_mode="r") if runs else None
    checks = {}
    for j, flag in enumerate(FLAGS):
        if not config.enabled(flag):
            scores[:, j] = np.nan  # a check turned off leaves nothing that could flag
            checks[flag] = {"checked": False, "note": f"off (--no-{flag}-check)", "flagged": 0}
            continue
        columns = from_column.get(flag, 0)
        if runs and columns < n:
            for start in range(0, n, _CHUNK):
                block = scores[start:start + _CHUNK, j]
                todo = np.isnan(block)
                if todo.any():
                    rows = np.nonzero(todo)[0] + start
                    scores[rows, j] = zero_shot_scores(embedder, vectors[rows], flag)
        flagged = int(np.count_nonzero(np.nan_to_num(scores[:, j], nan=-1.0) > config.threshold(flag)))
        checks[flag] = {"checked": True, "threshold": config.threshold(flag),
                        "column": column_names.get(flag) if columns else None,
                        "from_column": columns, "from_clip": (n - columns) if runs else 0,
                        "unscored": 0 if runs else n - columns, "flagged": flagged}
    scores.flush()
    del scores
    return {"file": SAFETY_FILE, "flags": list(FLAGS), "clip": clip_note,
            "config": config.to_dict(), "checks": checks}


def filters_from_env() -> tuple[str, ...]:
    """Active filters from BAT_POOL_FILTERS (default: every flag)."""
    value = os.environ.get(FILTERS_ENV)
    return FLAGS if value is None else parse_filters(value)


def parse_filters(value) -> tuple[str, ...]:
    """"unsafe,watermark" / "none" / an iterable of flag names -> a checked tuple."""
    if isinstance(value, str):
        value = [] if value.strip().lower() in ("", "none", "off") else value.split(",")
    names = tuple(v.strip() for v in value)
    bad = [v for v in names if v not in FLAGS]
    if bad:
        raise PoolError(f"Unknown pool filter(s) {bad}: use any of {', '.join(FLAGS)} (comma-"
                        f"separated), or 'none' to show flagged items too (in {FILTERS_ENV} or "
                        "Pool.open(filters=...)).")
    return names


class FlagTable:
    """Per-item flags of an opened pool, from safety.npy and the manifest's thresholds."""

    def __init__(self, folder: Path, manifest: dict):
        section = manifest.get("safety")
        self.section = section
        self.thresholds = {}
        self._flagged: dict[str, np.ndarray] = {}
        if not section:
            return  # a pool built before content checks: nothing is flagged
        path = folder / section["file"]
        try:
            scores = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise PoolError(f"{path} is unreadable ({exc}): the pool is damaged. Build it again.") from exc
        if scores.shape != (manifest["size"], len(FLAGS)):
            raise PoolError(f"{path} has shape {scores.shape}, expected ({manifest['size']}, "
                            f"{len(FLAGS)}): the pool is damaged. Build it again.")
        self._scores = scores
        for flag in FLAGS:
            check = section["checks"].get(flag, {})
            if check.get("checked") and check.get("flagged"):
                self.thresholds[flag] = check["threshold"]

    def flags_of(self, i: int) -> list[str]:
        return [f for f, t in self.thresholds.items() if self._scores[i, FLAGS.index(f)] > t]

    def mask(self, flag: str) -> np.ndarray:
        """Bool (N,) of the items flagged ``flag`` (computed on first use: one pass)."""
        if flag not in self._flagged:
            column = np.asarray(self._scores[:, FLAGS.index(flag)])
            self._flagged[flag] = np.nan_to_num(column, nan=-1.0) > self.thresholds[flag]
        return self._flagged[flag]

    def blocked(self, filters: tuple[str, ...]) -> np.ndarray | None:
        """Bool (N,) of items the given filters exclude; None when they exclude nothing."""
        masks = [self.mask(f) for f in filters if f in self.thresholds]
        if not masks:
            return None
        return np.logical_or.reduce(masks) if len(masks) > 1 else masks[0]

    def describe(self, filters: tuple[str, ...]) -> str:
        if not self.section:
            return "not checked (pool built before content checks)"
        parts = []
        for flag in FLAGS:
            c = self.section["checks"][flag]
            if not c["checked"]:
                parts.append(f"{flag}: not checked ({c['note']})")
                continue
            how = [f"{c['from_column']} from {c['column']}"] if c["from_column"] else []
            how += [f"{c['from_clip']} by CLIP zero-shot"] if c["from_clip"] else []
            how += [f"{c['unscored']} unscored"] if c["unscored"] else []
            state = "filter on" if flag in filters else "filter OFF"
            parts.append(f"{flag}: {c['flagged']} flagged > {c['threshold']} ({', '.join(how)}; {state})")
        return "; ".join(parts) + f"\n          clip check: {self.section['clip']}"


def _prompts() -> dict:
    return json.loads((Path(__file__).with_name("safety_prompts.json")).read_text())
