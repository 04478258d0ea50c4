"""Methods side by side: each method's select -> train chain in its own lane (thread), on its own
copy of the model, when the model is small enough for a CPU to train several at once.

A tiny model's training step barely uses a second CPU thread (shapes: 20.4 s per 100 steps at 2
threads, 21.6 s at 1), so the example job's two methods, one per core, finish in little more
than the longer one's time instead of the sum. The preset says how many lanes pay off
(``ModelSpec.method_lanes``: 2 for shapes, 1 for the GPU presets, which would not fit twice).

The lanes also share ALBAT's selection, the longest stage: the plain LoRA's lane trains ALBAT's
surrogate first while ALBAT's lane computes the backbone's losses on its candidates (the half of
the score that needs no surrogate). The plain lane then draws the class images both trainings
need and lends its model copy to ALBAT's score (:class:`~bat_app.lending.LaneHelp`): each scoring
round's batches of candidates go to whichever copy is free, until ALBAT's selection ends; only
then does the plain lane train its own LoRA. Without that, ALBAT's
lane (selection, then training) was the example job's critical path by ~40 s while the plain
lane finished early and left its core idle. In a job of just these two methods the plain lane,
once done, lends its copy once more, for ALBAT's preview column (half the prompts each).

A lane also draws its method's preview column as soon as its LoRA is trained while another lane
is still busy (the base column goes to the first lane done), so the previews fill the time the
shorter lane would sit idle; the last lane leaves its column to the preview stage, which draws
it with every thread.

What stays as in the sequential run:
- every stage's record and key (``run.select``/``run.train`` are called unchanged per method),
  so resuming, reuse and results do not depend on how many lanes ran;
- random/CLIP/prior take as many items as ALBAT kept: their chains wait for ALBAT's selection;
- one progress stream: the record shows one stage at a time, so only the lead lane (the first
  chain still running, ALBAT's when it is asked for: the longest) reports; the others report
  their stage changes only once they lead;
- a cancel stops every lane; an error in one stops the others and is the one raised.

Each lane gets ``torch threads // lanes`` threads (at least 1).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from ..errors import Cancelled
from ..lending import LaneHelp
from ..progress import ProgressEvent

# ALBAT first (the longest chain, and the others' m waits for it), then the plain LoRA.
CHAIN_ORDER = ("albat", "none", "clip", "random", "prior")
WAITS_FOR_ALBAT = ("clip", "random", "prior")
HELPS_ALBAT = "none"  # the chain that lends its model to ALBAT's score before its own work


def lane_count(run, methods: list[str]) -> int:
    """How many lanes this run gets: 1 (one method after another) unless the model runs on the
    CPU, its preset allows more, and there are methods and cores for them. ``BAT_METHOD_LANES``
    caps it (1: one after another).

    Not the torch thread budget: the app's embedded worker leaves one core to the web server and
    gives the job 1 thread on 2 cores, because two threads of one op wait for each other whenever
    one is preempted; two lanes of 1 thread each never wait for each other."""
    from ..jobs.worker import usable_cores

    components = run.components
    if components.device.type != "cpu":
        return 1
    cap = int(os.environ.get("BAT_METHOD_LANES") or components.spec.method_lanes)
    return max(1, min(components.spec.method_lanes, cap, len(methods), usable_cores()))


class LeadProgress:
    """One progress stream out of several lanes: events of the lead lane pass, the others wait."""

    def __init__(self, emit: Callable[[ProgressEvent], None], order: list[str]):
        self.emit, self.order, self.running = emit, list(order), set(order)
        self.lock = threading.Lock()

    def lane(self, method: str) -> Callable[[ProgressEvent], None]:
        def emit(event: ProgressEvent) -> None:
            with self.lock:
                if method == self.lead():
                    event.method = event.method or method
                    self.emit(event)
        return emit

    def lead(self) -> str | None:
        return next((m for m in self.order if m in self.running), None)

    def others_running(self, method: str) -> bool:
        with self.lock:
            return bool(self.running - {method})

    def finished(self, method: str) -> None:
        with self.lock:
            self.running.discard(method)


def run_in_lanes(run, methods: list[str], lanes: int, select: Callable, train: Callable,
                 load_copy: Callable[[], object], draw: Callable | None = None,
                 before: Callable | None = None) -> None:
    """Select and train every method of ``methods``, ``lanes`` at a time.

    ``select(lane_run, [method])``, ``train(lane_run, [method])`` and ``draw(lane_run, method)``
    (its previews; called only while another chain is still running) are the pipeline's stages;
    ``before(lane_run, method)`` runs first in each chain (the plain LoRA's lane trains ALBAT's
    surrogate there, see ``compare.run.side_by_side``);
    ``lane_run`` is ``run`` with this lane's model copy, progress and cancel (and, in ALBAT's
    lane, ``helper``: the plain lane's model, lent through :class:`LaneHelp` while ALBAT selects,
    when both chains run at once). ``load_copy()`` loads another copy of the model (the first
    lane uses ``run.components``)."""
    import torch

    chains = [m for m in CHAIN_ORDER if m in methods]
    progress = LeadProgress(run.emit, chains)
    stop = threading.Event()                     # a lane failed or the user cancelled: all stop
    albat_selected = threading.Event()
    free = [run.components] + [load_copy() for _ in range(lanes - 1)]  # one model copy per lane
    free_lock = threading.Lock()
    # albat and none are the first two chains (CHAIN_ORDER), so with 2 lanes they run at once
    lending = LaneHelp() if lanes >= 2 and {"albat", HELPS_ALBAT} <= set(chains) else None
    # With more chains the plain lane's copy goes to the next chain instead
    tail = LaneHelp(only_while_serving=True) if lending is not None and len(chains) == 2 else None

    def cancelled() -> bool:
        return stop.is_set() or (run.cancel is not None and run.cancel())

    def chain(method: str) -> None:
        with free_lock:
            components = free.pop()
        try:
            lent = {"helper": lending} if lending is not None and method == "albat" else {}
            lane = replace(run, components=components, emit=progress.lane(method), cancel=cancelled, **lent)
            if before is not None:
                before(lane, method)
            if lending is not None and method == HELPS_ALBAT:
                lending.serve(components, cancelled)
            if method in WAITS_FOR_ALBAT and "albat" in chains:
                while not albat_selected.wait(0.5):
                    if cancelled():
                        raise Cancelled(f"Cancelled before selecting for '{method}'.")
            try:
                select(lane, [method])
            finally:
                if lent:
                    lending.close()
            if method == "albat":
                albat_selected.set()
            if lent:  # ALBAT's preview column: split with the plain lane if that one is done by then
                lane = replace(lane, helper=tail)
            train(lane, [method])
            if draw is not None and (progress.others_running(method) or (lent and tail is not None)):
                draw(lane, method)
            if tail is not None and method == HELPS_ALBAT:
                tail.serve(components, cancelled)
        except BaseException:
            stop.set()
            for lent_copy in (lending, tail):  # nobody waits on work the other lane will never run, or for more
                if lent_copy is not None:
                    lent_copy.close()
                    if method == HELPS_ALBAT:
                        lent_copy.end()
            raise
        finally:
            if tail is not None and method == "albat":
                tail.close()
            progress.finished(method)
            with free_lock:
                free.append(components)

    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads // lanes))  # the lanes share the cores
    try:
        with ThreadPoolExecutor(lanes, thread_name_prefix="bat-lane") as pool:
            futures = [pool.submit(chain, m) for m in chains]
        errors = [f.exception() for f in futures if f.exception() is not None]
    finally:
        torch.set_num_threads(threads)
    # The first real error, not the Cancelled it caused in the other lanes.
    for error in sorted(errors, key=lambda e: isinstance(e, Cancelled)):
        raise error
