"""The adapter module contract and the algorithm registry.

An algorithm is one subclass of :class:`AdapterModule` in its own file, registered with
:func:`register_algorithm`. It wraps one frozen ``nn.Linear`` or ``nn.Conv2d`` (the "base") and
parametrizes its weight update ΔW (PAPER.md §1):

    W = W0 + λ·ΔW,   forward(x) = base(x) + λ·bypass(x),   bypass(x) = ΔW applied to x

without ever copying W0. Everything else (injection, files, merge, extraction, training,
scoring) is generic over this contract.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from lyco_bench.errors import BadInput

BaseLayer = nn.Linear | nn.Conv2d


class AdapterModule(nn.Module):
    """One adapted layer. Subclasses define parameters, init (ΔW = 0) and ΔW.

    Class attributes:
      algo:        registry name, also written to file metadata (``"lora"``, ``"loha"``, …)
      file_keys:   key suffixes that identify this algorithm in a kohya/LyCORIS file; a module
                   whose suffixes include ``detect_keys`` is loaded by this class.
      detect_keys: the subset of suffixes that identifies the algorithm unambiguously.
    """

    algo: ClassVar[str]
    file_keys: ClassVar[frozenset[str]]
    detect_keys: ClassVar[frozenset[str]]

    def __init__(self, base: BaseLayer, *, multiplier: float = 1.0) -> None:
        super().__init__()
        if not isinstance(base, (nn.Linear, nn.Conv2d)):
            raise TypeError(f"{type(base).__name__} cannot be adapted (Linear or Conv2d only)")
        # Held in a list so the frozen base is not registered as a submodule of the adapter
        # (its weights stay in the host model's state dict, never in the adapter's).
        self._base = [base]
        self.multiplier = multiplier

    @property
    def base(self) -> BaseLayer:
        return self._base[0]

    # --- the maths: each algorithm defines these ---------------------------------------
    def delta_weight(self) -> torch.Tensor:
        """ΔW with the same shape as ``base.weight`` (scale included, multiplier not)."""
        raise NotImplementedError

    def bypass(self, x: torch.Tensor) -> torch.Tensor:
        """ΔW applied to the layer input ``x`` (no bias), the cheapest way this algorithm can."""
        raise NotImplementedError

    def delta_bias(self) -> torch.Tensor | None:
        """Δb, for algorithms that also train the bias (native); None otherwise."""
        return None

    # --- the file layout ----------------------------------------------------------------
    def file_tensors(self) -> dict[str, torch.Tensor]:
        """This module's tensors keyed by file suffix (``lora_down.weight``, ``alpha``, …)."""
        raise NotImplementedError

    @classmethod
    def from_file_tensors(cls, base: BaseLayer, tensors: dict[str, torch.Tensor], *, name: str) -> AdapterModule:
        """Rebuild a module from a file's tensors; BadInput naming ``name`` if shapes do not fit."""
        raise NotImplementedError

    # --- generic behaviour ----------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.multiplier == 0:
            return out
        return out + self.multiplier * self.bypass(x)

    def extra_repr(self) -> str:
        return f"algo={self.algo}, base={tuple(self.base.weight.shape)}, multiplier={self.multiplier}"


ALGORITHMS: dict[str, type[AdapterModule]] = {}


def register_algorithm(cls: type[AdapterModule]) -> type[AdapterModule]:
    """Class decorator: make an algorithm available by its ``algo`` name."""
    if cls.algo in ALGORITHMS and ALGORITHMS[cls.algo] is not cls:
        raise ValueError(f"algorithm {cls.algo!r} registered twice")
    ALGORITHMS[cls.algo] = cls
    return cls


def get_algorithm(name: str) -> type[AdapterModule]:
    try:
        return ALGORITHMS[name]
    except KeyError:
        known = ", ".join(sorted(ALGORITHMS))
        raise BadInput(f"unknown algorithm {name!r} (known: {known})") from None


def detect_algorithm(suffixes: set[str], *, name: str) -> type[AdapterModule]:
    """The algorithm whose ``detect_keys`` are present among a module's key suffixes."""
    for cls in ALGORITHMS.values():
        if cls.detect_keys <= suffixes:
            unknown = suffixes - cls.file_keys
            if unknown:
                raise BadInput(f"{name}: unknown key suffix {sorted(unknown)[0]!r} for {cls.algo}")
            return cls
    raise BadInput(f"{name}: unknown key suffixes {sorted(suffixes)}")
