"""Why a job must run again: the input that changed since the finished job it replaces.

A job's id hashes its spec (every input that changes its output), so an edited input gives the
job a new id while the store still holds the done marker of the old one, under the same kind and
name. Comparing the two specs names the change ("prompt set changed"); a change upstream is
named through the job that consumed it ("images changed: checkpoint retrained: training
settings changed (lr 0.0005 → 0.001)"). A job whose own marker is there but whose outputs are not
intact is damaged ("damaged: runs/lora2/1/ckpt-e001.safetensors (20000 bytes, recorded 41234)").
"""

from __future__ import annotations

from typing import Any

from lyco_bench.sweep.integrity import describe_damage
from lyco_bench.sweep.store import job_slot

# Spec keys → what a user changed when they differ.
REASONS = {
    "run": "training settings changed",
    "model": "model changed",
    "dataset": "dataset changed",
    "references": "dataset images changed",
    "prompts": "prompt set changed",
    "captions": "caption strategy changed",
    "classes": "prompt classes changed",
    "images_per_prompt": "images per prompt changed",
    "sampler": "sampler settings changed",
    "version": "stage output version changed (lyco-bench update)",
    "checkpoint": "checkpoint changed",
    "checkpoint_epochs": "checkpoint epochs changed",
    "checkpoint_every": "checkpoint_every changed (dense checkpoints for the trajectory)",
    "trajectory": "trajectory budget changed",
    "epoch": "epoch changed",
    "images": "images changed",
    "base": "base-model images changed",
    "encoder": "encoder weights or preprocessing changed",
    "encoders": "encoder weights or preprocessing changed",
    "scoring": "scoring settings changed",
    "metrics": "metrics changed",
    "asset": "asset changed",
    "value": "asset settings changed",
}


def stale_reasons(plan: Any, done: set[str]) -> dict[str, str]:
    """Not-done jobs of ``plan`` that replace a finished job of the same kind and name → why."""
    by_slot: dict[str, list[str]] = {}
    for job_id in plan.store.marker_ids():
        by_slot.setdefault(job_slot(job_id), []).append(job_id)
    by_id = plan.by_id()
    reasons: dict[str, str] = {}
    for job in plan.jobs:  # dependencies first, so an upstream reason is known when needed
        if job.id in done:
            continue
        own = plan.store.read_marker(job.id) if job.id in by_slot.get(job_slot(job.id), ()) else None
        if own is not None:  # done once; its outputs are damaged since (or were pruned)
            reasons[job.id] = own.get("damaged") or _own_damage(plan.store, own)
            continue
        old_ids = sorted(by_slot.get(job_slot(job.id), []))
        old = next((m for m in (plan.store.read_marker(i) for i in old_ids) if m and "spec" in m), None)
        if old is not None:
            reasons[job.id] = explain(old["spec"], job.spec, upstream=reasons, jobs=by_id)
    return reasons


def _own_damage(store: Any, marker: dict[str, Any]) -> str:
    damage = store.damage(marker, first=True)
    if damage:
        return describe_damage(damage)
    return "images removed after scoring; needed again" if marker.get("pruned") else "spec changed"


def explain(old: dict[str, Any], new: dict[str, Any], *, upstream: dict[str, str], jobs: dict) -> str:
    """The first inputs whose values differ between two specs, in words."""
    parts = []
    for key in sorted(set(old) | set(new), key=_order):
        if old.get(key) == new.get(key) or key == "kind":
            continue
        what = REASONS.get(key, f"{key} changed")
        value = new.get(key)
        if isinstance(value, str) and value in upstream:  # an upstream job's output identity
            what = f"{what}: {upstream[value]}"
        elif isinstance(value, dict) and isinstance(old.get(key), dict):
            inner = explain(old[key], value, upstream=upstream, jobs=jobs) if key == "checkpoint" else ""
            what = f"{what}: {inner}" if inner else what + _leaf_changes(old[key], value)
        parts.append(what)
    return "; ".join(parts[:2]) + (f" (+{len(parts) - 2} more)" if len(parts) > 2 else "") or "spec changed"


def _leaf_changes(old: dict[str, Any], new: dict[str, Any], limit: int = 2) -> str:
    changes = []
    for path, a, b in _diff(old, new):
        changes.append(f"{path} {_short(a)} → {_short(b)}")
    if not changes:
        return ""
    more = f", +{len(changes) - limit} more" if len(changes) > limit else ""
    return f" ({', '.join(changes[:limit])}{more})"


def _diff(old: Any, new: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _diff(old.get(key), new.get(key), f"{path}.{key}" if path else str(key))
        return out
    return [] if old == new else [(path, old, new)]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


_KEY_ORDER = ["checkpoint", "run", "images", "model", "dataset", "references", "prompts", "version"]


def _order(key: str) -> tuple[int, str]:
    return (_KEY_ORDER.index(key) if key in _KEY_ORDER else len(_KEY_ORDER), key)
