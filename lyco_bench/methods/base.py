"""The model-level method contract: customizations that are not a ΔW of one layer.

A layer algorithm (lyco_bench.adapters) parametrizes the weight update of frozen Linear/Conv2d
layers. A *model-level method* acts on the pipeline as a whole — new tokens in the text encoder's
embedding table (Textual Inversion), networks on the cross-attention context (Hypernetworks) —
and so defines its own life cycle:

    method = Cls(options)            # its settings (an AlgorithmOptions model), nothing built yet
    method.attach(pipe, concepts=…)  # builds its parameters on first use and hooks into the pipe
    method.caption(text, concept)    # training captions (TI: the trigger becomes its tokens)
    method.prompt(text)              # generation prompts, likewise
    method.save(path) / Cls.from_file(path) / method.load_weights(path)
    method.merge(pipe) → handle / method.unmerge(handle)   where exact (``merges_exactly``)
    method.detach()

It registers like a layer algorithm (``register_algorithm``, the ``lyco_bench.algorithms`` entry
point) under an ``algo`` name, and declares the same class attributes (``Options``,
``default_lr``, ``capacity``, ``lr_grid``, ``aliases``, ``label``), so a study selects it with
``adapter: {algo: …}`` and the sweep, results, SHAP, leaderboard and report treat it like any
algorithm. During training it plays the role of the adapter network (``trainable_parameters``,
``parameter_groups``, ``before_step``, ``save``, ``load_weights``, ``remove``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from lyco_bench.adapters.base import PLUGIN_BASES, AlgorithmOptions, CapacityRule
from lyco_bench.adapters.options import Configurable
from lyco_bench.errors import BadInput


class ModelMethod(Configurable, nn.Module):
    """Base of model-level methods (module docstring)."""

    default_lr: ClassVar[float] = 5e-4
    capacity: ClassVar[CapacityRule | None] = None
    lr_grid: ClassVar[tuple[float, ...] | None] = None
    aliases: ClassVar[tuple[str, ...]] = ()
    text_encoder_gradients: ClassVar[bool] = False
    """Gradients must flow through the (frozen) text encoder to its parameters (TI's embeddings)."""

    def __init__(self, options: AlgorithmOptions | Mapping[str, Any] | None = None, **settings: Any) -> None:
        super().__init__()
        self.options = self.parse_options(options, settings)
        self.multiplier = 1.0
        self._attached = False

    # --- the registry's view of a class (parse_options, label: Configurable) -------------------
    @classmethod
    def truncates(cls) -> bool:
        return False

    @classmethod
    def detects(cls, suffixes: set[str]) -> bool:
        return False  # never a module of a layer-adapter file

    # --- life cycle ------------------------------------------------------------------------------
    def attach(self, pipe: Any, *, concepts: Sequence[Any] = ()) -> ModelMethod:
        """Hook into ``pipe`` (building the parameters the first time, from ``concepts`` where the
        method needs them); returns self."""
        raise NotImplementedError

    def detach(self) -> None:
        """Undo :meth:`attach`; the method keeps its parameters."""
        raise NotImplementedError

    @property
    def merges_exactly(self) -> bool:
        """Whether :meth:`merge` reproduces the attached method exactly (generation then merges)."""
        return False

    def merge(self, pipe: Any) -> Any:
        """Bake the method into the pipeline's weights; returns what :meth:`unmerge` needs."""
        raise BadInput(f"{self.algo}: cannot be merged into the weights exactly; it is attached")

    def unmerge(self, handle: Any) -> None:
        raise NotImplementedError

    def set_multiplier(self, multiplier: float) -> None:
        """λ: how strongly the method acts at generation (1 = as trained)."""
        self.multiplier = float(multiplier)

    # --- text the method rewrites ---------------------------------------------------------------
    def caption(self, text: str, concept: Any) -> str:
        """A training caption of ``concept`` as the method needs it (default: unchanged)."""
        return text

    def prompt(self, text: str) -> str:
        """A generation prompt as the method needs it (default: unchanged)."""
        return text

    # --- training: the part of the adapter network it plays --------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def parameter_groups(self, *, lr: float, text_encoder_lr: float | None = None) -> list[dict]:
        params = self.trainable_parameters()
        return [{"params": params, "lr": lr, "name": self.algo}] if params else []

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())

    def before_step(self, step: int, *, seed: int) -> None:
        """Called before each training step (default: nothing)."""

    def remove(self) -> None:
        if self._attached:
            self.detach()

    # --- files -------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> None:
        raise NotImplementedError

    def load_weights(self, path: str | os.PathLike) -> None:
        """Restore trained parameters from a file this method wrote (resume), in place."""
        raise NotImplementedError

    def tool_files(self, checkpoint: Path, metadata: dict[str, Any] | None = None) -> list[Path]:
        """Files other tools load, written beside a training checkpoint (final path
        ``checkpoint``) when the checkpoint itself is not one of them (default: none)."""
        return []

    @classmethod
    def reads(cls, path: str | os.PathLike, metadata: Mapping[str, str], keys: set[str]) -> bool:
        """Whether a file (its safetensors metadata and tensor keys) is this method's (its own
        layout, or an ecosystem format it reads)."""
        return metadata.get("lyco_bench.algo") == cls.algo

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> ModelMethod:
        """The (unattached) method a file holds; BadInput naming the file when it cannot be read."""
        raise NotImplementedError


PLUGIN_BASES.append(ModelMethod)


def is_model_method(cls: type) -> bool:
    return isinstance(cls, type) and issubclass(cls, ModelMethod)


def tensor_file_keys(path: str | os.PathLike) -> tuple[dict[str, str], set[str]] | None:
    """(metadata, tensor keys) of a safetensors file without loading its tensors; None if it is not one."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {}), set(fh.keys())
    except (SafetensorError, OSError, ValueError, RuntimeError):
        return None


def method_of_file(path: str | os.PathLike) -> type[ModelMethod] | None:
    """The model-level method a file belongs to, or None (a layer-adapter file, or unreadable)."""
    from lyco_bench.adapters import ALGORITHMS

    found = tensor_file_keys(path)
    metadata, keys = found if found is not None else ({}, set())
    for cls in ALGORITHMS.values():
        if is_model_method(cls) and cls.reads(path, metadata, keys):
            return cls
    return None


def free_tensor(values: Sequence[float]) -> torch.Tensor:
    return torch.tensor(list(values), dtype=torch.float32)
