"""Stage records: what a compare stage's folder was computed from, so that resuming reuses only
what is still right.

Each stage folder (a method's selection, its LoRA, a column of preview samples) holds a
``stage.json``: the *key* (a hash of every input that shapes the result), whether the stage
finished, and what it cost. A later run reuses a finished folder whose key matches, resumes an
unfinished one with the same key (training continues from its checkpoints), and clears a
folder whose key differs: ``compare --steps 800`` after a 400-step run retrains, it does not
return the 400-step LoRA.

    >>> stage_key(method="random", m=4) == stage_key(m=4, method="random")
    True
    >>> stage_key(method="random", m=4) == stage_key(method="random", m=3)
    False
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

RECORD = "stage.json"


def stage_key(**inputs) -> str:
    """A short hash of ``inputs`` (JSON-able; key order does not matter)."""
    text = json.dumps(inputs, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class StageRecord:
    """The ``stage.json`` of one stage folder."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / RECORD

    def read(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):  # absent, or cut short by a crash: treated as never run
            return None

    def finished(self, key: str) -> dict | None:
        """The record when the folder holds the finished result for ``key``, else None."""
        record = self.read()
        return record if record and record.get("key") == key and record.get("done") else None

    def start(self, key: str, resume: bool = True) -> None:
        """Prepare the folder to compute ``key``. Partial work made for the same key stays (so
        training resumes from its checkpoints) unless ``resume`` is off; anything made for
        another key is removed, since none of it may leak into the new result."""
        record = self.read()
        if not (resume and record and record.get("key") == key):
            shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._write({"key": key, "done": False})

    def finish(self, key: str, seconds: float, **info) -> dict:
        """Mark the folder finished for ``key``, with its cost; returns the record."""
        record = {"key": key, "done": True, "seconds": seconds, **info}
        self._write(record)
        return record

    def _write(self, record: dict) -> None:
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, indent=1))
        tmp.replace(self.path)  # atomic: a crash never leaves half a record
