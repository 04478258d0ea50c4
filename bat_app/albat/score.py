"""ALBAT's scores: how much the surrogate adapter lowers a candidate's own diffusion loss.

    score = get_score("loss_reduction")            # or any object with the Score interface
    result = score(ctx, examples, surrogate)       # ScoreResult; result.values ranks the items

The loss reduction of candidate x with its own caption c, in draw r, is

    d_r(x) = l_r(x, c; phi_ref) - l_r(x, c; phi_s)

where l_r is the diffusion training loss at draw r's (latent sample, timestep, noise). The R
draws are *shared* by the two evaluations (common random numbers: both losses move with the
draw, so their difference varies far less than either) and by *every candidate* (see
draws.py), with the timesteps stratified over the schedule. phi_ref is the backbone (adapter
off) unless another adapter is given; identical adapters give d = 0 exactly.

Scores (SelectionParams.score):

- ``loss_reduction`` (default): Delta(x) = mean_r d_r(x). With ``standardise`` each stratum's
  d_r is divided by its spread s_r across the candidates first, so that the strata whose
  differences are largest in absolute terms do not decide the ranking alone (the sign of each
  d_r is kept, so "Delta > 0" still means "the surrogate lowers x's loss"). Measured on the
  shapes pool it made the ranking no more stable across score seeds (less on one subject),
  so it is off by default (docs/albat.md).
- ``prompt_specific``: the same on d_r(x, c) - d_r(x, ""), i.e. with the part of the loss
  reduction that the empty caption gets too (a prompt-independent shift the surrogate learned,
  e.g. towards the subject photos' colours) removed. Twice the forward passes.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np
import torch
from peft import LoraConfig, set_peft_model_state_dict

from ..errors import Cancelled, InputError
from ..train import TrainConfig
from ..train.data import Example
from ..models.families import cond_to, stack_cond
from ..train.encode import LatentCache, TextCache, latents_from_stats
from ..progress import ProgressEvent
from .draws import IndependentDraws, SharedDraws
from .racing import planned_passes, race, race_rounds
from .reference_cache import ReferenceLossCache

SURROGATE = "albat-surrogate"
REFERENCE = "albat-reference"


@dataclass
class ScoreResult:
    values: np.ndarray        # (N,) what the selector ranks by; > 0: the surrogate lowers x's loss
    delta: np.ndarray         # (N,) raw Delta in loss units (mean over draws), for reports
    forward_passes: int       # UNet forward passes spent (the cost of scoring)
    details: dict = field(default_factory=dict)  # e.g. the timesteps of the draws


class Score(Protocol):
    """What AlbatSelector ranks candidates with (pass one to ``AlbatSelector(score=...)``).

    A score may also have ``prepare(ctx, examples) -> int`` (UNet passes spent): the selector
    calls it before the surrogate exists, for the part of the work that does not need it."""

    name: str

    def __call__(self, ctx, examples: Sequence[Example], surrogate: dict[str, torch.Tensor]) -> ScoreResult: ...


# --- the loss reduction, per draw ---------------------------------------------------------

@torch.no_grad()
def loss_matrix(components, examples: Sequence[Example], resolution: int, surrogate: dict[str, torch.Tensor] | None,
                config: TrainConfig, *, draws: int = 8, seed: int = 0,
                reference: dict[str, torch.Tensor] | None = None, captions: Sequence[str] | None = None,
                independent: bool = False, batch_size: int = 32, cache_root: Path | None = None,
                rows: Sequence[int] | None = None, progress: Callable | None = None,
                cancel: Callable[[], bool] | None = None, counts: dict | None = None) -> tuple[np.ndarray, list[int]]:
    """(d, timesteps): d[j, i] = l_r(ref) - l_r(surrogate) for draw r = rows[j] (default: all
    ``draws``) and example i with its own caption (or ``captions[i]``), shape (len(rows), N),
    float64. A draw is the same whichever rows are asked for. ``independent`` uses the former
    unshared, unstratified draws (for measurements only).

    With a ``cache_root`` and the backbone as the reference, the backbone's losses are read from
    and written to :class:`ReferenceLossCache` (they do not depend on the job). ``counts``, when
    given, gets the UNet passes spent (``passes``) and those the cache saved (``reference_cached``).

    ``surrogate=None`` computes the reference side alone (d[j, i] is then the reference loss):
    how :meth:`LossReductionScore.prepare` fills the cache before the surrogate exists."""
    emit = progress or (lambda e: None)
    stats = LatentCache(components, resolution, cache_root).get(
        examples, progress=lambda d, t: emit(ProgressEvent("encode", d, t, message="candidates")))
    captions = list(captions) if captions is not None else [e.caption for e in examples]
    texts = TextCache(components).get(captions)
    unet = components.denoiser
    device = components.device
    total_t = components.family.num_timesteps(components)
    shape = tuple(stats[0][0].shape) if stats else (0,)
    plan = IndependentDraws(draws, shape, total_t, seed, len(examples)) if independent \
        else SharedDraws.make(draws, shape, total_t, seed)
    rows = list(range(draws)) if rows is None else list(rows)
    known = None
    if cache_root is not None and reference is None and not independent:
        known = ReferenceLossCache(components, cache_root, resolution,
                                   {"draws": draws, "seed": seed, "shape": shape, "num_timesteps": total_t},
                                   [ReferenceLossCache.item_key(e.key, c) for e, c in zip(examples, captions)])
    adapters = _load_adapters(unet, config.resolve_targets(components.family), surrogate, reference) \
        if surrogate is not None else {"surrogate": None, "reference": None}
    out = np.zeros((len(rows), len(examples)), dtype=np.float64)
    passes = cached = 0
    try:
        for lo in range(0, len(examples), batch_size):
            if cancel is not None and cancel():
                raise Cancelled("Cancelled while scoring candidates.")
            hi = min(lo + batch_size, len(examples))
            cond = cond_to(stack_cond(texts[lo:hi]), device)
            for j, r in enumerate(rows):
                t, noise, eps = plan.batch(r, lo, hi)
                latents = latents_from_stats(components, stats[lo:hi], eps).to(device)
                noise, t = noise.to(device), t.to(device)
                if known is not None and known.has(lo, hi, r):
                    ref, cached = known.known[lo:hi, r], cached + (hi - lo)
                else:
                    ref = _loss_with(components, adapters["reference"], latents, cond, noise, t).double().cpu().numpy()
                    passes += hi - lo
                    if known is not None:
                        known.put(lo, hi, r, ref)
                if surrogate is None:
                    out[j, lo:hi] = ref
                    continue
                # the surrogate's pass last: it leaves the adapters enabled, as training expects them
                adapted = _loss_with(components, adapters["surrogate"], latents, cond, noise, t).double().cpu().numpy()
                passes += hi - lo
                out[j, lo:hi] = ref - adapted
            emit(ProgressEvent("score", hi, len(examples)))
    finally:
        if known is not None:
            known.save()
        for name in (SURROGATE, REFERENCE):
            if name in (getattr(unet, "peft_config", None) or {}):
                unet.delete_adapters(name)
    timesteps = plan.timesteps[rows].tolist() if not independent else []
    if counts is not None:
        counts["passes"] = counts.get("passes", 0) + passes
        counts["reference_cached"] = counts.get("reference_cached", 0) + cached
    return out, timesteps


MIN_SPLIT = 2  # batches of candidates below which lending the other lane's model is not worth it


class _Chunks:
    """A scoring round's candidate batches, taken one at a time by whichever model copy is free
    (ALBAT's lane and the lending lane): a lane that joins late takes only what is left."""

    def __init__(self, count: int, emit: Callable[[int], None]):
        self.results: list = [None] * count
        self.errors: list[BaseException] = []
        self.next = self.finished = 0
        self.emit = emit
        self.cond = threading.Condition()

    def claim(self) -> int | None:
        with self.cond:
            if self.next >= len(self.results) or self.errors:
                return None
            self.next += 1
            return self.next - 1

    def finish(self, i: int, value=None, error: BaseException | None = None) -> None:
        with self.cond:
            self.results[i] = value
            if error is not None:
                self.errors.append(error)
            self.finished += 1
            self.cond.notify_all()
        if error is None:
            self.emit(i)

    def wait(self, cancel: Callable[[], bool] | None) -> list:
        """Every batch's result, once the ones the other lane took are in too."""
        with self.cond:
            while self.finished < self.next:
                if self.errors:
                    break
                self.cond.wait(0.2)
                if cancel is not None and cancel():
                    raise Cancelled("Cancelled while scoring candidates.")
            if self.errors:
                raise self.errors[0]
            return self.results


def split_loss_matrix(ctx, examples: Sequence[Example], resolution: int, surrogate, *, captions=None,
                      progress: Callable | None = None, counts: dict | None = None, batch_size: int = 32,
                      **kwargs):
    """``loss_matrix`` on ``ctx.components``, sharing the candidates' batches with another copy
    of the model when ``ctx.helper`` lends one (compare/lanes.py: the plain LoRA's lane, while
    ALBAT selects): each copy takes the next batch until none is left, so a lender still busy
    with its own work takes only what remains when it comes. A candidate's entries do not depend
    on which candidates share its batch (the draws are shared, draws.py): the batches join into
    the matrix of scoring alone. Progress and pass counts add up over both copies."""
    helper = getattr(ctx, "helper", None)
    n = len(examples)
    if helper is None or n < MIN_SPLIT * batch_size:
        return loss_matrix(ctx.components, examples, resolution, surrogate, ctx.config, captions=captions,
                           progress=progress, counts=counts, batch_size=batch_size, **kwargs)
    bounds = [(lo, min(lo + batch_size, n)) for lo in range(0, n, batch_size)]
    emit = progress or (lambda e: None)
    scored = [0]

    def report(i: int) -> None:
        lo, hi = bounds[i]
        scored[0] += hi - lo  # under no lock: a progress bar may lag a batch
        emit(ProgressEvent("score", scored[0], n, message=f"{n} candidates"))

    chunks = _Chunks(len(bounds), report)
    tallies: list[dict] = []

    def take_batches(components) -> None:
        tally: dict[str, int] = {}
        tallies.append(tally)
        while (i := chunks.claim()) is not None:
            lo, hi = bounds[i]
            try:
                part = loss_matrix(components, examples[lo:hi], resolution, surrogate, ctx.config,
                                   captions=captions[lo:hi] if captions is not None else None,
                                   counts=tally, batch_size=batch_size, **kwargs)
            except BaseException as exc:
                chunks.finish(i, error=exc)
                raise
            chunks.finish(i, part)

    helper(take_batches)  # not waited on: the batches it took are (it may come too late for any)
    take_batches(ctx.components)
    parts = chunks.wait(ctx.cancel)
    if counts is not None:
        for tally in tallies:
            for key, value in tally.items():
                counts[key] = counts.get(key, 0) + value
    return np.concatenate([m for m, _ in parts], axis=1), parts[0][1]


def loss_reduction(components, examples: Sequence[Example], resolution: int, surrogate: dict[str, torch.Tensor],
                   config: TrainConfig, *, reference: dict[str, torch.Tensor] | None = None, draws: int = 8,
                   batch_size: int = 32, seed: int = 0, cache_root: Path | None = None,
                   progress: Callable | None = None) -> np.ndarray:
    """Raw Delta (loss units) for each example with its own caption: the mean of loss_matrix."""
    matrix, _ = loss_matrix(components, examples, resolution, surrogate, config, draws=draws, seed=seed,
                            reference=reference, batch_size=batch_size, cache_root=cache_root, progress=progress)
    return matrix.mean(axis=0)


def standardise_strata(matrix: np.ndarray) -> np.ndarray:
    """Divide each draw's (stratum's) row by its standard deviation across candidates.

    The sign of every entry is kept (no centring), so a positive mean still means "lowered on
    balance". A row without spread (one candidate, or identical adapters) is left as it is.
    Entries not scored (NaN, racing.py) are left out of the spread.
    """
    if matrix.shape[1] < 2:
        return matrix.copy()
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a row nobody was scored on: NaN spread
        scale = np.nanstd(matrix, axis=1, keepdims=True)
    return matrix / np.where(scale > 0, scale, 1.0)


def aggregate(matrix: np.ndarray, standardise: bool) -> np.ndarray:
    """One value per candidate from a (R, N) per-draw matrix: the mean over the draws it was
    scored on (all of them unless it was raced out early), each stratum first divided by its
    spread when ``standardise``."""
    return np.nanmean(standardise_strata(matrix) if standardise else matrix, axis=0)


# --- the scores ---------------------------------------------------------------------------

class LossReductionScore:
    """Delta over the shared stratified draws; ``prompt_specific`` subtracts the empty-caption part.

    With ``params.race`` the draws are spent by successive halving (racing.py): the candidates
    that cannot reach the top m stop being scored early, for half the passes.
    """

    def __init__(self, prompt_specific: bool = False):
        self.prompt_specific = prompt_specific
        self.name = "prompt_specific" if prompt_specific else "loss_reduction"

    def prepare(self, ctx, examples: Sequence[Example]) -> int:
        """The backbone's losses on the first round's draws, into the reference cache, before the
        surrogate exists: the same passes the scoring would spend on them, done earlier, so that a
        selection whose surrogate another lane is training meanwhile (compare/lanes.py) does
        not wait idle. Nothing without a cache root (there would be nowhere to keep them).
        Returns the UNet passes spent."""
        p = ctx.params
        if ctx.cache_root is None or not examples:
            return 0
        emit = ctx.progress or (lambda e: None)
        rows = race_rounds(p.draws)[0] if p.race else list(range(p.draws))
        resolution = ctx.config.resolution or ctx.components.spec.resolution
        total = len(examples) * len(rows)

        def progress(event):
            if event.stage == "score":
                event = ProgressEvent("score", event.step * len(rows), total,
                                      message=f"backbone losses: {len(examples)} candidates x {len(rows)} draws")
            emit(event)

        counts: dict[str, int] = {}
        for captions in [None] + ([[""] * len(examples)] if self.prompt_specific else []):
            loss_matrix(ctx.components, examples, resolution, None, ctx.config, draws=p.draws, seed=p.score_seed,
                        batch_size=p.batch_size, cache_root=ctx.cache_root, rows=rows, captions=captions,
                        progress=progress, cancel=ctx.cancel, counts=counts)
        return counts.get("passes", 0)

    def __call__(self, ctx, examples: Sequence[Example], surrogate: dict[str, torch.Tensor]) -> ScoreResult:
        p = ctx.params
        resolution = ctx.config.resolution or ctx.components.spec.resolution
        emit = ctx.progress or (lambda e: None)
        n = len(examples)
        total = planned_passes(n, p.draws, p.m) if p.race else p.draws * n
        done = 0  # (draw, candidate) pairs scored so far
        counts: dict[str, int] = {}  # UNet passes spent, and those the reference cache saved
        raw = np.full((p.draws, n), np.nan)  # Delta's per-draw entries, before any subtraction
        timesteps = [0] * p.draws

        def evaluate(rows: list[int], idx: np.ndarray) -> np.ndarray:
            nonlocal done
            subset = [examples[i] for i in idx]

            def progress(event):  # this round's candidates -> the whole scoring's bar
                if event.stage == "score":
                    event = ProgressEvent("score", done + event.step * len(rows), total,
                                          message=f"{len(idx)} candidates x {len(rows)} draws")
                emit(event)

            common = dict(draws=p.draws, seed=p.score_seed, batch_size=p.batch_size, cache_root=ctx.cache_root,
                          rows=rows, progress=progress, cancel=ctx.cancel, counts=counts)
            part, ts = split_loss_matrix(ctx, subset, resolution, surrogate, **common)
            raw[np.ix_(rows, idx)] = part
            for r, t in zip(rows, ts):
                timesteps[r] = t
            if self.prompt_specific:
                unconditional, _ = split_loss_matrix(ctx, subset, resolution, surrogate,
                                                     captions=[""] * len(subset), **common)
                part = part - unconditional
            done += len(rows) * len(idx)
            return part

        rank = lambda matrix: aggregate(matrix, p.standardise)  # noqa: E731
        if p.race:
            matrix = race(evaluate, n, p.draws, p.m, rank, p.negative_fraction)
        else:
            matrix = evaluate(list(range(p.draws)), np.arange(n))
        full = int((~np.isnan(raw)).all(axis=0).sum())
        return ScoreResult(rank(matrix), np.nanmean(raw, axis=0), counts.get("passes", 0),
                           {"timesteps": timesteps, "raced": p.race, "fully_scored": full,
                            "reference_passes_cached": counts.get("reference_cached", 0)})


SCORES: dict[str, Score] = {s.name: s for s in (LossReductionScore(), LossReductionScore(prompt_specific=True))}


def get_score(name: str) -> Score:
    if name not in SCORES:
        raise InputError(f"Unknown ALBAT score {name!r}; choose one of {', '.join(SCORES)}.")
    return SCORES[name]


# --- adapters -----------------------------------------------------------------------------

def _load_adapters(unet, config: TrainConfig, surrogate, reference) -> dict[str, str | None]:
    lora = LoraConfig(r=config.rank, lora_alpha=config.lora_alpha, target_modules=list(config.target_modules))
    names = {"surrogate": SURROGATE, "reference": None}
    unet.add_adapter(lora, adapter_name=SURROGATE)
    set_peft_model_state_dict(unet, surrogate, adapter_name=SURROGATE)
    if reference is not None:
        unet.add_adapter(lora, adapter_name=REFERENCE)
        set_peft_model_state_dict(unet, reference, adapter_name=REFERENCE)
        names["reference"] = REFERENCE
    return names


def _loss_with(components, adapter: str | None, latents, cond, noise, t) -> torch.Tensor:
    unet = components.denoiser
    if adapter is None:
        if getattr(unet, "peft_config", None):  # no adapter loaded: the backbone as it is
            unet.disable_adapters()
    else:
        unet.enable_adapters()
        unet.set_adapter(adapter)
    return components.family.loss(components, latents, cond, noise, t)
