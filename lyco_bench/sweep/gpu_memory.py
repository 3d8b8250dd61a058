"""GPU memory of one training configuration, estimated without a GPU (docs/internals.md, memory).

    peak ≈ weights + adapter (params + grads) + optimizer states + activations + CUDA context

- weights: the denoiser's and text encoders' parameters in ``base_dtype`` (a text encoder whose
  outputs are cached leaves the GPU: 0); the VAE leaves it once latents are cached, which training
  always does, unless prior preservation encodes class images as it goes (then fp32 VAE);
- adapter: trainable parameters in fp32, and their fp32 gradients;
- optimizer: AdamW's two fp32 states per parameter; bitsandbytes' AdamW8bit two uint8 states plus
  one fp32 absmax per 256-value block each (tensors under 4,096 values keep fp32 states, its
  ``min_8bit_size``);
- activations: the bytes autograd saves for backward in one training forward, counted — not
  modelled — by running the model on the ``meta`` device (shapes, no data) at the configuration's
  largest bucket and batch (× 2 with prior preservation) with the adapter injected, under
  ``saved_tensors_hooks``. What a GPU run differs in is emulated: autocast (the matmul and
  convolution inputs cast to the compute dtype — so a fp32 base saves a half copy of every weight it
  multiplies — norms and softmax in fp32), attention as FlashAttention keeps it (q, k, v, output
  and the fp32 row log-sum-exp, no score matrix: Dao 2023, what SDPA runs on a GPU), and gradient
  checkpointing as ``torch.utils.checkpoint`` keeps it (each block's inputs, plus one block's own
  activations while it is recomputed in backward). Parameters saved by an op are counted once, in
  weights. Trained text encoders are traced the same way at their token length;
- CUDA context: a fixed 0.5 GiB (the CUDA runtime and cuBLAS/cuDNN workspaces, outside torch's
  allocator).

Gradients flowing back through the activations (one activation-sized buffer at a time) and the
allocator's fragmentation are not counted; ``benchmarks/memory.py`` compares the activation count
with autograd's own on the CPU and the whole estimate with ``torch.cuda.max_memory_allocated``
where a GPU is lent.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

from lyco_bench.training.memory import DTYPES, FrozenCast, all_parameters

CUDA_CONTEXT_BYTES = 2**29  # 0.5 GiB
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
COMPUTE_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16}
EIGHT_BIT_MIN, EIGHT_BIT_BLOCK = 4096, 256  # bitsandbytes' min_8bit_size and optimizer blocksize

# Autocast's lists (torch/csrc/autograd/autocast_mode): ops run in the low dtype, ops run in fp32.
_LOW_OPS = {F.linear, F.conv1d, F.conv2d, torch.matmul, torch.bmm, torch.baddbmm, torch.mm, torch.addmm,
            torch.Tensor.matmul, torch.Tensor.__matmul__, torch.Tensor.bmm}  # fmt: skip
_FP32_OPS = {F.layer_norm, F.group_norm, F.softmax, torch.softmax, torch.Tensor.softmax, F.log_softmax}


class _FlashAttention(torch.autograd.Function):
    """SDPA as FlashAttention saves it for backward: q, k, v, output and the fp32 log-sum-exp."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = q.new_empty((*q.shape[:-1], v.shape[-1]))
        lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # pragma: no cover - a trace never runs backward
        raise NotImplementedError


class _GpuOps(TorchFunctionMode):
    """Autocast (``dtype``, or none) and FlashAttention, above autograd, on meta tensors."""

    def __init__(self, dtype: torch.dtype | None) -> None:
        super().__init__()
        self.dtype = dtype

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        if self.dtype is not None and func in _LOW_OPS:
            args, kwargs = _cast((args, kwargs), self.dtype)
        elif self.dtype is not None and func in _FP32_OPS:
            args, kwargs = _cast((args, kwargs), torch.float32)
        if func is F.scaled_dot_product_attention:
            named = [kwargs.get(name) for name in ("query", "key", "value")]
            q, k, v = (*args[:3], *named[len(args[:3]) :])
            if self.dtype is not None:
                q, k, v = (t.to(self.dtype) for t in (q, k, v))
            return _FlashAttention.apply(q, k, v)
        return func(*args, **kwargs)


def _cast(tree: Any, dtype: torch.dtype) -> Any:
    return pytree.tree_map_only(torch.Tensor, lambda t: t.to(dtype) if t.is_floating_point() else t, tree)


@dataclass
class _Saved:
    """Unique storages saved for backward, parameters left out (they are counted as weights)."""

    params: set[int]
    seen: dict[int, int] = field(default_factory=dict)
    block_peak: int = 0
    held: list[Any] = field(default_factory=list)
    """The storages counted, held so that no key (an id on meta) is reused during the trace."""

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        key = id(storage) if t.device.type == "meta" else storage.data_ptr()
        if key not in self.params and key not in self.seen:
            self.seen[key] = storage.nbytes()
            self.held.append(storage)
        return t

    @property
    def total(self) -> int:
        return sum(self.seen.values()) + self.block_peak


def _param_keys(module: nn.Module) -> set[int]:
    keys = set()
    for p in all_parameters(module):
        storage = p.untyped_storage()
        keys.add(id(storage) if p.device.type == "meta" else storage.data_ptr())
    return keys


def saved_bytes(
    module: nn.Module,
    args: tuple,
    kwargs: dict[str, Any],
    *,
    compute_dtype: torch.dtype | None = None,
    checkpointing: bool = False,
    emulate_gpu: bool = True,
) -> int:
    """Bytes autograd keeps between ``module(*args, **kwargs)`` and its backward (see the module
    docstring). ``emulate_gpu=False`` counts what the ops really save on the module's device (on
    the CPU: the validation of the emulation, benchmarks/memory.py)."""
    saved = _Saved(_param_keys(module))
    with (
        _checkpointing(module, saved, checkpointing),
        torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t),
    ):
        if emulate_gpu:
            from lyco_bench.adapters.amp import EMULATED_AUTOCAST

            if compute_dtype is not None:  # the adapters' own Functions cast as autocast would
                EMULATED_AUTOCAST["meta"] = compute_dtype
            try:
                with _GpuOps(compute_dtype):
                    module(*args, **kwargs)
            finally:
                EMULATED_AUTOCAST.pop("meta", None)
        else:
            device = next(module.parameters()).device.type
            with torch.autocast(
                device, dtype=compute_dtype or torch.float32, enabled=compute_dtype is not None
            ):
                module(*args, **kwargs)
    return saved.total


@contextmanager
def _checkpointing(module: nn.Module, outer: _Saved, on: bool):
    """Diffusers' checkpointing with a function that does what ``torch.utils.checkpoint`` does to
    memory: the block's tensor inputs stay, its own activations live only while it is recomputed."""
    if not on:
        yield
        return

    def block(fn: Any, *args: Any) -> Any:
        inner = _Saved(outer.params)
        with torch.autograd.graph.saved_tensors_hooks(inner.pack, lambda t: t):
            out = fn(*args)
        outer.block_peak = max(outer.block_peak, inner.total)
        for t in pytree.tree_flatten(args)[0]:
            if isinstance(t, torch.Tensor):
                outer.pack(t)
        return out

    module.enable_gradient_checkpointing(gradient_checkpointing_func=block)
    try:
        yield
    finally:
        module.disable_gradient_checkpointing()


def denoiser_class(config: Mapping[str, Any]) -> type:
    """The diffusers class of a denoiser config: its saved ``_class_name``, else a FLUX-style
    transformer when it has a joint attention width, else a UNet."""
    import diffusers

    name = config.get("_class_name") or (
        "FluxTransformer2DModel" if "joint_attention_dim" in config else "UNet2DConditionModel"
    )
    return getattr(diffusers, name)


def denoiser_inputs(
    denoiser: nn.Module, batch: int, width: int, height: int, *, text_tokens: int | None = None
) -> tuple[tuple, dict[str, Any]]:
    """Meta inputs of one training forward, from the denoiser's config: a UNet (SD1.x/SD2, SDXL's
    ``text_time`` added conditioning) or a FLUX-style transformer (packed 2×2 latent tokens)."""
    cfg = denoiser.config
    meta = {"device": "meta"}
    if hasattr(cfg, "joint_attention_dim"):  # FluxTransformer2DModel
        tokens, text = (height // 16) * (width // 16), text_tokens or 512
        kwargs = dict(
            hidden_states=torch.empty(batch, tokens, cfg.in_channels, **meta),
            encoder_hidden_states=torch.empty(batch, text, cfg.joint_attention_dim, **meta),
            pooled_projections=torch.empty(batch, cfg.pooled_projection_dim, **meta),
            timestep=torch.empty(batch, **meta),
            img_ids=torch.empty(tokens, 3, **meta),
            txt_ids=torch.empty(text, 3, **meta),
        )
        if cfg.guidance_embeds:
            kwargs["guidance"] = torch.empty(batch, **meta)
        return (), kwargs
    cross = cfg.cross_attention_dim
    cross = cross if isinstance(cross, int) else cross[0]
    kwargs = dict(
        sample=torch.empty(batch, cfg.in_channels, height // 8, width // 8, **meta),
        timestep=torch.empty(batch, **meta),
        encoder_hidden_states=torch.empty(batch, text_tokens or 77, cross, **meta),
    )
    if cfg.addition_embed_type == "text_time":  # SDXL: pooled text + 6 size/crop ids
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.empty(batch, pooled, **meta),
            "time_ids": torch.empty(batch, 6, **meta),
        }
    return (), kwargs


def text_encoder_inputs(encoder: nn.Module, batch: int) -> tuple[tuple, dict[str, Any]]:
    """Meta token ids at the encoder's full length (CLIP: 77; T5 without a limit: 512)."""
    tokens = getattr(encoder.config, "max_position_embeddings", None) or 512
    return (torch.zeros(batch, tokens, dtype=torch.long, device="meta"),), {}


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of one training configuration's peak GPU memory, by part (module docstring)."""

    weights: int
    adapter: int
    optimizer: int
    activations: int
    context: int = CUDA_CONTEXT_BYTES

    @property
    def total(self) -> int:
        return self.weights + self.adapter + self.optimizer + self.activations + self.context


def optimizer_bytes(sizes: list[int], optimizer: str) -> int:
    """Optimizer state bytes for trainable tensors of ``sizes`` values each (module docstring)."""
    if optimizer != "adamw8bit":
        return sum(8 * n for n in sizes)
    total = 0
    for n in sizes:
        blocks = -(-n // EIGHT_BIT_BLOCK)
        total += 8 * n if n < EIGHT_BIT_MIN else 2 * (n + 4 * blocks)
    return total


@dataclass(frozen=True)
class TrainingShape:
    """What a configuration trains with, as far as memory goes (from its resolved run settings)."""

    batch: int
    width: int
    height: int
    mixed_precision: str = "no"
    base_dtype: str = "float32"
    gradient_checkpointing: bool = False
    cached_text: bool = False
    text_gradients: bool = False
    optimizer: str = "adamw"
    vae_on_device: bool = False

    @classmethod
    def of_run(cls, run: dict[str, Any], *, width: int, height: int, text_gradients: bool) -> TrainingShape:
        prior = run.get("prior_loss_weight", 0) > 0  # one class image per instance in each batch
        return cls(
            batch=run["batch_size"] * (2 if prior else 1),
            width=width,
            height=height,
            mixed_precision=run.get("mixed_precision", "no"),
            base_dtype=run.get("base_dtype", "float32"),
            gradient_checkpointing=bool(run.get("gradient_checkpointing")),
            cached_text=bool(run.get("cache_text_outputs")) and not text_gradients,
            text_gradients=text_gradients,
            optimizer=run.get("optimizer", "adamw"),
            vae_on_device=prior,
        )


def estimate_training_memory(
    denoiser: nn.Module,
    text_encoders: list[nn.Module],
    shape: TrainingShape,
    *,
    vae_params: int = 0,
) -> MemoryEstimate:
    """Peak GPU memory of training ``shape`` on models whose trainable parameters (the injected
    adapter, on the ``meta`` device or not) are the ones with ``requires_grad``."""
    base = BYTES[shape.base_dtype]
    modules = [denoiser, *text_encoders]
    params = {m: all_parameters(m) for m in modules}
    trainable = {id(p): p for ps in params.values() for p in ps if p.requires_grad}
    frozen = {id(p): p for ps in params.values() for p in ps if not p.requires_grad}
    text_frozen = {id(p) for m in text_encoders for p in params[m] if not p.requires_grad}
    weights = sum(
        p.numel() * (base if p.is_floating_point() else p.element_size())
        for key, p in frozen.items()
        if not (shape.cached_text and key in text_frozen)
    )
    sizes = [p.numel() for p in trainable.values()]
    dtype = COMPUTE_DTYPE.get(shape.mixed_precision)
    args, kwargs = denoiser_inputs(denoiser, shape.batch, shape.width, shape.height)
    if shape.text_gradients:  # gradients reach the text encoder through the conditioning
        key = "encoder_hidden_states"
        kwargs[key] = kwargs[key].requires_grad_(True)
    with _base_dtype(modules, shape.base_dtype):
        activations = saved_bytes(
            denoiser, args, kwargs, compute_dtype=dtype, checkpointing=shape.gradient_checkpointing
        )
        if shape.text_gradients:
            for encoder in text_encoders:
                t_args, t_kwargs = text_encoder_inputs(encoder, shape.batch)
                activations += saved_bytes(encoder, t_args, t_kwargs, compute_dtype=dtype)
    return MemoryEstimate(
        weights=weights + 4 * vae_params * shape.vae_on_device,
        adapter=8 * sum(sizes),  # fp32 parameters and their fp32 gradients
        optimizer=optimizer_bytes(sizes, shape.optimizer),
        activations=activations,
    )


@contextmanager
def _base_dtype(modules: list[nn.Module], name: str):
    """Frozen parameters in the base dtype for the trace (meta tensors: nothing is copied)."""
    cast = FrozenCast(modules, DTYPES[name], keep_originals=True) if name != "float32" else None
    try:
        yield
    finally:
        if cast is not None:
            cast.restore()
