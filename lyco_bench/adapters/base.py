"""The adapter module contract and the algorithm registry.

An algorithm is one subclass of :class:`AdapterModule` in its own file, registered with
:func:`register_algorithm`. It wraps one frozen ``nn.Linear`` or ``nn.Conv2d`` (the "base") and
parametrizes its weight update ΔW (docs/protocol.md §1.1):

    W = W0 + λ·ΔW,   forward(x) = base(x) + λ·bypass(x),   bypass(x) = ΔW applied to x

without ever copying W0. Everything else (injection, files, merge, extraction, training,
scoring) is generic over this contract.

Speed: where it costs less (``prefers_merged``, a flop-and-memory-traffic estimate), forward is
one base op on the temporary W0 + λ·ΔW and saves only x for backward; backward rebuilds that
weight for dL/dx and gets the factors' gradients without a second pass through the layer
(``merged_backward``). On large token counts this makes an adapter cost little more than the
frozen layer; the benchmark is ``benchmarks/adapters.py``.

Autocast (bf16/fp16 training): the merged forward stays the fast path. As autocast does for the
base op, it runs in the autocast dtype: W0 + λ·ΔW is built in the parameters' dtype and cast, x
is cast and saved in that dtype. Each custom ``autograd.Function`` records the forward's autocast
state and runs its backward under the same state (what ``torch.amp.custom_bwd`` does, for any
device type), so gradients are computed in the forward's dtype and only cast back to each
parameter's dtype at the end, never re-promoted to fp32 on the way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from lyco_bench.adapters.amp import as_dtype, autocast_off, cast_grads, record_autocast, replay_autocast
from lyco_bench.adapters.layer_tools import (
    MEMORY_WEIGHT,
    alpha_tensor,
    check_keys,
    check_shape,
    dense_input_grad,
    dense_weight_grad,
    human_bytes,
    matmul_cost,
    read_alpha,
    tokens,
)
from lyco_bench.adapters.options import AlgorithmOptions, Configurable
from lyco_bench.errors import BadInput
from lyco_bench.registry import Registry

__all__ = [  # the helpers algorithm files share are re-exported from layer_tools
    "ALGORITHMS", "LYCORIS_LR_GRID", "MEMORY_WEIGHT", "PLUGIN_BASES", "AdapterModule", "AlgorithmOptions",
    "BaseLayer", "CapacityRule", "Configurable", "alpha_tensor", "check_keys", "check_shape",
    "dense_input_grad", "dense_weight_grad", "detect_algorithm", "get_algorithm", "human_bytes",
    "matmul_cost", "read_alpha", "register_algorithm", "tokens",
]  # fmt: skip

BaseLayer = nn.Linear | nn.Conv2d


# The paper's learning-rate levels for the LyCORIS algorithms (docs/protocol.md §6): the ``lr_grid``
# of every algorithm of the LyCORIS family.
LYCORIS_LR_GRID = (1e-4, 5e-4, 1e-3)


@dataclass(frozen=True)
class CapacityRule:
    """How an algorithm's settings map to the analysis feature *Capacity* (the paper's levels).

    ``setting``: the option that sets capacity, with the paper's ``levels`` for it; a study whose
    values the table does not cover gets levels by order (``ascending``: a larger value is more
    capacity), counted from ``start``. ``constant``: the algorithm has one capacity (native
    fine-tuning: 4), whose SHAP value is then folded into Algo (``fold_into_algo``). An algorithm
    with no rule gets log10 of its trainable parameter count.
    """

    setting: str | None = None
    levels: Mapping[float, float] = field(default_factory=dict)
    ascending: bool = True
    start: int = 2
    constant: float | None = None
    fold_into_algo: bool = False


class AdapterModule(Configurable, nn.Module):
    """One adapted layer. Subclasses define parameters, init (ΔW = 0) and ΔW.

    Class attributes:
      algo:        registry name, also written to file metadata (``"lora"``, ``"loha"``, …)
      file_keys:   key suffixes that identify this algorithm in a kohya/LyCORIS file; a module
                   whose suffixes include ``detect_keys`` is loaded by this class.
      detect_keys: the subset of suffixes that identifies the algorithm unambiguously.
      grad_mode:   how the merged forward (below) gets the factors' gradients by default
                   (:meth:`merged_param_grads`, which an algorithm may override): ``"bypass"``
                   re-runs :meth:`bypass` on the saved input (cheap for low-rank factors),
                   ``"dense"`` forms dL/dW = gᵀx once and backpropagates it through
                   :meth:`delta_weight` (Hadamard products, whose bypass is not cheaper).

    What an algorithm declares besides its maths (everything downstream reads these, so no
    algorithm name appears outside its own file):
      Options:        its settings (:class:`AlgorithmOptions` subclass), defaults = its reference
                      defaults (the paper's for LoRA/LoHa/LoKr)
      default_lr:     learning rate when a study gives none
      merges_exactly: W0 + λ·ΔW reproduces the forward (generation merges; else it attaches)
      capacity:       :class:`CapacityRule` for the analysis; lr_grid: the paper's 3 lr levels
      aliases:        names other tools use for it (LyCORIS ``locon``, ``full``); the first is
                      written as ``algo`` in kohya ``ss_network_args``

    Constructors share one signature so the injector can build any algorithm:
    ``Cls(base, options=None, *, multiplier=1.0, **settings)`` — an ``Options`` instance, or its
    fields as keyword arguments (an unknown one is BadInput naming the algorithm).
    """

    file_keys: ClassVar[frozenset[str]]
    detect_keys: ClassVar[frozenset[str]]
    grad_mode: ClassVar[str] = "bypass"
    default_lr: ClassVar[float] = 5e-4
    merges_exactly: ClassVar[bool] = True
    capacity: ClassVar[CapacityRule | None] = None
    lr_grid: ClassVar[tuple[float, ...] | None] = None
    aliases: ClassVar[tuple[str, ...]] = ()
    rank_bounded: ClassVar[bool] = True
    """A ``dim`` above the layer's sides is refused (False: LoKr, whose large dim means "full")."""

    def __init__(
        self,
        base: BaseLayer,
        options: AlgorithmOptions | Mapping[str, Any] | None = None,
        *,
        multiplier: float = 1.0,
        **settings: Any,
    ) -> None:
        super().__init__()
        self.options = self.parse_options(options, settings)
        if not isinstance(base, (nn.Linear, nn.Conv2d)):
            raise TypeError(f"{type(base).__name__} cannot be adapted (Linear or Conv2d only)")
        if isinstance(base, nn.Conv2d) and (base.groups != 1 or base.padding_mode != "zeros"):
            raise TypeError("only Conv2d with groups=1 and zero padding can be adapted")
        # Held in a list so the frozen base is not registered as a submodule of the adapter
        # (its weights stay in the host model's state dict, never in the adapter's).
        self._base = [base]
        self.multiplier = multiplier

    @property
    def base(self) -> BaseLayer:
        return self._base[0]

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001 (torch's signature)
        # The base is outside the module tree, so `host.to(device)` / `.half()` would skip it;
        # move it together with the adapter so both always live on one device and dtype.
        super()._apply(fn, recurse)
        self.base._apply(fn, recurse)
        return self

    @property
    def is_conv(self) -> bool:
        return isinstance(self.base, nn.Conv2d)

    def _new(self, *shape: int) -> nn.Parameter:
        """An uninitialized factor on the base's device and dtype."""
        w = self.base.weight
        return nn.Parameter(torch.empty(*shape, device=w.device, dtype=w.dtype))

    @staticmethod
    def init_(param: torch.Tensor, init: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Run a random ``nn.init`` function on ``param`` with draws from the CPU RNG.

        The same seed gives the same factors whatever device the base layer lives on (a CUDA
        RNG draws other numbers): the values are drawn into a CPU tensor of the parameter's
        dtype and copied over. On the CPU this is ``init(param)`` itself.
        """
        if param.device.type == "cpu":
            return init(param, *args, **kwargs)
        cpu = torch.empty(param.shape, dtype=param.dtype)
        init(cpu, *args, **kwargs)
        with torch.no_grad():
            return param.copy_(cpu)

    @classmethod
    def layer_settings(cls, key: str, settings: Mapping[str, Any]) -> dict[str, Any]:
        """The settings for the layer with file key ``key`` ((IA)³ scales the input of the
        feed-forward output layers, the output elsewhere). Default: the same for every layer."""
        return dict(settings)

    @classmethod
    def check_size(
        cls, key: str, base: nn.Module, settings: Mapping[str, Any], *, field: str = "dim"
    ) -> None:
        """BadInput naming the layer when a rank ``dim`` is above out + in·k·k of ``base``.

        A rank above min(out, in·k·k) adds nothing to ΔW but is common and harmless (one
        study-wide dim over narrow layers such as SD's 4-channel conv_in/conv_out); above
        out + in·k·k each factor alone holds more numbers than the full weight, so the value is
        a mistake (a rank of 1e11 would otherwise fail as an allocation error in training).
        """
        dim = settings.get("dim")
        weight = getattr(base, "weight", None)
        if not cls.rank_bounded or not isinstance(dim, int) or weight is None or weight.dim() < 2:
            return
        out_f, fan_in = int(weight.shape[0]), int(weight[0].numel())
        if dim > out_f + fan_in:
            need = dim * (out_f + fan_in) * weight.element_size()
            raise BadInput(
                f"adapter: {field} {dim} for layer {key} ({out_f}×{fan_in}) would allocate "
                f"{human_bytes(need)} of factors; a rank above {min(out_f, fan_in)} adds nothing "
                f"(at most out + in·k·k = {out_f + fan_in})"
            )

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

    def delta_weight_vjp(self, grad_w: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        """dL/dθ for each trainable parameter θ given dL/dΔW (autograd through delta_weight)."""
        params = tuple(p for p in self.parameters() if p.requires_grad)
        with torch.enable_grad():
            return torch.autograd.grad(self.delta_weight(), params, grad_w, allow_unused=True)

    def merged_backward(
        self, x: torch.Tensor, g: torch.Tensor, *, input_grad: bool
    ) -> tuple[torch.Tensor | None, tuple[torch.Tensor | None, ...]]:
        """Backward of the merged forward: (dL/dx or None, dL/dθ for the trainable parameters)."""
        grad_x = None
        if input_grad:
            # W0 + λΔW in the parameters' dtype, cast to g's by dense_input_grad (as in forward)
            with torch.no_grad(), autocast_off(x.device.type):
                grad_x = dense_input_grad(self, x, self.merged_weight(), g)
        params = [p for p in self.parameters() if p.requires_grad]
        return grad_x, (self.merged_param_grads(x, g) if params else ())

    def merged_param_grads(self, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        """dL/dθ for the trainable parameters, given the layer input x and g = dL/dy of the merged
        forward y = op(x, W0 + λΔW), following ``grad_mode``."""
        params = tuple(p for p in self.parameters() if p.requires_grad)
        lam = self.multiplier
        if self.grad_mode == "dense":
            return self.delta_weight_vjp(dense_weight_grad(self, x, g).mul_(lam))
        with torch.enable_grad():
            out = self.bypass(x.detach())
            return torch.autograd.grad(out, params, g * lam, allow_unused=True)

    def prefers_merged(self, x: torch.Tensor) -> bool:
        """Whether one op on the temporary W0 + λ·ΔW is cheaper than base(x) + λ·bypass(x)."""
        return False

    # --- the file layout ----------------------------------------------------------------
    def file_tensors(self) -> dict[str, torch.Tensor]:
        """This module's tensors keyed by file suffix (``lora_down.weight``, ``alpha``, …)."""
        raise NotImplementedError

    @classmethod
    def from_file_tensors(
        cls, base: BaseLayer, tensors: dict[str, torch.Tensor], *, name: str
    ) -> AdapterModule:
        """Rebuild a module from a file's tensors; BadInput naming ``name`` if shapes do not fit."""
        raise NotImplementedError

    @classmethod
    def detects(cls, suffixes: set[str]) -> bool:
        """Whether a module with these key suffixes belongs to this algorithm."""
        return bool(cls.detect_keys) and cls.detect_keys <= suffixes

    @classmethod
    def rank_bound(cls, tensors: dict[str, torch.Tensor]) -> int:
        """Upper bound on rank(ΔW) (ΔW flattened to [out, in·k·k]) from a module's file tensors."""
        raise NotImplementedError

    @classmethod
    def truncate_tensors(
        cls, tensors: dict[str, torch.Tensor], rank: int, *, name: str
    ) -> dict[str, torch.Tensor]:
        """A module's file tensors kept to their first ``rank`` rank components (A1111's ``dyn=``),
        for algorithms whose factors are ordered by rank (DyLoRA files); BadInput for the others."""
        raise BadInput(f"{name}: {cls.algo} factors are not ordered by rank; they cannot be truncated")

    @classmethod
    def truncates(cls) -> bool:
        """Whether :meth:`truncate_tensors` applies to this algorithm."""
        return cls.truncate_tensors.__func__ is not AdapterModule.truncate_tensors.__func__

    def before_step(self, generator: torch.Generator) -> None:
        """Called by the trainer before each training step, with a generator seeded from the run's
        seed and the step (DyLoRA samples its rank here). Default: nothing."""

    @classmethod
    def parameter_count(cls, tensors: dict[str, torch.Tensor]) -> int:
        """Trainable numbers a module's file tensors hold (the scalar ``alpha`` excluded)."""
        return sum(t.numel() for key, t in tensors.items() if key != "alpha")

    # --- generic behaviour ----------------------------------------------------------------
    def base_op(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The base layer's operation with another weight (same stride/padding/dilation)."""
        b = self.base
        if isinstance(b, nn.Conv2d):
            return F.conv2d(x, weight, bias, b.stride, b.padding, b.dilation)
        return F.linear(x, weight, bias)

    def merged_weight(self) -> torch.Tensor:
        """The temporary W0 + λ·ΔW (never stored on the module)."""
        return torch.add(self.base.weight, self.delta_weight(), alpha=self.multiplier)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.multiplier == 0:
            return self.base(x)
        if self.can_merge_forward(x) and self.prefers_merged(x):
            params = tuple(p for p in self.parameters() if p.requires_grad)
            return _MergedForward.apply(x, self, *params)
        # base(x) + λ·bypass(x) in one pass over the output (no separate scaled temporary)
        return torch.add(self.base(x), self.bypass(x), alpha=self.multiplier)

    def can_merge_forward(self, x: torch.Tensor) -> bool:
        """The merged forward needs a frozen base (it saves no graph through W0); it holds under
        autocast too (see the module docstring)."""
        b = self.base
        trained = b.weight.requires_grad or (b.bias is not None and b.bias.requires_grad)
        return not trained

    def extra_repr(self) -> str:
        return f"algo={self.algo}, base={tuple(self.base.weight.shape)}, multiplier={self.multiplier}"


class _MergedForward(torch.autograd.Function):
    """y = op(x, W0 + λ·ΔW) with one base op, saving only x for backward.

    The merged weight is rebuilt in backward instead of saved, so nothing ΔW-sized outlives the
    forward. dL/dx = opᵀ(g; W0 + λΔW). The factors' gradients come either from the bypass graph
    re-run on the saved x (``grad_mode="bypass"``: λ·dL/dθ of ⟨g, bypass(x)⟩) or from the dense
    dL/dW = λ·gᵀx backpropagated through ΔW(θ) (``grad_mode="dense"``). Under autocast the base
    op runs in the autocast dtype and backward under the forward's autocast state.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, module: AdapterModule, *params: torch.Tensor) -> torch.Tensor:
        dtype = record_autocast(ctx, x)
        with torch.no_grad(), autocast_off(x.device.type):
            w, bias = module.merged_weight(), module.base.bias
            if dtype is not None:  # as autocast casts a base op's operands
                x, w = x.to(dtype), w.to(dtype)
                bias = None if bias is None else bias.to(dtype)
            y = module.base_op(x, w, bias)
        ctx.module, ctx.param_dtypes = module, [p.dtype for p in params]
        ctx.save_for_backward(x)
        return y

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (x,) = ctx.saved_tensors
        module: AdapterModule = ctx.module
        with replay_autocast(ctx):
            grad_x, grads = module.merged_backward(x, grad_out, input_grad=ctx.needs_input_grad[0])
        return (as_dtype(grad_x, ctx.input_dtype), None, *cast_grads(grads, ctx.param_dtypes))


PLUGIN_BASES: list[type] = []
"""The base classes an ``lyco_bench.algorithms`` plug-in may derive from: AdapterModule, and
ModelMethod (which lyco_bench.methods adds here when it is imported, before any entry point is)."""


def _accept_algorithm(obj: Any) -> tuple[str, type]:
    """An entry point's object as a registry entry: a subclass of one of :data:`PLUGIN_BASES`."""
    if not (isinstance(obj, type) and issubclass(obj, tuple(PLUGIN_BASES))):
        names = " or ".join(base.__name__ for base in PLUGIN_BASES)
        raise TypeError(f"not a subclass of {names}")
    return obj.algo, obj


ALGORITHMS: Registry[type[AdapterModule]] = Registry(
    "algorithm",
    entry_point="lyco_bench.algorithms",
    packages=("lyco_bench.adapters.algorithms", "lyco_bench.methods"),
    skip=frozenset({"base"}),
    accept=_accept_algorithm,
)
"""Layer algorithms (``lyco_bench.adapters.algorithms``) and model-level methods
(``lyco_bench.methods``) by ``algo`` name, discovered on first use (:mod:`lyco_bench.registry`)."""


def register_algorithm(cls: type) -> type:
    """Class decorator: make a layer algorithm (an AdapterModule) or a model-level method (a
    lyco_bench.methods.ModelMethod) available by its ``algo`` name."""
    return ALGORITHMS.register(cls.algo, cls)


PLUGIN_BASES.append(AdapterModule)


def get_algorithm(name: str) -> type[AdapterModule]:
    """The algorithm registered as ``name`` or under an alias of another tool (``locon``, ``full``)."""
    if name in ALGORITHMS:
        return ALGORITHMS[name]
    for cls in ALGORITHMS.values():
        if name in cls.aliases:
            return cls
    known = ", ".join(sorted(ALGORITHMS))
    raise BadInput(f"unknown algorithm {name!r} (known: {known})")


def detect_algorithm(suffixes: set[str], *, name: str, hints: set[str] | frozenset[str] = frozenset()):
    """The algorithm of a module with these key suffixes.

    ``hints``: algorithm names a file's metadata gives (lyco-bench's ``lyco_bench.algo``,
    LyCORIS's ``algo``); a hinted algorithm that can read the keys wins. Otherwise the most
    specific match: the algorithm with the most ``detect_keys`` among those present — so
    LoRA + ``dora_scale`` is LoRA with DoRA, and an algorithm whose keys extend another's is
    told apart from it.
    """
    hinted = [
        ALGORITHMS[h] for h in sorted(hints) if h in ALGORITHMS and issubclass(ALGORITHMS[h], AdapterModule)
    ]
    for cls in hinted:  # by keys alone some algorithms cannot be told apart (DyLoRA is a LoRA file)
        if cls.detect_keys and cls.detect_keys <= suffixes <= cls.file_keys:
            return cls
    candidates = [
        cls for cls in ALGORITHMS.values() if issubclass(cls, AdapterModule) and cls.detects(suffixes)
    ]
    if not candidates:
        raise BadInput(f"{name}: unknown key suffixes {sorted(suffixes)}")
    cls = max(candidates, key=lambda c: (len(c.detect_keys), suffixes <= c.file_keys))
    unknown = suffixes - cls.file_keys
    if unknown:
        raise BadInput(f"{name}: unknown key suffix {sorted(unknown)[0]!r} for {cls.algo}")
    return cls
