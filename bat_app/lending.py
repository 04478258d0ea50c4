"""A model copy lent from one thread to another's work (compare/lanes.py: the plain LoRA's lane
lends its copy to ALBAT's score and to the last preview column).

    lending = LaneHelp()
    # lender thread:   lending.serve(components, stop)        (blocks until closed)
    # borrower thread: future = lending(lambda components: work(components))
    #                  value = result_or_cancel(future, cancel) if future is not None else work(mine)
    #                  lending.close()
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future

from .errors import Cancelled


class LaneHelp:
    """One lane's model copy lent to another lane's work: ``lending(fn)`` queues ``fn(components)``
    for the lending lane and returns a Future, or None once that lane has stopped lending (the
    caller then does the work itself).

    The lending lane calls :meth:`serve` (it blocks, running what is queued) and gets its model
    back when the borrower calls :meth:`close` and the queue is empty, or when ``stop()`` says
    the job is cancelled or failed; tasks still queued then fail with Cancelled. Work queued
    before the lender starts serving waits for it: a borrower waiting on a Future must poll its
    own cancel (``result_or_cancel``), since a lender that fails before serving never runs it;
    ALBAT's score waits only for the batches the lender actually took (``albat.score._Chunks``).
    """

    def __init__(self, only_while_serving: bool = False):
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._open = True      # the borrower may still queue work
        self._serving = False
        self._ended = False    # the lender has stopped serving (or never will)
        # True: no queueing for a lender still busy with its own work (it might be busy long)
        self.only_while_serving = only_while_serving

    def __call__(self, fn: Callable) -> Future | None:
        with self._lock:
            if self._ended or (self.only_while_serving and not self._serving):
                return None
            future: Future = Future()
            self._tasks.put((fn, future))
            return future

    def close(self) -> None:
        """The borrower is done: the lender returns once the queue is empty."""
        with self._lock:
            self._open = False

    def serve(self, components, stop: Callable[[], bool]) -> int:
        """Run queued tasks on ``components`` until closed (or stopped); returns how many ran."""
        ran = 0
        with self._lock:
            self._serving = not self._ended
        try:
            while True:
                try:
                    fn, future = self._tasks.get(timeout=0.1)
                except queue.Empty:
                    with self._lock:
                        if not self._open:
                            return ran
                    if stop():
                        return ran
                    continue
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn(components))
                    except BaseException as exc:  # handed to the borrower, who raises it
                        future.set_exception(exc)
                    ran += 1
        finally:
            with self._lock:
                self._serving, self._ended = False, True
            self._fail_queued()

    def end(self) -> None:
        """The lender will not serve (e.g. its chain failed first)."""
        with self._lock:
            self._ended = True
        self._fail_queued()

    def _fail_queued(self) -> None:
        while True:
            try:
                _, future = self._tasks.get_nowait()
            except queue.Empty:
                return
            if future.set_running_or_notify_cancel():
                future.set_exception(Cancelled("The lane lending its model stopped before this work ran."))


def result_or_cancel(future: Future, cancel: Callable[[], bool] | None, what: str = "lent work"):
    """``future.result()``, polling ``cancel`` meanwhile: a lender that stops (its job failed or
    was cancelled) may never run the work, and the borrower must not wait for it forever."""
    while True:
        try:
            return future.result(timeout=0.2)
        except TimeoutError:
            if cancel is not None and cancel():
                future.cancel()
                raise Cancelled(f"Cancelled while waiting for {what}.") from None
