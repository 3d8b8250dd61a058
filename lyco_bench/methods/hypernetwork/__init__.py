"""Hypernetworks (NovelAI's, as AUTOMATIC1111's webui builds and trains them): small residual MLPs
on what the UNet's attention layers read for their keys and values.

Where A1111 applies them: its CrossAttention forward (the plain one and every optimized variant)
takes ``context = default(context, x)`` and, when the loaded hypernetwork has a pair of MLPs for
the context's width, reads keys and values from transformed copies of it; the query is untouched:

    q = to_q(x),   k = to_k(c + λ·MLP_k(c)),   v = to_v(c + λ·MLP_v(c))

So in SD1 both attention layers of every transformer block are affected: the cross-attention
(attn2; c = the text encoding, width 768) and the self-attention (attn1; c = the block's
normalized hidden states, widths 320, 640 and 1280 — A1111's default "modules" are all four).
Only the UNet has such layers (the VAE's attention is another module). One (MLP_k, MLP_v) pair per
width is shared by every attention layer that reads that width.

The code: the MLP and its options are ``mlp.py``, reading A1111's ``.pt`` files ``a1111.py``, the
method (hooks, merge, files) this package's ``__init__``.

The MLP for ``layer_structure`` [1, m1, …, 1] at width w is A1111's layer list: for each i,
Linear(int(w·m_i) → int(w·m_{i+1})), then the activation (after the last Linear only with
``activate_output``), then LayerNorm (``add_layer_norm``), then Dropout(p_{i+1}) where the
dropout structure is non-zero. Init (A1111's default ``Normal``): Linear and LayerNorm weights
N(0, 0.01²), biases 0 — not zero, so a fresh hypernetwork already changes the output a little.
While the UNet is in training mode λ is 1 and dropout is on (as in A1111); at generation λ is
the multiplier and dropout is off.

How it hooks in: ``attach`` installs on each UNet attention layer whose ``to_k`` reads a width
the hypernetwork has a processor that wraps the one there (diffusers' default): for one call it
puts the MLPs in front of ``to_k``/``to_v`` (forward pre-hooks, removed when the call returns)
and runs the wrapped processor, so attention itself stays diffusers' computation. At λ = 0 the
wrapped processor runs alone, and with zero MLPs c + 0 = c: either way the output is the base
model's, bit for bit. ``detach`` puts the original processors back. With several hypernetworks
attached, the one attached last acts on the context first (its output feeds the earlier one's),
which is also what merging them one after the other computes.

Dropout masks are drawn from a CPU generator seeded by the run seed, the step (``before_step``),
the layer and k/v — never torch's global RNG — so training is reproducible, resumes exactly, gives
the same masks on any device, and a recomputation of the same layer in the same step (gradient
checkpointing) draws the same masks.

File layout (safetensors; lyco-bench's own, A1111 has none):
  ``hypernet.<width>.<k|v>.<index>.weight`` / ``.bias``
      index = position in A1111's layer list (its state dicts' ``linear.<index>`` keys), so the
      Linear layers sit at 0, 2, … with an activation between them, at 0, 1, … without
  metadata ``lyco_bench.algo`` = ``hypernetwork``; ``lyco_bench.settings`` = the options as JSON
      (layer_structure, activation_func, add_layer_norm, activate_output, use_dropout,
      last_layer_dropout, dropout_structure, weight_init, sizes = the widths in the file);
      ``lyco_bench.version``; a caller's metadata keys without a dot as ``lyco_bench.<key>``.
A1111's ``.pt`` files load too, only through ``torch.load(weights_only=True)`` (never a general
unpickle): a dict whose int keys (widths) map to (state dict of MLP_k, state dict of MLP_v),
beside the settings ``layer_structure``, ``activation_func``, ``is_layer_norm``,
``activate_output`` (absent: True, as A1111 reads it), ``use_dropout``, ``last_layer_dropout``,
``dropout_structure``, ``weight_initialization`` and informational ``name``, ``step``, … .

Merge (``merges_exactly``): with a linear activation and no layer norm the MLP is affine,
MLP(c) = A·c + a (dropout is off at generation), so for each attention layer reading width w

    to_k(c + λ(A·c + a)) = W_k(I + λA)·c + λ·W_k·a (+ b_k)

— the weight becomes W_k(I + λA) and a bias λ·W_k·a is added (SD's to_k/to_v have none: it is
created for the merge and removed again by ``unmerge``, which restores the weights bit for bit);
likewise to_v. Every attention layer whose context width matches is merged. Any other activation,
or layer norm, is not affine: generation then attaches the hypernetwork.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from lyco_bench.adapters.base import AlgorithmOptions, register_algorithm
from lyco_bench.errors import BadInput
from lyco_bench.methods.base import ModelMethod, tensor_file_keys
from lyco_bench.methods.hypernetwork.a1111 import is_a1111, read_a1111, torch_load
from lyco_bench.methods.hypernetwork.mlp import (
    A1111_DROPOUT,
    ACTIVATIONS,
    WEIGHT_INITS,
    Dropout,
    HypernetworkMLP,
    HypernetworkOptions,
)

__all__ = [
    "A1111_DROPOUT", "ACTIVATIONS", "KEY_PATTERN", "WEIGHT_INITS", "Dropout", "Hypernetwork",
    "HypernetworkMLP", "HypernetworkOptions", "HypernetworkProcessor", "attention_layers",
]  # fmt: skip

KEY_PATTERN = re.compile(r"hypernet\.(\d+)\.([kv])\.(\d+\.(?:weight|bias))")


def _in_width(layer: nn.Module) -> int | None:
    """The input width of a projection (a Linear, or an adapter module wrapping one in ``base``)."""
    for candidate in (layer, getattr(layer, "base", None)):
        width = getattr(candidate, "in_features", None)
        if isinstance(width, int):
            return width
    return None


def attention_layers(unet: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every attention layer with a processor and to_k/to_v projections."""
    return [
        (name, module)
        for name, module in unet.named_modules()
        if hasattr(module, "set_processor")
        and getattr(module, "to_k", None) is not None
        and getattr(module, "to_v", None) is not None
    ]


class HypernetworkProcessor:
    """Wraps an attention layer's processor: the hypernetwork's MLPs in front of to_k and to_v."""

    def __init__(self, method: Hypernetwork, inner: Any, name: str, width: int) -> None:
        self.method, self.inner, self.name, self.width = method, inner, name, width

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        method = self.method
        key = str(self.width)
        training = attn.training
        lam = 1.0 if training else method.multiplier
        if key not in method.mlps or lam == 0:
            return self.inner(
                attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs
            )
        pair = method.mlps[key]
        hooks = [
            projection.register_forward_pre_hook(self._hook(pair[kv], lam, training, kv))
            for kv, projection in (("k", attn.to_k), ("v", attn.to_v))
        ]
        try:
            return self.inner(
                attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs
            )
        finally:
            for hook in hooks:
                hook.remove()

    def _hook(self, mlp: HypernetworkMLP, lam: float, training: bool, kv: str):
        def pre_hook(_module: nn.Module, inputs: tuple[Any, ...]) -> tuple[Any, ...]:
            context = inputs[0]
            x = context.to(next(mlp.parameters()).dtype)
            generator = self.method.dropout_generator(self.name, kv) if training else None
            out = x + mlp(x, dropout=training, generator=generator) * lam
            return (out.to(context.dtype), *inputs[1:])

        return pre_hook


@register_algorithm
class Hypernetwork(ModelMethod):
    """NovelAI/A1111 hypernetworks (module docstring)."""

    algo: ClassVar[str] = "hypernetwork"
    Options: ClassVar[type[AlgorithmOptions]] = HypernetworkOptions
    default_lr: ClassVar[float] = 1e-5
    """A1111's default hypernetwork learning rate."""
    needs_cross_attention: ClassVar[bool] = True
    """It transforms the keys and values of the denoiser's cross-attention: a study on a family
    without one (FLUX) is refused when it is planned."""

    def __init__(self, options: AlgorithmOptions | Mapping[str, Any] | None = None, **settings: Any) -> None:
        super().__init__(options, **settings)
        self.mlps = nn.ModuleDict()
        self._installed: list[tuple[nn.Module, HypernetworkProcessor, Any]] = []
        self._step_seed: tuple[int, int] | None = None

    # --- parameters ----------------------------------------------------------------------------
    @property
    def widths(self) -> list[int]:
        return sorted(int(w) for w in self.mlps)

    def _build(self, widths: Sequence[int], *, init: bool) -> None:
        options = self.options
        for width in sorted(widths):
            pair = nn.ModuleDict({kv: HypernetworkMLP(width, options) for kv in ("k", "v")})
            if init:
                for mlp in pair.values():
                    mlp.reset_parameters(options.weight_init, options.activation_func)
            self.mlps[str(width)] = pair

    @property
    def merges_exactly(self) -> bool:
        return self.options.activation_func == "linear" and not self.options.add_layer_norm

    # --- life cycle -------------------------------------------------------------------------------
    def attach(self, pipe: Any, *, concepts: Sequence[Any] = ()) -> Hypernetwork:
        if self._attached:
            raise RuntimeError("hypernetwork: already attached")
        from lyco_bench.families import family_of

        family = family_of(pipe)
        if not family.cross_attention:
            raise BadInput(
                f"hypernetwork: the {family.name} family's denoiser has no cross-attention to "
                "transform (text and image tokens attend jointly)"
            )
        unet = family.denoiser(pipe)
        layers = [(name, attn, _in_width(attn.to_k)) for name, attn in attention_layers(unet)]
        present = sorted({w for _, _, w in layers if w is not None})
        if not self.mlps:
            wanted = self.options.sizes if self.options.sizes is not None else present
            missing = [w for w in wanted if w not in present]
            if missing:
                raise BadInput(
                    f"hypernetwork: sizes: {missing[0]} is not a width this UNet's attention layers "
                    f"read (they read {', '.join(map(str, present)) or 'none'})"
                )
            self._build(wanted, init=True)
        param = next(unet.parameters(), None)
        if param is not None:
            self.to(param.device)
        for name, attn, width in layers:
            if width is not None and str(width) in self.mlps:
                original = attn.processor
                processor = HypernetworkProcessor(self, original, name, width)
                attn.set_processor(processor)
                self._installed.append((attn, processor, original))
        self._attached = True
        return self

    def detach(self) -> None:
        for attn, processor, original in reversed(self._installed):
            if attn.processor is processor:  # replaced by someone else since: leave theirs
                attn.set_processor(original)
        self._installed = []
        self._attached = False

    def before_step(self, step: int, *, seed: int) -> None:
        self._step_seed = (int(seed), int(step))

    def dropout_generator(self, layer: str, kv: str) -> torch.Generator | None:
        """The CPU generator of one layer's k or v dropout masks in the current step (None outside
        the trainer: torch's global RNG)."""
        if self._step_seed is None:
            return None
        seed, step = self._step_seed
        digest = hashlib.sha256(f"lyco-bench:hypernetwork:{seed}:{step}:{layer}:{kv}".encode()).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)

    # --- merge ------------------------------------------------------------------------------------
    def merge(self, pipe: Any) -> Any:
        if not self.merges_exactly:
            return super().merge(pipe)
        lam = self.multiplier
        affine = {key: {kv: mlp.affine() for kv, mlp in pair.items()} for key, pair in self.mlps.items()}
        handle: list[tuple[nn.Linear, torch.Tensor, torch.Tensor | None]] = []
        try:
            with torch.no_grad():
                for name, attn in attention_layers(pipe.unet):
                    key = str(_in_width(attn.to_k))
                    if key not in affine:
                        continue
                    for kv in ("k", "v"):
                        layer = getattr(attn, f"to_{kv}")
                        if type(layer) is not nn.Linear:
                            raise BadInput(
                                f"hypernetwork: cannot merge into {name}.to_{kv} ({type(layer).__name__})"
                            )
                        a_mat, a_vec = affine[key][kv]
                        w = layer.weight.detach().to("cpu", torch.float64)
                        new_w = w + lam * (w @ a_mat)  # W(I + λA)
                        new_b = lam * (w @ a_vec)  # λ·W·a
                        bias = layer.bias
                        handle.append(
                            (
                                layer,
                                layer.weight.detach().clone(),
                                None if bias is None else bias.detach().clone(),
                            )
                        )
                        if bias is not None:
                            new_b = new_b + bias.detach().to("cpu", torch.float64)
                        layer.weight.copy_(new_w.to(layer.weight.device, layer.weight.dtype))
                        if bias is None:
                            layer.bias = nn.Parameter(
                                new_b.to(layer.weight.device, layer.weight.dtype), requires_grad=False
                            )
                        else:
                            bias.copy_(new_b.to(bias.device, bias.dtype))
        except BaseException:
            self.unmerge(handle)
            raise
        return handle

    def unmerge(self, handle: Any) -> None:
        with torch.no_grad():
            while handle:
                layer, weight, bias = handle.pop()
                layer.weight.copy_(weight)
                if bias is None:
                    layer.bias = None
                else:
                    layer.bias.copy_(bias)

    # --- files ------------------------------------------------------------------------------------
    def file_tensors(self) -> dict[str, torch.Tensor]:
        """``hypernet.<width>.<k|v>.<index>.<weight|bias>`` → tensor (module docstring)."""
        out = {}
        for key, pair in self.mlps.items():
            for kv, mlp in pair.items():
                for name, value in mlp.linear.state_dict().items():
                    out[f"hypernet.{key}.{kv}.{name}"] = value.detach()
        return out

    def file_metadata(self, metadata: Mapping[str, Any] | None = None) -> dict[str, str]:
        from lyco_bench import __version__

        settings = self.options.model_copy(update={"sizes": self.widths}).model_dump(mode="json")
        meta = {
            "lyco_bench.algo": self.algo,
            "lyco_bench.settings": json.dumps(settings, sort_keys=True),
            "lyco_bench.version": __version__,
        }
        for name, value in (metadata or {}).items():
            key = name if "." in name else f"lyco_bench.{name}"
            meta[key] = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
        return meta

    def save(self, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> None:
        from lyco_bench.adapters.fileformat import save_tensors

        save_tensors(path, self.file_tensors(), self.file_metadata(metadata))

    def load_weights(self, path: str | os.PathLike) -> None:
        from lyco_bench.adapters.fileformat import read_tensors

        tensors, metadata = read_tensors(path)
        if metadata.get("lyco_bench.algo") != self.algo:
            raise BadInput(f"{path}: not a hypernetwork file")
        self._load_tensors(tensors, name=str(path))

    def _load_tensors(self, tensors: Mapping[str, torch.Tensor], *, name: str) -> None:
        """Copy file tensors into the parameters: exactly the expected keys and shapes, finite."""
        own = {}
        for key, pair in self.mlps.items():
            for kv, mlp in pair.items():
                for pname, value in mlp.linear.state_dict(keep_vars=True).items():
                    own[f"hypernet.{key}.{kv}.{pname}"] = value
        o = self.options
        structure = (
            f"layer_structure {o.layer_structure}, activation {o.activation_func}, "
            f"layer norm {o.add_layer_norm}, activate_output {o.activate_output}"
        )
        for key in sorted(set(own) | set(tensors)):
            if key not in tensors:
                raise BadInput(f"{name}: {key} missing: the weights do not fit {structure}")
            if key not in own:
                raise BadInput(f"{name}: unexpected {key}: the weights do not fit {structure}")
            value = tensors[key]
            if not isinstance(value, torch.Tensor) or not value.is_floating_point():
                raise BadInput(f"{name}: {key} is not a float tensor")
            if tuple(value.shape) != tuple(own[key].shape):
                raise BadInput(
                    f"{name}: {key} has shape {tuple(value.shape)}, expected {tuple(own[key].shape)} "
                    f"for {structure}"
                )
            if not bool(torch.isfinite(value).all()):
                raise BadInput(f"{name}: {key} holds NaN or inf values")
        with torch.no_grad():
            for key, param in own.items():
                param.copy_(tensors[key].to(param.device, param.dtype))

    @classmethod
    def reads(cls, path: str | os.PathLike, metadata: Mapping[str, str], keys: set[str]) -> bool:
        if metadata.get("lyco_bench.algo") == cls.algo:
            return True
        if metadata or keys or Path(path).suffix.lower() != ".pt":
            return False
        try:
            return is_a1111(torch_load(Path(path), mmap=True))
        except BadInput:
            return False  # not readable safely: not claimed (the caller reports it)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Hypernetwork:
        from lyco_bench.adapters.fileformat import read_tensors

        path = Path(path)
        if not path.is_file():
            raise BadInput(f"{path}: no such file")
        if tensor_file_keys(path) is None:
            return cls._with_weights(path, *read_a1111(path))
        tensors, metadata = read_tensors(path)
        if metadata.get("lyco_bench.algo") != cls.algo:
            raise BadInput(
                f"{path}: not a hypernetwork file (lyco_bench.algo is {metadata.get('lyco_bench.algo')!r})"
            )
        try:
            settings = json.loads(metadata.get("lyco_bench.settings", "{}"))
        except ValueError:
            raise BadInput(f"{path}: lyco_bench.settings is not JSON") from None
        if not isinstance(settings, dict):
            raise BadInput(f"{path}: lyco_bench.settings is not a JSON object")
        widths = set()
        for key in tensors:
            match = KEY_PATTERN.fullmatch(key)
            if match is None:
                raise BadInput(
                    f"{path}: unexpected key {key!r} (expected hypernet.<width>.<k|v>.<index>.weight/bias)"
                )
            widths.add(int(match.group(1)))
        if not widths:
            raise BadInput(f"{path}: the file holds no tensors")
        if settings.get("sizes") not in (None, sorted(widths)):
            raise BadInput(
                f"{path}: sizes {settings['sizes']} in the settings, the tensors are for {sorted(widths)}"
            )
        return cls._with_weights(path, {**settings, "sizes": sorted(widths)}, tensors)

    @classmethod
    def _with_weights(cls, path: Path, settings: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]):
        try:
            method = cls(settings)
        except BadInput as exc:
            raise BadInput(f"{path}: {exc}") from None
        method._build(method.options.sizes, init=False)
        method._load_tensors(tensors, name=str(path))
        return method
