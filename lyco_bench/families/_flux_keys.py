"""FLUX.1 adapter files in kohya's naming, on BFL's fused layers, read and written both ways.

lyco-bench adapts diffusers' ``FluxTransformer2DModel`` layer by layer (``to_q``, ``to_k``, ``to_v``
apart, as diffusers and PEFT train it), under keys ``lora_unet_<diffusers path>``. Files name BFL's
layers as kohya's sd-scripts does (``networks/lora_flux.py``), where q, k, v are one ``qkv`` Linear
and a single block's q, k, v and MLP input are one ``linear1``:

    double_blocks_{i}_img_attn_qkv   = transformer_blocks.{i}.attn.to_q | to_k | to_v
    double_blocks_{i}_txt_attn_qkv   = transformer_blocks.{i}.attn.add_q_proj | add_k_proj | add_v_proj
    single_blocks_{i}_linear1        = single_transformer_blocks.{i}.attn.to_q | to_k | to_v | proj_mlp
    final_layer_adaLN_modulation_1   = norm_out.linear with its two halves swapped (BFL: shift, scale)

and every other layer one to one (the table in :func:`flux_groups`, diffusers'
``convert_flux_transformer_checkpoint_to_diffusers``). A fused layer's ΔW stacks its members' ΔW
by output rows; an algorithm with a :class:`~lyco_bench.adapters.rows.RowLayout` (LoRA, LoHa, native,
each with DoRA) is written in that fused form exactly (block-diagonal up factors: what diffusers'
kohya→diffusers FLUX converter splits back). Other algorithms (LoKr's Kronecker product has no
fused form), and DoRA on a fused layer whose members are not all adapted, are written under the
diffusers names as OneTrainer does (``lora_transformer_<diffusers path>``), which ComfyUI maps
onto the fused weights' row slices. CLIP-L's modules are ``lora_te1_…`` (kohya's FLUX prefix).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lyco_bench.errors import BadInput

UNET_PREFIX = "lora_unet"  # lyco-bench's internal keys: lora_unet_<diffusers path>, lora_te_<CLIP path>
TE_PREFIX = "lora_te"
FILE_PREFIX = "lora_unet"
SPLIT_PREFIX = "lora_transformer"  # OneTrainer's diffusers-named FLUX keys (ComfyUI loads them)
CLIP_PREFIX = "lora_te1"  # kohya's FLUX prefix for CLIP-L (lora_te3: T5, which lyco-bench never trains)

# (BFL name, diffusers member paths) inside one double block / one single block.
DOUBLE = (
    ("img_mod_lin", ("norm1.linear",)),
    ("txt_mod_lin", ("norm1_context.linear",)),
    ("img_attn_qkv", ("attn.to_q", "attn.to_k", "attn.to_v")),
    ("img_attn_proj", ("attn.to_out.0",)),
    ("txt_attn_qkv", ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")),
    ("txt_attn_proj", ("attn.to_add_out",)),
    ("img_mlp_0", ("ff.net.0.proj",)),
    ("img_mlp_2", ("ff.net.2",)),
    ("txt_mlp_0", ("ff_context.net.0.proj",)),
    ("txt_mlp_2", ("ff_context.net.2",)),
)
SINGLE = (
    ("linear1", ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")),
    ("linear2", ("proj_out",)),
    ("modulation_lin", ("norm.linear",)),
)
TOP = (
    ("img_in", "x_embedder"),
    ("txt_in", "context_embedder"),
    ("time_in_in_layer", "time_text_embed.timestep_embedder.linear_1"),
    ("time_in_out_layer", "time_text_embed.timestep_embedder.linear_2"),
    ("guidance_in_in_layer", "time_text_embed.guidance_embedder.linear_1"),
    ("guidance_in_out_layer", "time_text_embed.guidance_embedder.linear_2"),
    ("vector_in_in_layer", "time_text_embed.text_embedder.linear_1"),
    ("vector_in_out_layer", "time_text_embed.text_embedder.linear_2"),
    ("final_layer_linear", "proj_out"),
    ("final_layer_adaLN_modulation_1", "norm_out.linear"),
)
SWAPPED = "final_layer_adaLN_modulation_1"


@dataclass(frozen=True)
class Group:
    """One BFL layer and the diffusers layers whose output rows it stacks."""

    file_key: str
    members: tuple[str, ...]
    """Internal keys (``lora_unet_<diffusers path>``) in the fused row order."""
    sizes: tuple[int, ...]
    """Each member's output rows."""
    swap_halves: bool = False


def unet_key(path: str) -> str:
    """The internal key of a transformer layer (the adapters' ``lora_unet_<path, dots → _>``)."""
    return f"{UNET_PREFIX}_{path.replace('.', '_')}"


def flux_groups(transformer: nn.Module) -> list[Group]:
    """Every BFL layer of this transformer with its diffusers members (those it has)."""
    modules = dict(transformer.named_modules())
    table: list[tuple[str, tuple[str, ...]]] = []
    for i in range(len(getattr(transformer, "transformer_blocks", []))):
        table += [
            (f"double_blocks_{i}_{n}", tuple(f"transformer_blocks.{i}.{p}" for p in ps)) for n, ps in DOUBLE
        ]
    for i in range(len(getattr(transformer, "single_transformer_blocks", []))):
        table += [
            (f"single_blocks_{i}_{n}", tuple(f"single_transformer_blocks.{i}.{p}" for p in ps))
            for n, ps in SINGLE
        ]
    table += [(name, (path,)) for name, path in TOP]
    groups = []
    for name, paths in table:
        layers = [_linear(modules.get(p)) for p in paths]
        if all(layer is not None for layer in layers):
            sizes = tuple(int(layer.out_features) for layer in layers)
            members = tuple(unet_key(p) for p in paths)
            groups.append(Group(f"{FILE_PREFIX}_{name}", members, sizes, swap_halves=name == SWAPPED))
    return groups


def _linear(module: nn.Module | None) -> nn.Linear | None:
    """The Linear at a module path, also while an adapter module wraps it (its ``base``)."""
    base = getattr(module, "base", module)
    return base if isinstance(base, nn.Linear) else None


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    """(shift, scale) ↔ (scale, shift) by output rows (diffusers' ``swap_scale_shift``)."""
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def _module_tensors(tensors: dict[str, torch.Tensor], key: str) -> dict[str, torch.Tensor]:
    prefix = key + "."
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def _rank(layout, parts: dict[str, torch.Tensor]) -> int:
    return int(parts[layout.rank_columns[0]].shape[1]) if layout.rank_columns else 0


def _row_tensors(layout) -> tuple[str, ...]:
    return (*layout.rank_columns, *layout.rows)


def _fusable(cls: type, group: Group, present: dict[str, dict[str, torch.Tensor]]) -> bool:
    """Whether these members' modules have an exact fused form."""
    layout = getattr(cls, "row_layout", None)
    if layout is None:
        return False
    known = {*layout.rank_columns, *layout.rank_rows, *layout.rows, "alpha"}
    if any(set(parts) - known for parts in present.values()):
        return False  # a tensor the layout does not place (a Tucker core, a per-column DoRA)
    if any(
        p.get("dora_scale") is not None and p["dora_scale"].shape[0] != s
        for p, s in _with_sizes(group, present)
    ):
        return False
    # DoRA rescales W0's rows: a member left out would need its own magnitude (‖W0‖) to stay put.
    dora = any("dora_scale" in p for p in present.values())
    return not (dora and len(present) < len(group.members))


def _with_sizes(group: Group, present: dict[str, dict[str, torch.Tensor]]):
    return [(present[m], s) for m, s in zip(group.members, group.sizes, strict=True) if m in present]


def _fuse(cls: type, group: Group, present: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One module's tensors for the fused layer (module docstring)."""
    layout = cls.row_layout
    ranks = {m: _rank(layout, p) for m, p in present.items()}
    total = sum(ranks.values())
    first = next(iter(present.values()))
    out: dict[str, torch.Tensor] = {}
    for name in layout.rank_columns:
        ref = first[name]
        fused = ref.new_zeros(sum(group.sizes), total)
        row = col = 0
        for member, size in zip(group.members, group.sizes, strict=True):
            if member in present:
                fused[row : row + size, col : col + ranks[member]] = present[member][name]
                col += ranks[member]
            row += size
        out[name] = fused
    for name in layout.rank_rows:
        out[name] = torch.cat([present[m][name] for m in group.members if m in present], dim=0)
    for name in layout.rows:
        if any(name in p for p in present.values()):
            out[name] = torch.cat(
                [_rows_or_zeros(present, m, s, name) for m, s in zip(group.members, group.sizes, strict=True)]
            )
    if "alpha" in first:
        out["alpha"] = _fused_alpha(group, present, ranks, total, scaled=layout.scaled_alpha)
    return out


def _rows_or_zeros(present, member: str, size: int, name: str) -> torch.Tensor:
    if member in present and name in present[member]:
        return present[member][name]
    ref = next(p[name] for p in present.values() if name in p)
    return ref.new_zeros(size, *ref.shape[1:])


def _fused_alpha(group: Group, present, ranks: dict[str, int], total: int, *, scaled: bool) -> torch.Tensor:
    scales = {float(p["alpha"]) / ranks[m] if scaled else float(p["alpha"]) for m, p in present.items()}
    if len(scales) != 1:
        raise BadInput(
            f"{group.file_key}: its members have different scales α/r {sorted(scales)}: no fused form"
        )
    scale = scales.pop()
    return torch.tensor(scale * total if scaled else scale, dtype=next(iter(present.values()))["alpha"].dtype)


def to_file(
    tensors: dict[str, torch.Tensor], modules: dict[str, type], transformer: nn.Module
) -> dict[str, torch.Tensor]:
    """lyco-bench's internal keys → kohya's FLUX file keys (module docstring). ``modules``: each
    internal module key's algorithm class."""
    out: dict[str, torch.Tensor] = {}
    done: set[str] = set()
    for group in flux_groups(transformer):
        present = {m: _module_tensors(tensors, m) for m in group.members if m in modules}
        if not present:
            continue
        done.update(present)
        classes = {modules[m] for m in present}
        cls = classes.pop() if len(classes) == 1 else None
        if cls is not None and _fusable(cls, group, present):
            fused = _fuse(cls, group, present)
            if group.swap_halves:
                fused = {
                    k: _swap_halves(v) if k in _row_tensors(cls.row_layout) else v for k, v in fused.items()
                }
            out.update({f"{group.file_key}.{k}": v for k, v in fused.items()})
        else:
            for member, parts in present.items():
                out.update({f"{_split_key(member)}.{k}": v for k, v in parts.items()})
    for key, value in tensors.items():
        module, _, suffix = key.partition(".")
        if module in done:
            continue
        if module.startswith(TE_PREFIX + "_"):  # SD1's CLIP prefix → kohya's FLUX CLIP-L prefix
            module = CLIP_PREFIX + module[len(TE_PREFIX) :]
        elif module.startswith(UNET_PREFIX + "_"):  # a layer outside the BFL table
            module = _split_key(module)
        out[f"{module}.{suffix}"] = value
    return out


def _split_key(internal: str) -> str:
    return SPLIT_PREFIX + internal[len(UNET_PREFIX) :]


def from_file(
    tensors: dict[str, torch.Tensor], modules: dict[str, type], transformer: nn.Module, *, name: str
) -> dict[str, torch.Tensor]:
    """kohya's (or OneTrainer's) FLUX file keys → lyco-bench's internal keys. ``modules``: each
    file module key's algorithm class (``detect_modules``). BadInput naming the file and the module
    for a fused module that cannot be split."""
    groups = {g.file_key: g for g in flux_groups(transformer)}
    out: dict[str, torch.Tensor] = {}
    for module, cls in modules.items():
        parts = _module_tensors(tensors, module)
        if module.startswith(TE_PREFIX + "_"):  # CLIP-L as SD1 tools name it (diffusers reads both)
            module = CLIP_PREFIX + module[len(TE_PREFIX) :]
        elif module.startswith(SPLIT_PREFIX + "_"):
            module = UNET_PREFIX + module[len(SPLIT_PREFIX) :]
        elif module in groups:
            for member, member_parts in _split(cls, groups[module], parts, name=f"{name}: {module}").items():
                out.update({f"{member}.{k}": v for k, v in member_parts.items()})
            continue
        # Anything else as it is: lyco-bench's (and LyCORIS's) diffusers-named keys, CLIP-L's
        # lora_te1_, T5's lora_te3_ (kohya --train_t5xxl); a key of no layer is refused by the loader.
        out.update({f"{module}.{k}": v for k, v in parts.items()})
    return out


def _split(
    cls: type, group: Group, parts: dict[str, torch.Tensor], *, name: str
) -> dict[str, dict[str, torch.Tensor]]:
    """The members' tensors of one fused (or swapped) module; members with ΔW = 0 are left out."""
    layout = getattr(cls, "row_layout", None)
    if len(group.members) == 1 and not group.swap_halves:
        return {group.members[0]: parts}
    if layout is None:
        raise BadInput(
            f"{name}: {cls.algo} on a fused FLUX layer has no exact form on diffusers' separate layers (not loaded)"
        )
    known = {*layout.rank_columns, *layout.rank_rows, *layout.rows, "alpha"}
    if set(parts) - known:
        raise BadInput(f"{name}: {sorted(set(parts) - known)} cannot be split by output rows (not loaded)")
    rows = _row_tensors(layout)
    for key in rows:
        if key in parts and parts[key].shape[0] != sum(group.sizes):
            raise BadInput(
                f"{name}.{key}: {parts[key].shape[0]} output rows, this layer has {sum(group.sizes)}"
            )
    if group.swap_halves:
        parts = {k: _swap_halves(v) if k in rows else v for k, v in parts.items()}
    total = _rank(layout, parts)
    alpha = float(parts["alpha"]) if "alpha" in parts else float(total)  # kohya: no alpha → α = rank
    out: dict[str, dict[str, torch.Tensor]] = {}
    start = 0
    for member, size in zip(group.members, group.sizes, strict=True):
        sl = slice(start, start + size)
        start += size
        member_parts = _member(layout, parts, sl, alpha=alpha, total=total)
        if member_parts is not None:
            out[member] = member_parts
    return out


def _member(layout, parts: dict[str, torch.Tensor], sl: slice, *, alpha: float, total: int):
    """One member's tensors: its rows, and the rank columns its rows use."""
    out = {k: parts[k][sl].contiguous() for k in layout.rows if k in parts}
    if layout.rank_columns:
        used = torch.zeros(total, dtype=torch.bool)
        for k in layout.rank_columns:
            used |= parts[k][sl].ne(0).any(dim=0)
        if not bool(used.any()):
            if "dora_scale" not in out:
                return None  # ΔW = 0: not adapted
            used[0] = True  # DoRA alone still rescales W0's rows: keep one (zero) rank column
        keep = used.nonzero().flatten()
        out.update({k: parts[k][sl][:, keep].contiguous() for k in layout.rank_columns})
        out.update({k: parts[k][keep].contiguous() for k in layout.rank_rows})
        if layout.scaled_alpha:
            dtype = parts["alpha"].dtype if "alpha" in parts else torch.float32
            out["alpha"] = torch.tensor(alpha * len(keep) / total, dtype=dtype)
    elif all(not bool(t.ne(0).any()) for t in out.values()):
        return None
    elif "alpha" in parts:
        out["alpha"] = parts["alpha"]
    return out
