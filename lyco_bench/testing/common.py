"""Helpers shared by the conformance checks: failure messages that name the plug-in and the
property, tolerant comparison, seeded perturbation, and a plug-in's declared exemptions."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import NoReturn

import torch
from torch import nn

# float64 round-off through a few products and sums of tiny layers; anything above is a real
# mismatch (a wrong scale or a missing term is off by order 1e-2 or more).
RTOL, ATOL = 1e-7, 1e-9


@dataclass(frozen=True)
class Failure:
    """Raises AssertionError ``<kind> <name> [<where>]: <property>: <message>``."""

    plugin: str
    where: str = ""
    property: str = ""

    def at(self, where: str) -> Failure:
        return Failure(self.plugin, where, self.property)

    def prop(self, name: str) -> Failure:
        return Failure(self.plugin, self.where, name)

    def __call__(self, message: str) -> NoReturn:
        head = self.plugin + (f" [{self.where}]" if self.where else "")
        raise AssertionError(f"{head}: {self.property or 'conformance'}: {message}")


def close(got: torch.Tensor, want: torch.Tensor, fail: Failure, message: str) -> None:
    """``fail(message)`` with the largest difference unless ``got`` ≈ ``want`` (shapes equal)."""
    if tuple(got.shape) != tuple(want.shape):
        fail(f"{message} (shape {tuple(got.shape)} vs {tuple(want.shape)})")
    got, want = got.double(), want.double()
    if not torch.allclose(got, want, rtol=RTOL, atol=ATOL):
        fail(f"{message} (max |difference| {float((got - want).abs().max()):.3g})")


def perturb(module: nn.Module, seed: int, std: float = 0.5) -> None:
    """Add seeded Gaussian noise to every floating-point parameter (away from the zero init)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            if param.is_floating_point():
                noise = torch.randn(param.shape, generator=gen, dtype=torch.float64)
                param.add_(noise.to(param.dtype) * std)


def exempt(plugin: object, properties: Iterable[str], fail: Failure) -> set[str]:
    """The properties ``plugin`` declares exempt (ClassVar ``conformance_exempt``: property →
    reason); an unknown property name or an empty reason is itself a failure."""
    declared = dict(getattr(plugin, "conformance_exempt", {}) or {})
    known = set(properties)
    for name, reason in declared.items():
        if name not in known:
            fail.prop("conformance_exempt")(f"unknown property {name!r} (known: {sorted(known)})")
        if not str(reason).strip():
            fail.prop("conformance_exempt")(f"{name!r} is exempt without a reason")
    return set(declared)
