"""The run store: one folder per study, done markers, and per-job locks on a shared filesystem.

Layout (docs/internals.md):

    <store>/<study>/study.json                         the resolved study, for humans
    <store>/<study>/assets/                            tiny model, demo dataset, tiny encoders
    <store>/<study>/runs/<config>/<seed>/ckpt-e010.safetensors …
    <store>/<study>/images/base/…, images/<config>/<seed>/e010/…   (manifest.parquet + PNGs)
    <store>/<study>/scores/<config>/<seed>/e010.parquet
    <store>/<study>/cache/                             feature cache, latent cache
    <store>/<study>/jobs/<job id>.done.json            written last, after every output
    <store>/<study>/jobs/<job id>.lock                 held while a runner works on the job

A job is done only when its done marker exists and every output it lists is still there with the
recorded size. Locks are created with O_CREAT|O_EXCL, hold the owner's host and pid, and are
refreshed by a heartbeat; a lock whose owner is gone (same host: pid dead; other host: no
heartbeat for ``stale_after`` seconds) is taken over.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lyco_bench.utils import atomic_write_json, sha256_file

DONE_SUFFIX = ".done.json"
LOCK_SUFFIX = ".lock"
HEARTBEAT_S = 20.0
STALE_AFTER_S = 300.0


@dataclass(frozen=True)
class StudyStore:
    """Paths of one study's store (``root`` is ``<store>/<study>``)."""

    root: Path

    @classmethod
    def open(cls, store: str | os.PathLike, study_name: str) -> StudyStore:
        return cls(Path(store).resolve() / study_name)

    @property
    def jobs_dir(self) -> Path:
        return self.root / "jobs"

    def run_dir(self, config: str, seed: int) -> Path:
        return self.root / "runs" / config / str(seed)

    def images_dir(self, config: str, seed: int, epoch: int) -> Path:
        return self.root / "images" / config / str(seed) / f"e{epoch:03d}"

    @property
    def base_images_dir(self) -> Path:
        return self.root / "images" / "base"

    def scores_path(self, config: str, seed: int, epoch: int) -> Path:
        return self.root / "scores" / config / str(seed) / f"e{epoch:03d}.parquet"

    @property
    def assets_dir(self) -> Path:
        return self.root / "assets"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    @property
    def results_path(self) -> Path:
        return self.root / "results.parquet"

    # --- done markers -----------------------------------------------------------------
    def marker_path(self, job_id: str) -> Path:
        return self.jobs_dir / f"{job_id}{DONE_SUFFIX}"

    def marker_ids(self) -> set[str]:
        """Ids of every job with a done marker (one directory listing, however many jobs)."""
        if not self.jobs_dir.is_dir():
            return set()
        return {n[: -len(DONE_SUFFIX)] for n in os.listdir(self.jobs_dir) if n.endswith(DONE_SUFFIX)}

    def read_marker(self, job_id: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.marker_path(job_id).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def outputs_intact(self, marker: dict[str, Any]) -> bool:
        """Every file the marker lists exists with its recorded size; every folder exists."""
        for rel, info in marker.get("outputs", {}).items():
            path = self.root / rel
            if info.get("kind") == "dir":
                if not path.is_dir():
                    return False
                continue
            try:
                if path.stat().st_size != info["bytes"]:
                    return False
            except OSError:
                return False
        return True

    def is_done(self, job_id: str) -> bool:
        marker = self.read_marker(job_id)
        return marker is not None and self.outputs_intact(marker)

    def write_marker(
        self, job: Any, outputs: list[Path], *, duration_s: float, attempt: int
    ) -> dict[str, Any]:
        """Record ``job`` as done. Called last, after every output is in place."""
        described: dict[str, Any] = {}
        for path in outputs:
            rel = str(Path(path).resolve().relative_to(self.root))
            if Path(path).is_dir():
                files = [p for p in Path(path).rglob("*") if p.is_file()]
                described[rel] = {
                    "kind": "dir",
                    "files": len(files),
                    "bytes": sum(p.stat().st_size for p in files),
                }
            else:
                described[rel] = {
                    "kind": "file",
                    "bytes": Path(path).stat().st_size,
                    "sha256": sha256_file(path),
                }
        marker = {
            "job_id": job.id,
            "kind": job.kind,
            "name": job.name,
            "spec": job.spec,
            "outputs": described,
            "duration_s": round(duration_s, 3),
            "attempt": attempt,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        atomic_write_json(self.marker_path(job.id), marker)
        return marker

    def durations_by_kind(self, job_ids: set[str] | None = None) -> dict[str, list[float]]:
        """Recorded durations of done jobs, per kind (for estimates of the work left)."""
        out: dict[str, list[float]] = {}
        for job_id in self.marker_ids() if job_ids is None else job_ids:
            marker = self.read_marker(job_id)
            if marker and "duration_s" in marker:
                out.setdefault(marker["kind"], []).append(float(marker["duration_s"]))
        return out

    # --- the execution log --------------------------------------------------------------
    @property
    def log_path(self) -> Path:
        return self.jobs_dir / "log.jsonl"

    def append_log(self, entry: dict[str, Any]) -> None:
        """One JSON line per job execution (any runner, any host): who ran what, how it ended.

        A single O_APPEND write of a short line, so concurrent runners do not interleave lines.
        """
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        line = json.dumps({**entry, "host": socket.gethostname(), "pid": os.getpid(), "time": time.time()})
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)

    def read_log(self) -> list[dict[str, Any]]:
        if not self.log_path.is_file():
            return []
        return [json.loads(line) for line in self.log_path.read_text(encoding="utf-8").splitlines() if line]

    # --- locks ------------------------------------------------------------------------
    def lock_path(self, job_id: str) -> Path:
        return self.jobs_dir / f"{job_id}{LOCK_SUFFIX}"

    def try_lock(self, job_id: str, *, stale_after: float = STALE_AFTER_S) -> JobLock | None:
        """Take the job's lock, or None when a live runner holds it. Takes over stale locks."""
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        path = self.lock_path(job_id)
        for _ in range(2):
            lock = JobLock.create(path)
            if lock is not None:
                return lock
            if not lock_is_stale(path, stale_after=stale_after):
                return None
            # The owner is gone: remove its lock and try once more (O_EXCL arbitrates races).
            path.unlink(missing_ok=True)
        return None

    def locked_by_other(self, job_id: str, *, stale_after: float = STALE_AFTER_S) -> bool:
        path = self.lock_path(job_id)
        return path.exists() and not lock_is_stale(path, stale_after=stale_after)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_is_stale(path: Path, *, stale_after: float = STALE_AFTER_S) -> bool:
    """A lock whose owner is gone: dead pid on this host, or no heartbeat for ``stale_after`` s."""
    try:
        owner = json.loads(path.read_text(encoding="utf-8"))
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return True
    except (OSError, ValueError):
        # Being written right now, or garbage: judge by age alone.
        try:
            return time.time() - path.stat().st_mtime > stale_after
        except OSError:
            return True
    if owner.get("host") == socket.gethostname():
        return not _pid_alive(int(owner.get("pid", -1)))
    return age > stale_after


class JobLock:
    """An owned lock file; a daemon thread touches it every ``HEARTBEAT_S`` seconds."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()

    @classmethod
    def create(cls, path: Path) -> JobLock | None:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return None
        owner = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(owner))
        return cls(path)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        self._stop.set()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> JobLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
