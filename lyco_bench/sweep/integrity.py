"""Verified artifacts: every file a job leaves in the store is recorded with its size and sha256.

A done marker lists the job's outputs: a file as ``{"kind": "file", "bytes", "sha256"}``, a
folder (a generate job's images) as ``{"kind": "dir", "files", "bytes", "entries": {name: [bytes,
sha256]}}``. Each file is hashed once, when the job that wrote it finishes; after that:

- ``plan`` and ``run`` compare sizes only (one ``stat`` per file: fast at any store size);
- a job about to run hashes the outputs of the jobs it reads (it reads those files anyway), so a
  damaged checkpoint, feature shard or image is caught before it is used;
- ``run`` hashes the small files the results table is built from (score tables, run records);
- ``lyco-bench verify`` hashes everything.

A mismatch is damage: the file is named, removed, and its job is marked damaged, so it reruns and
rebuilds what is missing from its last intact state (training resumes from the last intact
checkpoint, generation regenerates the missing images; both are deterministic, so the rebuilt
files equal the lost ones).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lyco_bench.utils import sha256_file

# Bookkeeping written into an output folder by the store itself (rewritten on every claim).
SKIPPED_ENTRIES = {"job.json"}

Damage = list[tuple[str, str]]  # (path relative to the study store, what is wrong)


def describe_output(path: Path, root: Path) -> tuple[str, dict[str, Any]]:
    """(path relative to ``root``, its record): size and sha256 of a file or of each file in a folder."""
    rel = str(path.resolve().relative_to(root))
    if not path.is_dir():
        return rel, {"kind": "file", "bytes": path.stat().st_size, "sha256": sha256_file(path)}
    entries = {}
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        name = file.relative_to(path).as_posix()
        if name not in SKIPPED_ENTRIES and not name.startswith("."):
            entries[name] = [file.stat().st_size, sha256_file(file)]
    total = sum(size for size, _ in entries.values())
    return rel, {"kind": "dir", "files": len(entries), "bytes": total, "entries": entries}


def file_damage(path: Path, size: int, sha256: str | None, *, hashed: bool) -> str | None:
    try:
        actual = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    if actual != size:
        return f"{actual} bytes, recorded {size}"
    if hashed and sha256 is not None:
        try:
            if sha256_file(path) != sha256:
                return "content differs from the recorded sha256"
        except OSError as exc:
            return f"unreadable ({exc.strerror})"
    return None


def output_damage(
    root: Path,
    marker: dict[str, Any],
    *,
    hashes: bool = False,
    entries: bool | Callable[[str], bool] = True,
    first: bool = False,
) -> Damage:
    """What is wrong with the outputs a done marker lists (empty: intact).

    Sizes always; sha256 too with ``hashes``. ``entries``: whether to check the files inside
    output folders (a predicate on the folder's relative path). A pruned marker's folders may
    lack their images (removed after scoring); the ones still there are checked. ``first``: stop
    at the first damaged file (``plan``).
    """
    found: Damage = []
    pruned = bool(marker.get("pruned"))
    for rel, info in marker.get("outputs", {}).items():
        path = root / rel
        if info.get("kind") == "dir":
            if not path.is_dir():
                found.append((rel, "missing folder"))
            elif entries(rel) if callable(entries) else entries:
                found += _dir_damage(path, rel, info.get("entries", {}), hashes=hashes, pruned=pruned)
        else:
            why = file_damage(path, info["bytes"], info.get("sha256"), hashed=hashes)
            if why:
                found.append((rel, why))
        if found and first:
            return found[:1]
    return found


def _dir_damage(path: Path, rel: str, recorded: dict[str, list], *, hashes: bool, pruned: bool) -> Damage:
    found: Damage = []
    for name, (size, sha256) in recorded.items():
        file = path / name
        if pruned and not os.path.lexists(file):
            continue
        why = file_damage(file, size, sha256, hashed=hashes)
        if why:
            found.append((f"{rel}/{name}", why))
    return found


def remove_damaged(root: Path, damage: Damage) -> None:
    """Remove damaged files, so that the job that made them rebuilds them (a missing folder stays)."""
    for rel, _ in damage:
        path = root / rel
        if path.is_file() or path.is_symlink():
            path.unlink(missing_ok=True)


def describe_damage(damage: Damage) -> str:
    """``damaged: <file> (<why>)`` for the first damaged file, with a count of the others."""
    rel, why = damage[0]
    more = f" (+{len(damage) - 1} more files)" if len(damage) > 1 else ""
    return f"damaged: {rel} ({why}){more}"


def check_inputs(job: Any, store: Any) -> list[str]:
    """Hash what ``job`` is about to read; returns the dependencies found damaged (now marked so).

    Its own earlier outputs (a rerun after damage) lose their damaged files, so the stage rebuilds
    them from what is intact. The outputs of its dependencies are hashed — it reads them anyway —
    except the images of folders it reads only through their manifest (a score job's base images).
    """
    from lyco_bench.utils import console

    own = store.read_marker(job.id)
    if own is not None:
        remove_damaged(store.root, store.damage(own, hashes=True))
    reads_images = job.spec.get("images") if job.kind == "score" else None
    damaged = []
    for dep in job.deps:
        marker = store.read_marker(dep)
        if marker is None:
            continue
        whole = reads_images is None or dep == reads_images
        found = store.damage(marker, hashes=True, entries=whole)
        if found:
            console.print(f"[red]damaged[/red] {found[0][0]} ({found[0][1]}): rerunning {marker.get('kind')} "
                          f"{marker.get('name')}", highlight=False)  # fmt: skip
            store.mark_damaged(dep, found)
            remove_damaged(store.root, found)
            store.append_log(
                {"job": dep, "kind": marker.get("kind"), "event": "damaged", "file": found[0][0]}
            )
            damaged.append(dep)
    return damaged
