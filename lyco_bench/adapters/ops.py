"""Operations on adapter files and model weights: dense ΔW, merge/unmerge, LoRA extraction.

Merging writes W0 ← W0 + Σᵢ λᵢ·ΔWᵢ into the layers in place (any base of the architecture the
files were trained for), after checking every key and shape first, so a bad file leaves the
model untouched. The original weights of touched layers are kept in the returned handle so
:func:`unmerge_adapters` restores them bit for bit.

Extraction ("further compress"): for each layer where tuned ≠ base, the truncated SVD of
D = W_tuned − W_base (flattened to [out, in·k·k]) gives the best rank-r approximation in the
Frobenius norm (Eckart–Young): D ≈ U_r·diag(S_r)·V_rᵀ, stored as lora_up = U_r·diag(S_r),
lora_down = V_rᵀ (a k×k down-conv and a 1×1 up-conv for conv layers), alpha = r (scale 1).
The relative error ‖D − D_r‖_F / ‖D‖_F = sqrt(Σ_{i>r} σᵢ²) / sqrt(Σ σᵢ²) is reported per layer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from torch import nn

from lyco_bench.adapters.fileformat import AdapterFile, as_adapter_file, in_layer_keys
from lyco_bench.adapters.inject import TextEncoders, layer_index
from lyco_bench.errors import BadInput
from lyco_bench.families import key_map_of

Source = str | os.PathLike | AdapterFile


@dataclass
class MergeHandle:
    """What :func:`merge_adapters` changed: layer → (original weight, original bias)."""

    originals: dict[str, tuple[nn.Module, torch.Tensor, torch.Tensor | None]] = field(default_factory=dict)
    sources: list[tuple[str, float]] = field(default_factory=list)
    merged: bool = True


def _resolve(file: AdapterFile, index: dict[str, nn.Module]) -> dict[str, nn.Module]:
    """The layer each module key of ``file`` adapts; BadInput naming the first unknown key."""
    layers = {}
    for key in file.modules:
        if key not in index:
            raise BadInput(f"{file.name}: module {key} matches no layer of the model")
        layers[key] = index[key]
    return layers


def _rebuild(file: AdapterFile, key: str, layer: nn.Module):
    """The adapter module for ``key`` built on ``layer`` (validates shapes; BadInput names it).

    Construction initializes factors with the global RNG before they are overwritten; the RNG
    state is forked so merging never changes what a later seeded computation draws.
    """
    cls = file.modules[key]
    if not isinstance(layer, (nn.Linear, nn.Conv2d)) and cls.algo != "norm":
        raise BadInput(
            f"{file.name}: module {key} is a {type(layer).__name__}, {cls.algo} needs Linear or Conv2d"
        )
    with torch.random.fork_rng(devices=[]):
        try:
            return cls.from_file_tensors(layer, file.module_tensors(key), name=f"{file.name}: {key}")
        except (RuntimeError, TypeError) as exc:
            raise BadInput(
                f"{file.name}: module {key} does not fit layer {tuple(layer.weight.shape)}: {exc}"
            ) from None


def truncate_adapter(source: Source, rank: int) -> AdapterFile:
    """The adapter with every module kept to its first ``rank`` rank components (A1111's
    ``dyn=``: one DyLoRA training evaluated at several ranks); BadInput for an algorithm whose
    factors are not ordered by rank, or a rank above a module's."""
    from lyco_bench.adapters.fileformat import adapter_file_from_tensors

    file = as_adapter_file(source)
    tensors: dict[str, torch.Tensor] = {}
    for key, cls in file.modules.items():
        if not hasattr(cls, "truncate_tensors"):
            raise BadInput(f"{file.name}: {key}: {cls.algo} cannot be truncated to a rank")
        kept = cls.truncate_tensors(file.module_tensors(key), rank, name=f"{file.name}: {key}")
        tensors.update({f"{key}.{suffix}": t for suffix, t in kept.items()})
    truncated = adapter_file_from_tensors(tensors, {**file.metadata, "lyco_bench.rank": str(rank)})
    truncated.path = file.path
    return truncated


def delta_weights(
    file: Source, unet: nn.Module | None, text_encoder: TextEncoders
) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """Dense (ΔW, Δb) per module key of an adapter file, in float32 on the CPU (Δb None unless
    the algorithm changes the bias). The models only supply shapes and W0 (native: ΔW = W − W0)."""
    file = in_layer_keys(as_adapter_file(file), key_map_of(unet))
    layers = _resolve(file, layer_index(unet, text_encoder))
    out = {}
    with torch.no_grad():
        for key, layer in layers.items():
            module = _rebuild(file, key, layer)
            bias = module.delta_bias()
            out[key] = (
                module.delta_weight().detach().float().cpu(),
                None if bias is None else bias.detach().float().cpu(),
            )
    return out


def combined_delta(
    sources: list[tuple[Source, float]], unet: nn.Module | None, text_encoder: TextEncoders
) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """Σᵢ λᵢ·(ΔWᵢ, Δbᵢ) per module key over several files (each file validated in full first)."""
    total: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
    for source, lam in sources:
        for key, (dw, db) in delta_weights(source, unet, text_encoder).items():
            w, b = total.get(key, (torch.zeros_like(dw), None))
            if db is not None:
                b = lam * db if b is None else b + lam * db
            total[key] = (w + lam * dw, b)
    return total


def merge_adapters(
    unet: nn.Module | None, text_encoder: TextEncoders, adapters: list[tuple[Source, float]]
) -> MergeHandle:
    """W0 ← W0 + Σᵢ λᵢ·ΔWᵢ in place for every module of every file; returns the handle for
    :func:`unmerge_adapters`. Everything is validated before the first weight changes.

    Layers are processed one at a time (ΔW built on the layer's device, summed in float32,
    rounded once into the layer's dtype), so peak memory is one layer's ΔW, not the model's.
    The originals of touched layers are kept on the CPU.
    """
    keys = key_map_of(unet)
    files = [(in_layer_keys(as_adapter_file(src), keys), float(lam)) for src, lam in adapters]
    index = layer_index(unet, text_encoder)
    # layer → its key and the (file, key, λ) that touch it; a layer may be named by two files
    # under different keys (text-encoder aliases), so plan by layer identity.
    plan: dict[int, tuple[str, nn.Module, list[tuple[AdapterFile, str, float]]]] = {}
    for file, lam in files:
        for key, layer in _resolve(file, index).items():
            _rebuild(file, key, layer)  # validation only: algorithm fits the layer, shapes fit
            plan.setdefault(id(layer), (key, layer, []))[2].append((file, key, lam))
    handle = MergeHandle(sources=[(f.name, lam) for f, lam in files])
    with torch.no_grad():
        for key, layer, parts in plan.values():
            weight, bias = layer.weight, getattr(layer, "bias", None)
            handle.originals[key] = (
                layer,
                weight.detach().to("cpu", copy=True),
                None if bias is None else bias.detach().to("cpu", copy=True),
            )
            # Σᵢ λᵢ·ΔWᵢ accumulated in place in float32 (one ΔW-sized buffer per layer), then
            # added to W0 once: in place for float32 weights, rounded once for half precision.
            delta_w: torch.Tensor | None = None
            delta_b: torch.Tensor | None = None
            for file, file_key, lam in parts:
                module = _rebuild(file, file_key, layer)
                delta_w = _accumulate(delta_w, module.delta_weight(), lam)
                if bias is not None and module.delta_bias() is not None:
                    delta_b = _accumulate(delta_b, module.delta_bias(), lam)
            _add_into(weight, delta_w)
            if delta_b is not None:
                _add_into(bias, delta_b)
            if not (torch.isfinite(weight).all() and (delta_b is None or torch.isfinite(bias).all())):
                unmerge_adapters(handle)  # nothing half-merged stays behind
                used = ", ".join(f"{file.name}:{lam:g}" for file, _, lam in parts)
                raise BadInput(
                    f"--adapter {used}: merging gives non-finite weights in {key} ({weight.dtype})"
                )
    return handle


def _accumulate(total: torch.Tensor | None, delta: torch.Tensor, lam: float) -> torch.Tensor:
    delta = delta.detach()
    if total is None:
        return delta.float().mul_(lam) if delta.dtype != torch.float32 else delta.mul(lam)
    return total.add_(delta.float(), alpha=lam)


def _add_into(param: torch.Tensor, delta: torch.Tensor) -> None:
    if param.dtype == torch.float32:
        param.add_(delta.to(param.device))
    else:
        param.copy_((param.float() + delta.to(param.device)).to(param.dtype))


def unmerge_adapters(handle: MergeHandle) -> None:
    """Restore the weights :func:`merge_adapters` changed, exactly."""
    if not handle.merged:
        return
    with torch.no_grad():
        for layer, weight, bias in handle.originals.values():
            layer.weight.copy_(weight.to(layer.weight.device))
            if bias is not None:
                layer.bias.copy_(bias.to(layer.bias.device))
    handle.merged = False


@dataclass
class ExtractionRow:
    """One extracted layer: its key, weight shape, rank kept and relative Frobenius error."""

    key: str
    shape: tuple[int, ...]
    rank: int
    relative_error: float
    bias_changed: bool


def _low_rank(diff: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, int, float]:
    """Truncated SVD of diff [out, in(,k,k)] → (up [out, r], down [r, in·k·k], r, relative error)."""
    mat = diff.reshape(diff.shape[0], -1).double()  # (out, in·k·k)
    u, s, vh = torch.linalg.svd(mat, full_matrices=False)
    r = min(rank, s.numel())
    total = float(s.square().sum())
    rest = float(s[r:].square().sum())
    error = (rest / total) ** 0.5 if total > 0 else 0.0
    return u[:, :r] * s[:r], vh[:r], r, error


def extract_lora(
    base_unet: nn.Module | None,
    base_te: TextEncoders,
    tuned_unet: nn.Module | None,
    tuned_te: TextEncoders,
    *,
    rank: int,
    conv_rank: int | None = None,
    threshold: float = 0.0,
) -> tuple[dict[str, torch.Tensor], list[ExtractionRow]]:
    """LoRA/LoCon tensors (file layout) approximating tuned − base in every Linear/Conv2d.

    ``conv_rank`` (None → ``rank``) is used for k×k convolutions. Layers whose difference has a
    Frobenius norm ≤ ``threshold``·‖W_base‖_F are skipped (0: skip only exactly equal ones).
    Returns the tensors and one :class:`ExtractionRow` per extracted layer.
    """
    if rank < 1 or (conv_rank is not None and conv_rank < 1):
        raise BadInput("extract: rank must be ≥ 1")
    kinds = (nn.Linear, nn.Conv2d)
    base_index = {
        k: v for k, v in layer_index(base_unet, base_te, aliases=False).items() if isinstance(v, kinds)
    }
    tuned_index = {
        k: v for k, v in layer_index(tuned_unet, tuned_te, aliases=False).items() if isinstance(v, kinds)
    }
    tensors: dict[str, torch.Tensor] = {}
    rows: list[ExtractionRow] = []
    for key, base in base_index.items():
        tuned = tuned_index.get(key)
        if tuned is None:
            continue  # a layer the tuned model does not have
        if tuned.weight.shape != base.weight.shape:
            raise BadInput(
                f"extract: {key} has shape {tuple(tuned.weight.shape)} in the tuned model, {tuple(base.weight.shape)} in the base"
            )
        diff = tuned.weight.detach().float().cpu() - base.weight.detach().float().cpu()
        norm = float(diff.norm())
        if norm == 0.0 or norm <= threshold * float(base.weight.detach().float().norm()):
            continue
        factors, r, error = lora_factors(key, diff, rank=rank, conv_rank=conv_rank, dtype=base.weight.dtype)
        tensors.update(factors)
        bias_changed = base.bias is not None and not torch.equal(
            base.bias.detach().cpu(), tuned.bias.detach().cpu()
        )
        rows.append(ExtractionRow(key, tuple(base.weight.shape), r, error, bias_changed))
    if not rows:
        raise BadInput("extract: the tuned model does not differ from the base in any Linear/Conv2d layer")
    return tensors, rows


def lora_factors(
    key: str, diff: torch.Tensor, *, rank: int, conv_rank: int | None, dtype: torch.dtype
) -> tuple[dict[str, torch.Tensor], int, float]:
    """The LoRA/LoCon tensors (file layout) of the best rank-r approximation of one layer's
    difference ``diff`` ([out, in] or [out, in, k, k]; ``conv_rank`` for k×k convs), the rank kept
    and the relative error."""
    is_kxk = diff.ndim == 4 and max(diff.shape[2:]) > 1
    up, down, r, error = _low_rank(diff, (conv_rank or rank) if is_kxk else rank)
    if diff.ndim == 4:
        down = down.reshape(r, *diff.shape[1:])  # (r, in, k, k): the k×k down-conv
        up = up.reshape(up.shape[0], r, 1, 1)  # (out, r, 1, 1): the 1×1 up-conv
    tensors = {
        f"{key}.lora_down.weight": down.to(dtype).contiguous(),
        f"{key}.lora_up.weight": up.to(dtype).contiguous(),
        f"{key}.alpha": torch.tensor(float(r)),
    }
    return tensors, r, error


def extract_adapter(
    source: Source,
    unet: nn.Module | None,
    text_encoder: nn.Module | None,
    *,
    rank: int,
    conv_rank: int | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[dict[str, torch.Tensor], list[ExtractionRow]]:
    """An adapter file compressed to a LoRA/LoCon of rank ``rank``: for every Linear/Conv2d module
    of the file, the truncated SVD of its dense ΔW on this model (:func:`delta_weights`; the same
    factorization as :func:`extract_lora`, without building the tuned model). Modules of other
    layers (norms) and bias changes are left out (``bias_changed`` says where). ``dtype``: of the
    factors (None: the file's own floating dtype)."""
    if rank < 1 or (conv_rank is not None and conv_rank < 1):
        raise BadInput("extract: rank must be ≥ 1")
    file = as_adapter_file(source)
    if dtype is None:
        floats = (
            t.dtype for k in file.modules for t in file.module_tensors(k).values() if t.is_floating_point()
        )
        dtype = next(floats, torch.float32)
    tensors: dict[str, torch.Tensor] = {}
    rows: list[ExtractionRow] = []
    for key, (dw, db) in delta_weights(file, unet, text_encoder).items():
        if dw.ndim not in (2, 4) or float(dw.norm()) == 0.0:
            continue
        factors, r, error = lora_factors(key, dw, rank=rank, conv_rank=conv_rank, dtype=dtype)
        tensors.update(factors)
        changed = db is not None and bool(db.abs().max() > 0)
        rows.append(ExtractionRow(key, tuple(dw.shape), r, error, changed))
    if not rows:
        raise BadInput(f"extract: {file.name}: no Linear/Conv2d layer changes")
    return tensors, rows


def extraction_metadata(settings: dict, *, rank: int, conv_rank: int | None, base: str) -> dict[str, str]:
    """File metadata of an extracted LoRA/LoCon: lyco-bench's (``settings``: what it was extracted
    from and how) and kohya's ``ss_*`` keys, so that sd-scripts and A1111 load it as LoCon."""
    import json

    from lyco_bench import __version__

    return {
        "lyco_bench.algo": "lora",
        "lyco_bench.extracted": json.dumps(settings, sort_keys=True),
        "lyco_bench.base_model": base,
        "lyco_bench.version": __version__,
        "ss_network_module": "lycoris.kohya",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(rank),
        "ss_network_args": json.dumps({"algo": "locon", "conv_dim": str(conv_rank or rank)}),
    }
