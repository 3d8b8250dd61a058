"""One job's lock generation and the host lock beside it (the protocol: :mod:`lyco_bench.sweep.store`,
"Locks", whose ``StudyStore.try_lock`` takes them): a generation file created with
``O_CREAT|O_EXCL`` holding ``{host, pid, since}``, its mtime refreshed every ``HEARTBEAT_S``
seconds by a daemon thread, released by renaming a tombstone over it; the host lock is a
non-blocking fcntl lock (``filelock``) held for the life of the job; and the verdict on whether a
generation's owner is gone (``lock_is_stale``)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any

HEARTBEAT_S = 20.0
STALE_AFTER_S = 300.0
LOCK_SUFFIX = ".lock"
_GENERATION = re.compile(r"[0-9]+")
_BUSY = object()  # the host lock is held by another process
_PROBE = object()  # lock_is_stale: find out whether the host lock is free
HOST_LOCKS = True  # False: generations and heartbeats alone (as where the filesystem lacks flock)


def _take_host_lock(path: Path) -> Any:
    """The job's host lock, held: a ``filelock`` fcntl lock, never waited for.

    Returns the held lock, ``_BUSY`` when another process holds it, or None where fcntl locks are
    unavailable (no flock on the filesystem, no ``filelock``): same-host owners are then judged by pid.
    """
    if not HOST_LOCKS:
        return None
    try:
        from filelock import Timeout, UnixFileLock
    except ImportError:
        return None
    try:  # no soft-lock fallback (filelock ≥ 4): its markers would be a second, different lock
        lock = UnixFileLock(str(path), thread_local=False, fallback_to_soft=False)
    except TypeError:
        lock = UnixFileLock(str(path), thread_local=False)
    try:
        lock.acquire(blocking=False)
    except Timeout:
        return _BUSY
    except (OSError, NotImplementedError):
        return None
    return lock


def _drop_host_lock(lock: Any) -> None:
    try:
        lock.release()
    except (OSError, RuntimeError):
        pass


def _probe_host_lock(generation_path: Path) -> bool | None:
    """Whether no process holds the host lock of the job this generation file belongs to
    (None: unknown — not a generation file, or no fcntl locks here)."""
    name = generation_path.name
    head, _, tail = name.rpartition(".")
    if not head.endswith(LOCK_SUFFIX) or not _GENERATION.fullmatch(tail):
        return None
    lock = _take_host_lock(generation_path.with_name(head))
    if lock is None or lock is _BUSY:
        return None if lock is None else False
    _drop_host_lock(lock)
    return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_is_stale(path: Path, *, stale_after: float = STALE_AFTER_S, host_free: Any = _PROBE) -> bool:
    """Whether a lock generation is free: released (tombstone), or its owner gone.

    Owner on this host: gone when no process holds the job's host lock (``host_free``: True when
    the caller holds it, False when another process does, None when there are no fcntl locks;
    by default probed), or, without a host lock, when its pid is dead. Owner on another host: gone
    after ``stale_after`` seconds without a heartbeat.
    """
    try:
        owner = json.loads(path.read_text(encoding="utf-8"))
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return True
    except (OSError, ValueError):
        owner = None
    if not isinstance(owner, dict):
        # Being written right now, or garbage: judge by age alone.
        try:
            return time.time() - path.stat().st_mtime > stale_after
        except OSError:
            return True
    if owner.get("released"):
        return True
    if owner.get("host") == socket.gethostname():
        if owner.get("host_lock"):
            free = _probe_host_lock(path) if host_free is _PROBE else host_free
            if free is not None:
                return free
        return not _pid_alive(int(owner.get("pid", -1)))
    return age > stale_after


class JobLock:
    """An owned lock generation; a daemon thread touches it every ``HEARTBEAT_S`` seconds.

    ``release()`` replaces the file with a tombstone (by rename: the generation never vanishes,
    so no laggard can create it again), then drops the host lock.
    """

    def __init__(self, path: Path, host_lock: Any = None) -> None:
        self.path = path
        self._host_lock = host_lock
        self._released = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()

    @classmethod
    def create(cls, path: Path, *, host_lock: Any = None) -> JobLock | None:
        """Create generation ``path`` (O_CREAT|O_EXCL), or None when it exists."""
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return None
        owner = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since": time.time(),
            "host_lock": host_lock is not None,
        }
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(json.dumps(owner))
        except OSError:  # a full disk: an empty generation would read as held for STALE_AFTER_S
            path.unlink(missing_ok=True)
            raise
        return cls(path, host_lock)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                return

    def _abandon(self) -> None:
        """Back off: remove our generation (a newer one exists, so nobody can mistake its absence)."""
        self._stop.set()
        self._released = True
        self.path.unlink(missing_ok=True)

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self._stop.set()
        tombstone = self.path.with_name(f"{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            released = {"released": True, "host": socket.gethostname(), "pid": os.getpid(), "at": time.time()}
            tombstone.write_text(json.dumps(released), encoding="utf-8")
            if self.path.exists():  # gone only if a newer generation took over and cleaned up
                os.replace(tombstone, self.path)
            else:
                tombstone.unlink(missing_ok=True)
        except OSError:
            # A full or read-only disk: no stray tombstone; the generation keeps its owner record,
            # which reads as stale once the host lock is dropped below (or the pid is gone).
            with contextlib.suppress(OSError):
                tombstone.unlink(missing_ok=True)
        finally:
            if self._host_lock is not None:
                _drop_host_lock(self._host_lock)
                self._host_lock = None

    def __enter__(self) -> JobLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
