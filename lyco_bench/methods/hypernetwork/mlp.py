"""A hypernetwork's MLP as A1111 builds it (the layer list, activation table, dropout structure and
inits: :mod:`lyco_bench.methods.hypernetwork`) and its options."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import nn

from lyco_bench.adapters.base import AlgorithmOptions

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
A1111_DROPOUT = 0.3


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
