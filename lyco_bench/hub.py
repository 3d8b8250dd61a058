"""The Hugging Face hub as a source of weights: a file in the local cache, a repo's commit.

Shared by the planner's checks of a study's model (:mod:`lyco_bench.sweep.sources`) and the encoder
kinds' source checks (:mod:`lyco_bench.metrics.encoders`), so it sits below both.
"""

from __future__ import annotations

from pathlib import Path

from lyco_bench.errors import BadInput
from lyco_bench.models import hub_offline


def cached_hub_file(repo_id: str, filename: str, revision: str | None = None) -> Path | None:
    """The local copy of ``filename`` of hub repo ``repo_id`` (at ``revision``: a commit, branch or
    tag; None: main) in the Hugging Face cache, or None."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, filename, revision=revision)
    except Exception:  # noqa: BLE001 - an invalid repo id is simply not cached
        return None
    return Path(found) if isinstance(found, str) else None


def hub_identity(
    repo_id: str, marker: str, *, what: str, revision: str | None = None
) -> tuple[str, Path | None]:
    """(``repo@commit``, the cached snapshot folder or None) of a hub repo holding ``marker``, at
    ``revision`` (None: main). The commit is what a sweep's workers load (``repo@commit``).

    Offline and not cached → BadInput; online and not cached → the hub is asked for the commit.
    """
    cached = cached_hub_file(repo_id, marker, revision)
    if cached is not None:
        snapshot = cached.parent
        while snapshot.parent.name != "snapshots" and snapshot != snapshot.parent:
            snapshot = snapshot.parent
        return f"{repo_id}@{snapshot.name}", snapshot
    if hub_offline():
        at = f" at revision {revision}" if revision else ""
        raise BadInput(
            f"{what} {repo_id!r}: not a local path, and not in the local Hugging Face cache{at} "
            "(HF_HUB_OFFLINE is set: download it first, or give a local folder)"
        )
    from huggingface_hub import HfApi

    try:
        info = HfApi().model_info(repo_id, revision=revision, timeout=20)
    except Exception as exc:  # noqa: BLE001 - network, auth and not-found errors alike
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BadInput(
            f"{what} {repo_id!r}: no such local path, and the hub has no such model ({first[:120]})"
        ) from None
    return f"{repo_id}@{info.sha}", None
