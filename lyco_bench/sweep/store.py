"""The run store: one folder per study, done markers, and per-job locks on a shared filesystem.

Layout (docs/internals.md):

    <store>/<study>/study.json                         the resolved study, for humans
    <store>/<study>/assets/                            tiny model, demo dataset, tiny encoders
    <store>/<study>/runs/<config>/<seed>/ckpt-e010.safetensors …
    <store>/<study>/images/base/…, images/<config>/<seed>/e010/…   (manifest.parquet + PNGs)
    <store>/<study>/scores/<config>/<seed>/e010.parquet
    <store>/<study>/cache/                             feature cache, latent cache
    <store>/<study>/jobs/<job id>.done.json            written last, after every output
    <store>/<study>/jobs/<job id>.lock                 host lock: an fcntl lock (filelock), held while working
    <store>/<study>/jobs/<job id>.lock.<n>             lock generation n: {host, pid}, heartbeat; tombstone when released

A job is done only when its done marker exists, is not marked damaged, and every output it lists
is still there with the recorded size (sizes and sha256 are recorded per file: sweep/integrity.py).

Locks. A runner takes a job in two steps. (1) The host lock: a non-blocking fcntl lock on
``<job id>.lock`` (``filelock``), held for the life of the job; the kernel drops it when the process
dies, so on one host no pid is guessed. Taken by another process → the job is busy. Where flock is
unsupported the step is skipped (same-host owners are then judged by pid). (2) A generation: with
``n`` the highest existing generation, the runner judges generation ``n`` free — released
(tombstone), or its owner gone: same host: the host lock is ours / the pid is dead; other host: no
heartbeat (mtime, refreshed every ``HEARTBEAT_S``) for ``stale_after`` seconds — then creates
``<job id>.lock.<n+1>`` with O_CREAT|O_EXCL, re-lists, and backs off (removes its file) if a higher
generation exists. Having won it removes the lower generations. Release replaces the file with a
tombstone by rename (it never disappears), then drops the host lock. So a job keeps its host lock
file and one generation (briefly more while runners contend).

Why at most one runner holds a job (only exclusive create and rename are relied on):
  a. The file of the highest generation ever created, M, always exists: a runner removes only
     generations below one it has created and seen (its own back-off, or a winner's clean-up), and
     release swaps the file by rename. So a listing shows M (or something newer).
  b. A runner creates (observed highest) + 1 ≤ M + 1, so M grows one step at a time and each
     number is created once while it is the newest (O_EXCL: of N runners that judged generation n
     free, exactly one creates n + 1; the others see n + 1 and judge it, by then held).
  c. A laggard acting on an old listing can only create a number below M (the file for M exists);
     its re-listing shows M, so it backs off. A runner wins only the newest generation.
  d. Generation n + 1 is created only after generation n was judged released or gone; a same-host
     runner holds the host lock throughout, so two holders need a wrong "gone" verdict: an
     other-host owner alive without a heartbeat for ``stale_after`` seconds (clock skew, a frozen
     machine) — the limit of any lease on a shared filesystem.
A laggard that wins after the job finished re-checks the done marker (``execute_job``) and skips.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lyco_bench.sweep.integrity import Damage, describe_damage, describe_output, output_damage
from lyco_bench.sweep.joblock import (
    _BUSY,
    _GENERATION,
    HEARTBEAT_S,
    LOCK_SUFFIX,
    STALE_AFTER_S,
    JobLock,
    _drop_host_lock,
    _take_host_lock,
    lock_is_stale,
)
from lyco_bench.utils import atomic_write_json

__all__ = ["DONE_SUFFIX", "HEARTBEAT_S", "LOCK_SUFFIX", "STALE_AFTER_S", "JobLock", "StudyStore", "job_slot",
           "lock_is_stale"]  # fmt: skip

DONE_SUFFIX = ".done.json"


def job_slot(job_id: str) -> str:
    """``<kind>-<name>`` of a job id ``<kind>-<name>-<hash>``: what a changed spec replaces."""
    return job_id.rsplit("-", 1)[0]


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

    def features_dir(self, config: str, seed: int, epoch: int) -> Path:
        """Features of a checkpoint's own images: one shard per encoder and mode (its score job's)."""
        return self.root / "features" / config / str(seed) / f"e{epoch:03d}"

    def class_images_dir(self, count: int) -> Path:
        """The base model's class images for prior preservation (``count`` per class prompt)."""
        return self.root / "images" / "class" / f"n{count}"

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
        """Every file the marker lists (in folders too) exists with its recorded size."""
        return not output_damage(self.root, marker, first=True)

    def damage(self, marker: dict[str, Any], **kwargs: Any) -> Damage:
        """What is wrong with a marker's outputs (``integrity.output_damage``)."""
        return output_damage(self.root, marker, **kwargs)

    def is_done(self, job_id: str, *, whole: bool = False) -> bool:
        """Marker present, not marked damaged, outputs intact; ``whole``: also not pruned."""
        marker = self.read_marker(job_id)
        if marker is None or marker.get("damaged"):
            return False
        if whole and marker.get("pruned"):
            return False
        return self.outputs_intact(marker)

    def mark_damaged(self, job_id: str, damage: Damage) -> None:
        """Record that a done job's outputs are damaged: it is no longer done and will rerun."""
        marker = self.read_marker(job_id)
        if marker is not None:
            atomic_write_json(self.marker_path(job_id), {**marker, "damaged": describe_damage(damage)})

    def write_marker(
        self, job: Any, outputs: list[Path], *, duration_s: float, attempt: int
    ) -> dict[str, Any]:
        """Record ``job`` as done, with the size and sha256 of each output file (hashed once, here).
        Called last, after every output is in place."""
        described = dict(describe_output(Path(path), self.root) for path in outputs)
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
        for old in self.markers_of(job_slot(job.id)) - {job.id}:  # the job it replaces
            self.forget(old)
        return marker

    def forget(self, job_id: str) -> None:
        """Remove a superseded job's marker, lock files and records (its id will not run again)."""
        for path in self.jobs_dir.glob(f"{job_id}.*"):
            path.unlink(missing_ok=True)

    def mark_pruned(self, job_id: str) -> None:
        """Record that a generate job's images were removed after scoring (``images: grids|none``):
        still done for the jobs that read them, to be rerun for any that has yet to."""
        marker = self.read_marker(job_id)
        if marker is not None and not marker.get("pruned"):
            atomic_write_json(self.marker_path(job_id), {**marker, "pruned": True})

    def markers_of(self, slot: str) -> set[str]:
        """Ids of done markers whose job has the kind and name ``slot`` (any spec)."""
        return {job_id for job_id in self.marker_ids() if job_slot(job_id) == slot}

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
        """The job's host lock file (an fcntl lock; the file stays when the lock is dropped)."""
        return self.jobs_dir / f"{job_id}{LOCK_SUFFIX}"

    def lock_generation_path(self, job_id: str, generation: int) -> Path:
        return self.jobs_dir / f"{job_id}{LOCK_SUFFIX}.{generation}"

    def lock_generations(self, job_id: str) -> list[int]:
        """The job's existing lock generations, ascending (one directory listing)."""
        prefix = f"{job_id}{LOCK_SUFFIX}."
        try:
            names = os.listdir(self.jobs_dir)
        except FileNotFoundError:
            return []
        return sorted(
            int(name[len(prefix) :])
            for name in names
            if name.startswith(prefix) and _GENERATION.fullmatch(name[len(prefix) :])
        )

    def try_lock(self, job_id: str, *, stale_after: float = STALE_AFTER_S) -> JobLock | None:
        """Take the job's lock, or None when a live runner holds it. Takes over stale locks.

        Of any number of runners that try at once (one host or many), at most one gets the lock:
        see the module docstring.
        """
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        host_lock = _take_host_lock(self.lock_path(job_id))
        if host_lock is _BUSY:
            return None
        try:
            lock = self._take_generation(job_id, stale_after, host_lock)
        except BaseException:
            if host_lock is not None:
                _drop_host_lock(host_lock)
            raise
        if lock is None and host_lock is not None:
            _drop_host_lock(host_lock)
        return lock

    def _take_generation(self, job_id: str, stale_after: float, host_lock: Any) -> JobLock | None:
        # Same-host owners: gone when the host lock is ours (None: no fcntl locks here, ask the pid).
        host_free = None if host_lock is None else True
        for _ in range(3):
            generations = self.lock_generations(job_id)
            newest = generations[-1] if generations else 0
            if newest and not lock_is_stale(
                self.lock_generation_path(job_id, newest), stale_after=stale_after, host_free=host_free
            ):
                return None
            mine = newest + 1
            lock = JobLock.create(self.lock_generation_path(job_id, mine), host_lock=host_lock)
            if lock is None:  # another runner created it first: judge theirs
                continue
            generations = self.lock_generations(job_id)
            if generations and generations[-1] > mine:
                lock._abandon()  # we acted on an old listing: a newer generation exists
                continue
            for old in generations:  # ours is the newest: the older ones are finished with
                if old < mine:
                    self.lock_generation_path(job_id, old).unlink(missing_ok=True)
            return lock
        return None

    def locked_by_other(self, job_id: str, *, stale_after: float = STALE_AFTER_S) -> bool:
        """Whether a live runner (another one, or this process through another lock) holds the job."""
        generations = self.lock_generations(job_id)
        return bool(generations) and not lock_is_stale(
            self.lock_generation_path(job_id, generations[-1]), stale_after=stale_after
        )
