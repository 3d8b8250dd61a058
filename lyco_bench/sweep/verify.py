"""``lyco-bench verify STORE``: hash every file a store's done jobs recorded; list what is damaged.

Each damaged job is marked damaged in its done marker, so that ``plan`` lists it and the next
``run`` rebuilds it. The caches' shards (latents, features) are checked against the sha256 in
their metadata; a damaged one is removed (its entries are computed again by whatever needs them).
Nothing else is written or removed. Exit code 0: nothing damaged; 1: damage found (and marked);
2: STORE is not a store.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lyco_bench.errors import BadInput
from lyco_bench.sweep.integrity import Damage, describe_damage
from lyco_bench.sweep.store import DONE_SUFFIX, StudyStore


def studies_in(path: Path) -> list[StudyStore]:
    """The study stores under ``path``: ``path`` itself (``<store>/<study>``) or its studies."""
    if not path.is_dir():
        raise BadInput(f"{path}: no such store folder")
    if (path / "jobs").is_dir():
        return [StudyStore(path.resolve())]
    studies = [StudyStore(p.resolve()) for p in sorted(path.iterdir()) if (p / "jobs").is_dir()]
    if not studies:
        raise BadInput(f"{path}: not a store (no <study>/jobs folder in it)")
    return studies


def verify_study(store: StudyStore) -> list[tuple[str, Damage]]:
    """(job id, damage) of every damaged done job of one study store; marks each one damaged."""
    found = []
    for name in sorted(p.name for p in store.jobs_dir.glob(f"*{DONE_SUFFIX}")):
        job_id = name[: -len(DONE_SUFFIX)]
        marker = store.read_marker(job_id)
        if marker is None:
            found.append((job_id, [(f"jobs/{name}", "unreadable done marker: the job reruns")]))
            continue
        damage = store.damage(marker, hashes=True) + _state_damage(store, marker)
        if damage:
            store.mark_damaged(job_id, damage)
            found.append((job_id, damage))
    return found


def cache_damage(store: StudyStore, known: set[str]) -> Damage:
    """Damaged shards of the store's caches (not already in ``known``), removed."""
    from lyco_bench.shards import shard_damage

    found: Damage = []
    for shard in sorted(store.cache_dir.rglob("*.safetensors")) if store.cache_dir.is_dir() else []:
        rel = str(shard.relative_to(store.root))
        why = None if rel in known else shard_damage(shard)
        if why:
            shard.unlink(missing_ok=True)
            found.append((rel, f"{why}; removed, recomputed when needed"))
    return found


def _state_damage(store: StudyStore, marker: dict[str, Any]) -> Damage:
    """A train job's resume states, checked against the size and sha256 in their run records."""
    import json

    from lyco_bench.sweep.integrity import file_damage

    if marker.get("kind") != "train":
        return []
    found: Damage = []
    for rel in marker.get("outputs", {}):
        state = store.root / rel.replace(".json", ".state.safetensors")
        if not rel.endswith(".json") or not state.is_file():
            continue
        try:
            record = json.loads((store.root / rel).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # the record itself is checked (and reported) as an output
        if "state_sha256" in record:
            why = file_damage(state, record["state_bytes"], record["state_sha256"], hashed=True)
            if why:
                found.append((str(state.relative_to(store.root)), why))
    return found


def cmd_verify(args: argparse.Namespace) -> int:
    total = 0
    for store in studies_in(Path(args.store)):
        damaged = verify_study(store)
        jobs = len(store.marker_ids())
        for job_id, damage in damaged:
            for rel, why in damage:
                print(f"damaged  {store.root.name}/{rel}: {why} (job {job_id})")
        known = {rel for _, damage in damaged for rel, _ in damage}
        for rel, why in cache_damage(store, known):
            print(f"damaged  {store.root.name}/{rel}: {why}")
            total += 1
        total += len(damaged)
        print(f"verify {store.root.name}: {jobs} done jobs checked, {len(damaged)} damaged")
        if damaged:
            print(f"  marked for rerun ({describe_damage(damaged[0][1])}); `lyco-bench run` rebuilds them")
    return 1 if total else 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "verify",
        help="hash every file in a store; list damaged ones and mark their jobs for rerun",
        description=(
            "Check every file that the done jobs of a store recorded (size and sha256) and the "
            "resume states of training runs. Damaged jobs are listed and marked, so that `plan` "
            "shows them and `run` rebuilds them. Exit code: 0 nothing damaged, 1 damage found, "
            "2 not a store."
        ),
    )
    p.add_argument("store", help="a store folder (all its studies) or one study's folder in it")
    p.set_defaults(func=cmd_verify)
