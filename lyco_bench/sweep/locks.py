"""Who holds a job's lock, and a watch that reports jobs left busy instead of waiting on them in silence.

The locks themselves are lyco_bench.sweep.store's: lock generations created with
``O_CREAT|O_EXCL`` (``{host, pid, since}``, mtime refreshed every ``HEARTBEAT_S`` seconds as a
heartbeat), taken over once released or their owner is gone — on this host when no process holds
the job's fcntl host lock (or its pid is dead), on another host after ``STALE_AFTER_S`` seconds
without a heartbeat. fcntl is only ever asked about this host's processes, so the locks hold on a
shared filesystem whose fcntl locks do not reach across hosts (NFS without lockd, some FUSE).

What this module adds is the runner's view of them. A job found busy is usually being worked on
elsewhere and is waited for; :class:`BusyWatch` prints one line (and logs a ``busy`` record) when
its lock stays busy for ``BUSY_REPORT_HEARTBEATS`` heartbeats, and again each time as long again
passes: the holder's host and pid, since when it holds the job, and how old its heartbeat is — a
heartbeat that has stopped says the holder is likely dead and when the lock will be taken over.
A takeover of a stale lock is logged as a ``takeover`` record naming the previous holder.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from lyco_bench.sweep.store import HEARTBEAT_S, STALE_AFTER_S, StudyStore

BUSY_REPORT_HEARTBEATS = 6
"""A job busy this many heartbeats (2 min at 20 s) is reported; then again every as many."""


@dataclass(frozen=True)
class LockHolder:
    """The newest lock generation of a job, as its file says."""

    host: str
    pid: int
    since: float
    """When the holder took the job (its clock, seconds since the epoch)."""
    heartbeat: float
    """The file's mtime: the holder's last heartbeat (the file server's clock)."""
    released: bool
    generation: int

    def heartbeat_age(self, now: float | None = None) -> float:
        return max(0.0, (time.time() if now is None else now) - self.heartbeat)

    def describe(self, now: float | None = None) -> str:
        """``host H pid P since 2026-12-07 04:10:00 UTC, last heartbeat 12 s ago``."""
        since = datetime.fromtimestamp(self.since, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        where = "this host" if self.host == socket.gethostname() else f"host {self.host}"
        return f"{where} pid {self.pid} since {since}, last heartbeat {self.heartbeat_age(now):.0f} s ago"


def lock_holder(store: StudyStore, job_id: str) -> LockHolder | None:
    """The job's newest lock generation, or None when it has none (or it is unreadable right now)."""
    generations = store.lock_generations(job_id)
    if not generations:
        return None
    path = store.lock_generation_path(job_id, generations[-1])
    try:
        owner = json.loads(path.read_text(encoding="utf-8"))
        mtime = path.stat().st_mtime
    except (OSError, ValueError):
        return None  # being written, or taken over meanwhile
    if not isinstance(owner, dict):
        return None
    return LockHolder(
        host=str(owner.get("host", "?")),
        pid=int(owner.get("pid", -1)),
        since=float(owner.get("since", owner.get("at", mtime))),
        heartbeat=mtime,
        released=bool(owner.get("released")),
        generation=generations[-1],
    )


def holder_record(holder: LockHolder | None, now: float | None = None) -> dict[str, Any]:
    """Log fields naming a holder (no environment, no paths beyond the host name)."""
    if holder is None:
        return {"holder": None}
    return {
        "holder_host": holder.host,
        "holder_pid": holder.pid,
        "holder_since": round(holder.since, 3),
        "heartbeat_age_s": round(holder.heartbeat_age(now), 1),
    }


class BusyWatch:
    """Jobs this runner found busy: reported when their lock stays busy ``heartbeats`` heartbeats.

    ``clock`` is monotonic time (the busy span); ``report`` prints a line. A job leaves the watch
    when it is done or runs here (:meth:`clear`).
    """

    def __init__(
        self,
        store: StudyStore,
        *,
        heartbeats: int | None = None,
        heartbeat_s: float | None = None,
        stale_after: float = STALE_AFTER_S,
        report: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        heartbeats = BUSY_REPORT_HEARTBEATS if heartbeats is None else heartbeats
        self.every = heartbeats * (HEARTBEAT_S if heartbeat_s is None else heartbeat_s)
        self.stale_after = stale_after
        self.report = report or _print
        self.clock = clock
        self.first_seen: dict[str, float] = {}
        self.reports: dict[str, int] = {}

    def busy(self, job_id: str, label: str) -> str | None:
        """``job_id`` was found busy (again); returns the line reported, if one is due."""
        now = self.clock()
        first = self.first_seen.setdefault(job_id, now)
        done = self.reports.get(job_id, 0)
        if now - first < self.every * (done + 1):
            return None
        self.reports[job_id] = done + 1
        holder = lock_holder(self.store, job_id)
        line = f"busy {label}: locked for {now - first:.0f} s by " + _holder_text(holder, self.stale_after)
        self.store.append_log(
            {"job": job_id, "event": "busy", "busy_s": round(now - first, 1), **holder_record(holder)}
        )
        self.report(line)
        return line

    def clear(self, job_id: str) -> None:
        self.first_seen.pop(job_id, None)
        self.reports.pop(job_id, None)

    @property
    def watched(self) -> list[str]:
        return list(self.first_seen)


def _holder_text(holder: LockHolder | None, stale_after: float) -> str:
    if holder is None or holder.released:
        # No live generation, yet the lock could not be taken: another process on this host
        # holds the job's host lock (between taking it and creating its generation, or stuck there).
        return "another process on this host (it holds the job's host lock; no lock generation yet)"
    text = holder.describe()
    age = holder.heartbeat_age()
    if holder.host != socket.gethostname() and age > 3 * HEARTBEAT_S:
        left = max(0.0, stale_after - age)
        text += f" — its heartbeat stopped: taken over in {left:.0f} s unless it resumes"
    return text


def _print(line: str) -> None:
    from lyco_bench.utils import console

    console.print(line, highlight=False, markup=False)
