"""A planned job and how its id is made (``<kind>-<readable>-<hash of its spec>``): the data the
planner (lyco_bench.sweep.planner, which re-exports these) and the modules it calls share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lyco_bench.utils import stable_hash

# Bumped when what a prepare job builds changes (make_tiny_model, make_demo_dataset,
# make_tiny_encoders): every job downstream of the asset becomes stale.
ASSET_VERSIONS = {"model": 1, "dataset": 2, "encoders": 1}


@dataclass(frozen=True)
class Job:
    """One unit of work. ``spec`` is hashed into the id; ``params`` only tell a worker where things are."""

    id: str
    kind: str
    name: str
    spec: dict[str, Any]
    deps: tuple[str, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "name": self.name,
            "spec": self.spec,
            "deps": list(self.deps),
            "params": self.params,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        return cls(
            id=data["id"],
            kind=data["kind"],
            name=data["name"],
            spec=data["spec"],
            deps=tuple(data["deps"]),
            params=data["params"],
        )


def make_job(
    kind: str, name: str, *, spec: dict[str, Any], deps: list[str] | None = None, **params: Any
) -> Job:
    """A job whose id hashes ``spec``; ``deps`` (ordering only) and ``params`` (where its files
    are) are not hashed: a spec names the identity of whatever upstream output it reads."""
    deps = sorted(set(deps or []))
    full_spec = {"kind": kind, **spec}
    return Job(
        id=f"{kind}-{name}-{stable_hash(full_spec)}",
        kind=kind,
        name=name,
        spec=full_spec,
        deps=tuple(deps),
        params=params,
    )
