"""A generation folder's files, written off the sampling thread (`lyco-bench generate`).

Sampled batches go through a bounded queue to one writer thread that encodes the PNGs and
appends each batch's manifest rows to a journal (``manifest.parquet.journal``, one JSON row a
line, written after the batch's PNGs); the sampler waits only when the queue is full. The
journal costs O(batch) per batch, and ``manifest.parquet`` is written once per call, when
everything is written — O(n) per checkpoint, where rewriting the table after every batch cost
O(n²). A killed run leaves the PNGs and journal rows of every finished batch (a torn last line
is ignored): the rerun reads the manifest and the journal together and redoes nothing listed.
The final ``manifest.parquet`` has the same bytes whichever way the rows arrived.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lyco_bench.errors import BadInput
from lyco_bench.utils import atomic_path

MANIFEST = "manifest.parquet"
JOURNAL = MANIFEST + ".journal"
MANIFEST_COLUMNS = [
    "file", "prompt", "clip_text", "prompt_class", "category", "concept", "subclass", "prompt_index",
    "image_index", "seed", "group", "concepts", "checkpoint", "adapters", "model", "prompt_set",
    "prompt_set_version", "sampler", "steps", "cfg", "width", "height", "negative_prompt",
]  # fmt: skip
# Columns that must agree between a manifest on disk and a rerun into the same folder.
SETTING_COLUMNS = ["checkpoint", "adapters", "prompt_set_version", "sampler", "steps", "cfg", "width", "height", "negative_prompt"]  # fmt: skip
QUEUE_BATCHES = 2
"""Sampled batches waiting for the writer before the sampler blocks (memory: 2 × batch images)."""


def save_png(array: Any, path: Path) -> None:
    """PNG without timestamps or text chunks: same pixels → same bytes."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG", compress_level=6)


def read_journal(out_dir: Path) -> list[dict[str, Any]]:
    """Rows appended by an unfinished run, in order; a torn or damaged last line is dropped."""
    path = out_dir / JOURNAL
    if not path.is_file():
        return []
    lines = path.read_bytes().split(b"\n")
    rows = []
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            if any(rest.strip() for rest in lines[n + 1 :]):  # damage before the end: not a torn write
                raise BadInput(f"{path}: line {n + 1} is unreadable; remove the file to start over") from None
            break
        if not isinstance(row, dict) or "file" not in row:
            raise BadInput(f"{path}: line {n + 1} is not a manifest row")
        rows.append(row)
    return rows


def read_manifest(
    out_dir: Path, settings: dict[str, Any], *, checked: Sequence[str] = SETTING_COLUMNS
) -> dict[str, dict[str, Any]]:
    """file → row of the manifest and the journal of an unfinished run (the journal's rows win)."""
    import pandas as pd

    path = out_dir / MANIFEST
    rows: dict[str, dict[str, Any]] = {}
    if path.is_file():
        try:
            df = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several error types on a corrupt file
            raise BadInput(
                f"{path}: unreadable manifest ({type(exc).__name__}); remove it to start over"
            ) from None
        missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
        if missing:
            raise BadInput(f"{path}: not a lyco-bench manifest (no column {missing[0]!r})")
        rows = {row["file"]: row for row in df.to_dict("records")}
    journal = read_journal(out_dir)
    for row in journal:
        missing = [c for c in MANIFEST_COLUMNS if c not in row]
        if missing:
            raise BadInput(f"{out_dir / JOURNAL}: a row has no {missing[0]!r}; remove the file to start over")
        rows[row["file"]] = {c: row[c] for c in MANIFEST_COLUMNS}
    source = f"{path}" if not journal else f"{path} (with {JOURNAL})"
    for col in checked:
        values = {row[col] for row in rows.values()}
        if values and values != {settings[col]}:
            old = sorted(values, key=str)[0]
            raise BadInput(
                f"{source}: made with {col}={old!r}, this run has {settings[col]!r}; use another --out folder"
            )
    return rows


def write_manifest(out_dir: Path, rows: dict[str, dict[str, Any]]) -> Path:
    """The whole table, sorted by file, atomically; then the journal it supersedes is removed."""
    import pandas as pd

    df = pd.DataFrame([rows[f] for f in sorted(rows)], columns=MANIFEST_COLUMNS)
    path = out_dir / MANIFEST
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)
    (out_dir / JOURNAL).unlink(missing_ok=True)
    return path


class ImageWriter:
    """One thread that writes each submitted batch: its PNGs, then its rows to the journal.

    ``submit`` blocks only while ``QUEUE_BATCHES`` batches wait. A writer error (full disk…) is
    raised in the sampling thread at its next ``submit`` or at ``close``; the batches already
    written stay valid. Use as a context manager: leaving it waits for every queued batch.
    """

    def __init__(self, out_dir: Path, *, max_batches: int = QUEUE_BATCHES):
        self.out_dir = out_dir
        self._queue: queue.Queue = queue.Queue(maxsize=max_batches)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="lyco-bench-png-writer", daemon=True)
        self._thread.start()

    def submit(self, batch: list[tuple[str, Any, dict[str, Any]]]) -> None:
        """Queue ``(relpath, uint8 image, manifest row)`` triples to be written in this order."""
        self._raise()
        self._queue.put(batch)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self._raise()

    def __enter__(self) -> ImageWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _run(self) -> None:
        journal = None
        try:
            while (batch := self._queue.get()) is not None:
                if self._error is not None:
                    continue  # keep draining so that submit/close never block on a dead writer
                try:
                    for relpath, image, _ in batch:
                        save_png(image, self.out_dir / relpath)
                    if journal is None:
                        journal = _open_journal(self.out_dir / JOURNAL)
                    text = "".join(json.dumps(row, sort_keys=True) + "\n" for _, _, row in batch)
                    journal.write(text.encode("utf-8"))
                    journal.flush()  # a killed process keeps the rows of every written batch
                except BaseException as exc:  # handed to the sampling thread
                    self._error = exc
        finally:
            if journal is not None:
                journal.close()


def _open_journal(path: Path) -> Any:
    """The journal opened for appending, a torn last line (a killed writer's) cut off first."""
    handle = open(path, "ab")  # noqa: SIM115 - closed by the writer thread
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1
    if keep != len(data):
        handle.truncate(keep)
    return handle
