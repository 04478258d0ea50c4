"""Who runs a job, and whether that worker is still alive.

A worker renews ``heartbeat_at`` every ``heartbeat_s``; any worker (or the app's embedded
one) re-queues a running job whose heartbeat is older than ``stale_after_s``. A worker on the
same machine, in the same process namespace, can also see at once that the holder's process
is gone (pid absent, or reused by a process that started at another time), so a job whose
worker was SIGKILLed is re-queued as soon as another worker there looks, without waiting.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from functools import lru_cache


@lru_cache(maxsize=1)
def host_key() -> str:
    """hostname + boot id + pid namespace: equal only where pids mean the same processes."""
    parts = [socket.gethostname()]
    try:
        parts.append(open("/proc/sys/kernel/random/boot_id").read().strip())
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    except OSError:  # no /proc (macOS): liveness comes from heartbeats alone
        parts.append(f"nokey-{os.getpid()}-{id(parts)}")
    return ":".join(parts)


def process_start(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, None if there is no such process."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # the command name may contain spaces
    if fields[0] == "Z":  # a zombie is dead
        return None
    return int(fields[19])


@dataclass(frozen=True)
class WorkerId:
    name: str    # "host:pid", shown to users
    lease: dict  # {"host": host_key, "pid": ..., "start": ...}

    @classmethod
    def current(cls) -> "WorkerId":
        pid = os.getpid()
        return cls(f"{socket.gethostname()}:{pid}", {"host": host_key(), "pid": pid, "start": process_start(pid)})


def holder_is_dead(lease: dict | None) -> bool:
    """True only when certain: the lease holder ran on this machine and its process is gone."""
    if not lease or lease.get("host") != host_key() or lease.get("start") is None:
        return False
    return process_start(int(lease["pid"])) != lease["start"]
