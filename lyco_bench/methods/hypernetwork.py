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
import pickle
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import nn

from lyco_bench.adapters.base import AlgorithmOptions, register_algorithm
from lyco_bench.errors import BadInput
from lyco_bench.methods.base import ModelMethod, tensor_file_keys

# A1111's activation table: its seven named entries ("swish" is its name for Hardswish) and the
# torch.nn activation classes by lower-case name. Left out: those that are not elementwise or need
# arguments (softmax, softmin, logsoftmax, glu, threshold, multiheadattention) and rrelu, whose
# training-mode slopes come from torch's global RNG.
ACTIVATIONS: dict[str, type[nn.Module] | None] = {
    "linear": None,
    "relu": nn.ReLU,
    "leakyrelu": nn.LeakyReLU,
    "elu": nn.ELU,
    "swish": nn.Hardswish,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "celu": nn.CELU,
    "gelu": nn.GELU,
    "hardshrink": nn.Hardshrink,
    "hardsigmoid": nn.Hardsigmoid,
    "hardswish": nn.Hardswish,
    "hardtanh": nn.Hardtanh,
    "logsigmoid": nn.LogSigmoid,
    "mish": nn.Mish,
    "prelu": nn.PReLU,
    "relu6": nn.ReLU6,
    "selu": nn.SELU,
    "silu": nn.SiLU,
    "softplus": nn.Softplus,
    "softshrink": nn.Softshrink,
    "softsign": nn.Softsign,
    "tanhshrink": nn.Tanhshrink,
}
WEIGHT_INITS = ("Normal", "XavierUniform", "XavierNormal", "KaimingUniform", "KaimingNormal")
KEY_PATTERN = re.compile(r"hypernet\.(\d+)\.([kv])\.(\d+\.(?:weight|bias))")
A1111_DROPOUT = 0.3
OLD_LAYER_NAMES = {"linear1": "linear.0", "linear2": "linear.1"}  # A1111's oldest files


class HypernetworkOptions(AlgorithmOptions):
    """Hypernetwork settings; defaults are A1111's "Create hypernetwork" defaults."""

    layer_structure: list[float] = Field(default_factory=lambda: [1.0, 2.0, 1.0])
    """Widths of the MLP's layers as multiples of the context width; first and last 1
    ([1, 2, 1]: w → 2w → w)."""
    activation_func: str = "linear"
    """Activation after each Linear but the last: linear (none), relu, leakyrelu, elu, swish
    (A1111's name for Hardswish), tanh, sigmoid, or another torch.nn activation by lower-case
    name (gelu, silu, mish, softplus, …)."""
    add_layer_norm: bool = False
    """LayerNorm after every Linear (after its activation)."""
    activate_output: bool = False
    """Apply the activation after the last Linear too."""
    use_dropout: bool = False
    """Dropout in training: with no ``dropout_structure``, A1111's derived one (0.3 after every
    hidden layer but the last; after the last hidden one as well with ``last_layer_dropout``)."""
    last_layer_dropout: bool = False
    """With ``use_dropout`` and no ``dropout_structure``: dropout after the last hidden layer too."""
    dropout_structure: list[float] | None = None
    """Dropout probability after each layer of ``layer_structure`` (same length, each in [0, 1);
    the first is not used, A1111 writes 0 first and last); when given it is used as is
    (``use_dropout`` is then not read)."""
    weight_init: Literal["Normal", "XavierUniform", "XavierNormal", "KaimingUniform", "KaimingNormal"] = (
        "Normal"
    )
    """Init of the Linear weights (biases 0): Normal is N(0, 0.01²); Kaiming for relu (leaky_relu
    for leakyrelu). LayerNorm weights are N(0, 0.01²) whatever this says, as in A1111."""
    sizes: list[int] | None = None
    """Context widths that get a pair of MLPs; None: every width a UNet attention layer reads
    for its keys (SD1: 768, 320, 640, 1280 — A1111's default modules)."""

    @field_validator("layer_structure")
    @classmethod
    def _structure(cls, value: list[float]) -> list[float]:
        if len(value) < 2 or value[0] != 1 or value[-1] != 1:
            raise ValueError("must start and end with 1, e.g. [1, 2, 1]")
        if any(not v > 0 for v in value):
            raise ValueError("multiples must be positive")
        return value

    @field_validator("activation_func")
    @classmethod
    def _activation(cls, value: str) -> str:
        if value not in ACTIVATIONS:
            raise ValueError(f"unknown activation {value!r} (known: {', '.join(ACTIVATIONS)})")
        return value

    @field_validator("sizes")
    @classmethod
    def _sizes(cls, value: list[int] | None) -> list[int] | None:
        if value is None:
            return None
        if any(v < 1 for v in value):
            raise ValueError("widths must be positive")
        return sorted(set(value))

    @model_validator(mode="after")
    def _dropouts(self) -> HypernetworkOptions:
        ds = self.dropout_structure
        if ds is not None:
            if len(ds) != len(self.layer_structure):
                raise ValueError("dropout_structure: needs one entry per layer_structure entry")
            if any(not 0 <= p < 1 for p in ds):
                raise ValueError("dropout_structure: every entry must be in [0, 1)")
        return self

    def dropout_probs(self) -> list[float]:
        """The dropout probability after each layer (index 0 unused), as A1111 resolves it."""
        n = len(self.layer_structure)
        if self.dropout_structure is not None:
            return [float(p) for p in self.dropout_structure]
        if not self.use_dropout:
            return [0.0] * n
        probs = (
            [0.0] + [A1111_DROPOUT] * (n - 3) + [A1111_DROPOUT if self.last_layer_dropout else 0.0] + [0.0]
        )
        return probs[:n] if n >= 3 else [0.0, probs[1]]


class Dropout(nn.Module):
    """Inverted dropout whose mask comes from a given CPU generator (torch's global RNG without one).

    The mask is drawn on the CPU and moved to x's device, so a seed gives the same masks on any
    device (a CUDA generator draws other numbers), as the adapters' init does (AdapterModule.init_).
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if generator is None:
            return F.dropout(x, self.p, training=True)
        keep = torch.rand(x.shape, generator=generator) >= self.p
        return x * keep.to(x.device, x.dtype) * (1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class HypernetworkMLP(nn.Module):
    """One MLP (k or v) for one width: A1111's layer list in ``self.linear``."""

    def __init__(self, width: int, options: HypernetworkOptions) -> None:
        super().__init__()
        structure, probs = options.layer_structure, options.dropout_probs()
        act = ACTIVATIONS[options.activation_func]
        layers: list[nn.Module] = []
        for i in range(len(structure) - 1):
            out = int(width * structure[i + 1])
            layers.append(nn.Linear(int(width * structure[i]), out))
            if act is not None and (i < len(structure) - 2 or options.activate_output):
                layers.append(act())
            if options.add_layer_norm:
                layers.append(nn.LayerNorm(out))
            if probs[i + 1] > 0:
                layers.append(Dropout(probs[i + 1]))
        self.linear = nn.Sequential(*layers)
        self.width = width

    def reset_parameters(self, weight_init: str, activation: str) -> None:
        """A1111's init: draws from torch's global RNG (the trainer seeds it inside a fork)."""
        with torch.no_grad():
            for layer in self.linear:
                if not isinstance(layer, nn.Linear | nn.LayerNorm):
                    continue
                w, b = layer.weight, layer.bias
                if weight_init == "Normal" or isinstance(layer, nn.LayerNorm):
                    nn.init.normal_(w, mean=0.0, std=0.01)
                elif weight_init == "XavierUniform":
                    nn.init.xavier_uniform_(w)
                elif weight_init == "XavierNormal":
                    nn.init.xavier_normal_(w)
                else:
                    fn = (
                        nn.init.kaiming_uniform_
                        if weight_init == "KaimingUniform"
                        else nn.init.kaiming_normal_
                    )
                    fn(w, nonlinearity="leaky_relu" if activation == "leakyrelu" else "relu")
                nn.init.zeros_(b)

    def forward(self, x: torch.Tensor, *, dropout: bool = False, generator: torch.Generator | None = None):
        """MLP(x), without the residual; dropout layers act only with ``dropout``."""
        for layer in self.linear:
            if isinstance(layer, Dropout):
                x = layer(x, generator) if dropout else x
            else:
                x = layer(x)
        return x

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, a) in float64 on the CPU with MLP(c) = A·c + a (only Linear and Dropout layers)."""
        a_mat = torch.eye(self.width, dtype=torch.float64)
        a_vec = torch.zeros(self.width, dtype=torch.float64)
        for layer in self.linear:
            if isinstance(layer, Dropout):
                continue
            if not isinstance(layer, nn.Linear):
                raise TypeError(f"{type(layer).__name__} is not affine")
            w = layer.weight.detach().to("cpu", torch.float64)
            a_mat, a_vec = w @ a_mat, w @ a_vec + layer.bias.detach().to("cpu", torch.float64)
        return a_mat, a_vec


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
            return _is_a1111(_torch_load(Path(path), mmap=True))
        except BadInput:
            return False  # not readable safely: not claimed (the caller reports it)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Hypernetwork:
        from lyco_bench.adapters.fileformat import read_tensors

        path = Path(path)
        if not path.is_file():
            raise BadInput(f"{path}: no such file")
        if tensor_file_keys(path) is None:
            return cls._from_a1111(path)
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

    @classmethod
    def _from_a1111(cls, path: Path) -> Hypernetwork:
        """An A1111 ``.pt`` hypernetwork, read with ``torch.load(weights_only=True)`` only."""
        data = _torch_load(path, mmap=False)
        if not _is_a1111(data):
            raise BadInput(f"{path}: not a hypernetwork file (no width → (k, v) state dicts)")
        widths = sorted(k for k in data if isinstance(k, int) and not isinstance(k, bool))
        activation = data.get("activation_func") or "linear"
        dropout = data.get("dropout_structure")
        init = data.get("weight_initialization")
        settings = {
            "layer_structure": data.get("layer_structure") or [1.0, 2.0, 1.0],
            "activation_func": activation.lower() if isinstance(activation, str) else activation,
            "add_layer_norm": data.get("is_layer_norm", False) or False,
            "activate_output": data.get("activate_output", True),
            "use_dropout": data.get("use_dropout", False) or False,
            "last_layer_dropout": data.get("last_layer_dropout", False) or False,
            "dropout_structure": list(dropout) if isinstance(dropout, list | tuple) else None,
            "weight_init": init if init in WEIGHT_INITS else "Normal",
            "sizes": widths,
        }
        if isinstance(settings["layer_structure"], tuple):
            settings["layer_structure"] = list(settings["layer_structure"])
        tensors = {}
        for width in widths:
            for kv, state in zip(("k", "v"), data[width], strict=True):
                for key, value in state.items():
                    layer, _, param = key.rpartition(".")
                    layer = OLD_LAYER_NAMES.get(layer, layer)
                    if not re.fullmatch(r"linear\.\d+", layer):
                        raise BadInput(
                            f"{path}: {width} {kv}: unexpected key {key!r}: unknown layer structure"
                        )
                    tensors[f"hypernet.{width}.{kv}.{layer.removeprefix('linear.')}.{param}"] = value
        return cls._with_weights(path, settings, tensors)


def _torch_load(path: Path, *, mmap: bool) -> Any:
    """``torch.load(weights_only=True)``: tensors, containers and plain values only."""
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError:
            if not mmap:
                raise
            return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found is None:
            reason = re.search(r"WeightsUnpickler error: ([^\n]+)", str(exc))
            raise BadInput(
                f"{path}: unreadable .pt file ({reason[1] if reason else 'not a torch file'})"
            ) from None
        raise BadInput(
            f"{path}: refused: it pickles {found[1]}, which torch.load(weights_only=True) does not allow "
            "(only tensors, containers and plain values are read)"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError, ImportError, AttributeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BadInput(f"{path}: unreadable .pt file ({first})") from None


def _is_a1111(data: Any) -> bool:
    """Whether ``data`` is an A1111 hypernetwork dict: int widths → (k, v) state dicts."""
    if not isinstance(data, dict):
        return False
    widths = [k for k in data if isinstance(k, int) and not isinstance(k, bool)]
    return bool(widths) and all(
        isinstance(data[w], list | tuple)
        and len(data[w]) == 2
        and all(isinstance(sd, Mapping) and all(isinstance(k, str) for k in sd) for sd in data[w])
        for w in widths
    )
