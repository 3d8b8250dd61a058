"""Adapter files: safetensors in the kohya/LyCORIS layout, read and written safely.

A file maps ``<module key>.<suffix>`` → tensor, e.g. ``lora_unet_…_to_q.lora_down.weight`` or
``lora_te_…_fc1.hada_w1_a``, plus string metadata. Reading never unpickles anything: the
8-byte header length and the JSON header are checked before safetensors parses the file, so a
pickle (or anything else) is reported as "not a safetensors file". Each module's algorithm is
detected from its key suffixes (:func:`lyco_bench.adapters.base.detect_algorithm`).
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lyco_bench.adapters.base import detect_algorithm
from lyco_bench.adapters.norm import NormAdapter
from lyco_bench.errors import BadInput
from lyco_bench.shards import SAFETENSORS_DTYPES, safetensors_bytes  # noqa: F401 - re-exported
from lyco_bench.utils import atomic_path

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors format's own limit


@dataclass
class AdapterFile:
    """A loaded adapter file: its tensors, metadata and the algorithm of each module."""

    path: Path | None
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)
    modules: dict[str, type] = field(default_factory=dict)
    """module key → algorithm class (an AdapterModule subclass, or NormAdapter)."""

    @property
    def name(self) -> str:
        return str(self.path) if self.path is not None else "<adapter>"

    def module_tensors(self, key: str) -> dict[str, torch.Tensor]:
        """One module's tensors keyed by suffix (``lora_down.weight``, ``alpha``, …)."""
        prefix = key + "."
        return {k[len(prefix) :]: v for k, v in self.tensors.items() if k.startswith(prefix)}

    def algorithms(self) -> dict[str, int]:
        """Algorithm name → number of modules."""
        counts: dict[str, int] = {}
        for cls in self.modules.values():
            counts[cls.algo] = counts.get(cls.algo, 0) + 1
        return counts


def _check_header(path: Path) -> None:
    """Raise BadInput unless ``path`` starts like a safetensors file (u64 length + JSON object)."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise BadInput(f"{path}: not a safetensors file (too short)")
        (length,) = struct.unpack("<Q", head)
        if length < 2 or length > MAX_HEADER_BYTES or 8 + length > size:
            raise BadInput(f"{path}: not a safetensors file (bad header length)")
        header = fh.read(length)
    try:
        parsed = json.loads(header.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BadInput(f"{path}: not a safetensors file (header is not JSON)") from None
    if not isinstance(parsed, dict):
        raise BadInput(f"{path}: not a safetensors file (header is not a JSON object)")


def read_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file; BadInput naming the file if it is not one."""
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path}: no such file")
    _check_header(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            metadata = dict(fh.metadata() or {})
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118 (safe_open API)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise BadInput(f"{path}: unreadable safetensors file ({str(exc).splitlines()[0]})") from None
    return tensors, metadata


def metadata_hints(metadata: dict[str, str]) -> frozenset[str]:
    """Algorithm names a file's metadata gives: lyco-bench's ``lyco_bench.algo`` (``a`` or ``a+b``)
    and LyCORIS's ``algo`` in ``ss_network_args``, translated through the registry's aliases."""
    from lyco_bench.adapters.base import get_algorithm

    names = set(metadata.get("lyco_bench.algo", "").split("+"))
    try:
        names.add(str(json.loads(metadata.get("ss_network_args", "{}")).get("algo", "")))
    except (ValueError, AttributeError):
        pass
    hints = set()
    for name in names - {""}:
        try:
            hints.add(get_algorithm(name).algo)
        except BadInput:
            continue  # an algorithm this installation does not have: detect by keys
    return frozenset(hints)


def detect_modules(
    tensors: dict[str, torch.Tensor], *, name: str, hints: frozenset[str] = frozenset()
) -> dict[str, type]:
    """Group ``<module>.<suffix>`` keys by module and detect each module's algorithm
    (``hints``: algorithms named by the file's metadata, :func:`metadata_hints`)."""
    suffixes: dict[str, set[str]] = {}
    for key in tensors:
        module, dot, suffix = key.partition(".")
        if not dot or not suffix:
            raise BadInput(f"{name}: key {key!r} is not <module>.<suffix>")
        suffixes.setdefault(module, set()).add(suffix)
    modules: dict[str, type] = {}
    for module, found in sorted(suffixes.items()):
        if NormAdapter.detect_keys <= found and found <= NormAdapter.file_keys:
            modules[module] = NormAdapter
        else:
            modules[module] = detect_algorithm(found, name=f"{name}: {module}", hints=hints)
    return modules


def load_adapter(path: str | os.PathLike, *, allow_nonfinite: bool = False) -> AdapterFile:
    """Read an adapter file (ours, LyCORIS's or kohya's) and detect each module's algorithm.

    A NaN or ±inf anywhere is BadInput naming the file and the module: merged into a model it
    would silently turn every image black. ``allow_nonfinite`` is for ``adapter inspect``, which
    shows such a file before refusing it (:func:`nonfinite_modules`).
    """
    tensors, metadata = read_tensors(path)
    if not tensors:
        raise BadInput(f"{path}: the file holds no tensors")
    modules = detect_modules(tensors, name=str(path), hints=metadata_hints(metadata))
    file = AdapterFile(path=Path(path), tensors=tensors, metadata=metadata, modules=modules)
    if not allow_nonfinite:
        check_finite(file)
    return file


def nonfinite_modules(file: AdapterFile) -> list[str]:
    """Keys of the modules holding a NaN or ±inf value, sorted."""
    bad = {
        key.partition(".")[0]
        for key, tensor in file.tensors.items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    }
    return sorted(bad)


def check_finite(file: AdapterFile) -> None:
    """BadInput ``<file>: <module>: NaN or inf values …`` unless every tensor is finite."""
    bad = nonfinite_modules(file)
    if bad:
        more = f" (and {len(bad) - 1} more modules)" if len(bad) > 1 else ""
        raise BadInput(f"{file.name}: {bad[0]}: holds NaN or inf values{more}")


def as_adapter_file(source: str | os.PathLike | AdapterFile) -> AdapterFile:
    return source if isinstance(source, AdapterFile) else load_adapter(source)


def in_layer_keys(file: AdapterFile, key_map: object | None) -> AdapterFile:
    """``file`` with its modules keyed by layer, for a model family whose files have their own
    layout (``KeyMap.from_file``: FLUX's fused BFL layers); the file itself otherwise."""
    from_file = getattr(key_map, "from_file", None)
    if from_file is None:
        return file
    tensors = from_file(file.tensors, file.modules, file.name)
    converted = adapter_file_from_tensors(tensors, file.metadata)
    converted.path = file.path
    return converted


def adapter_file_from_tensors(
    tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> AdapterFile:
    """An in-memory AdapterFile (e.g. from extraction or a live network), validated like a file."""
    metadata = dict(metadata or {})
    modules = detect_modules(tensors, name="<adapter>", hints=metadata_hints(metadata))
    return AdapterFile(path=None, tensors=dict(tensors), metadata=metadata, modules=modules)


# safetensors dtype names (https://github.com/huggingface/safetensors, format spec)
def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write tensors + string metadata as safetensors, atomically (temp file + rename), with
    deterministic bytes."""
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"metadata {key!r}: keys and values must be str")
    data = safetensors_bytes(tensors, metadata)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def rank_bound(cls: type, tensors: dict[str, torch.Tensor]) -> int | None:
    """The algorithm's bound on rank(ΔW) for one module, when it defines one."""
    fn = getattr(cls, "rank_bound", None)
    if fn is None:
        return None
    return int(fn(tensors))


def parameter_count(cls: type, tensors: dict[str, torch.Tensor]) -> int:
    """Trained numbers in one module, as its algorithm counts them (settings stored as tensors,
    such as ``alpha`` or (IA)³'s ``on_input``, are not parameters)."""
    count = getattr(cls, "parameter_count", None)
    if count is not None:
        return int(count(tensors))
    return sum(t.numel() for k, t in tensors.items() if k != "alpha")


__all__ = [
    "AdapterFile",
    "adapter_file_from_tensors",
    "as_adapter_file",
    "check_finite",
    "detect_modules",
    "in_layer_keys",
    "load_adapter",
    "nonfinite_modules",
    "parameter_count",
    "rank_bound",
    "read_tensors",
    "safetensors_bytes",
    "save_tensors",
]
