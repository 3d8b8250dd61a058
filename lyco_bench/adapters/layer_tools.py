"""Helpers the algorithm files share, beside the :class:`lyco_bench.adapters.base.AdapterModule`
contract (and re-exported there): dense gradients of a layer's base op (``merged_backward``), the
cost model that chooses the merged forward (``prefers_merged``), and checks of file tensors.

``module`` below is an AdapterModule: only its frozen ``base`` layer and ``is_conv`` are read.
"""

from __future__ import annotations

import torch
from torch import nn

from lyco_bench.errors import BadInput


def dense_input_grad(
    module: nn.Module, x: torch.Tensor, weight: torch.Tensor, g: torch.Tensor
) -> torch.Tensor:
    """dL/dx of op(x, W) given g = dL/dy, in g's dtype (the forward's compute dtype)."""
    b = module.base
    weight = weight.to(g.dtype)
    if isinstance(b, nn.Conv2d):
        return torch.nn.grad.conv2d_input(x.shape, weight, g, b.stride, b.padding, b.dilation)
    return g @ weight  # (…, out) @ (out, in) -> (…, in)


def dense_weight_grad(module: nn.Module, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """dL/dW of op(x, W) given g = dL/dy, in g's dtype (the forward's compute dtype)."""
    b = module.base
    x = x.to(g.dtype)
    if isinstance(b, nn.Conv2d):
        return torch.nn.grad.conv2d_weight(x, b.weight.shape, g, b.stride, b.padding, b.dilation)
    # (N, out)ᵀ @ (N, in) -> (out, in)
    return g.reshape(-1, g.shape[-1]).t() @ x.reshape(-1, x.shape[-1])


def matmul_cost(m: int, k: int, n: int) -> float:
    """Rough CPU cost of an (m×k)@(k×n) product: flops plus memory traffic.

    Thin products (rank 4–8) are bound by reading their operands, not by arithmetic, so each
    element moved counts like a few multiply-adds; the constant was fitted on a 2-core CPU.
    """
    return m * k * n + MEMORY_WEIGHT * (m * k + k * n + m * n)


MEMORY_WEIGHT = 16.0


def tokens(x: torch.Tensor, module: nn.Module) -> int:
    """Rows of the flattened layer input: batch·tokens for Linear, batch·H_out·W_out for Conv2d."""
    if module.is_conv:
        b = module.base
        h, w = x.shape[-2:]
        kh, kw = b.kernel_size
        ho = (h + 2 * b.padding[0] - b.dilation[0] * (kh - 1) - 1) // b.stride[0] + 1
        wo = (w + 2 * b.padding[1] - b.dilation[1] * (kw - 1) - 1) // b.stride[1] + 1
        return (x.numel() // (x.shape[-3] * h * w)) * ho * wo
    return x.numel() // x.shape[-1]


def human_bytes(n: float) -> str:
    """``n`` bytes in B/KB/MB/GB/TB (powers of 1000), for messages."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def check_shape(name: str, key: str, tensor: torch.Tensor, shape: tuple[int, ...]) -> None:
    """BadInput naming the module and key when a file tensor does not have the expected shape."""
    if tuple(tensor.shape) != tuple(shape):
        raise BadInput(
            f"{name}: {key} has shape {tuple(tensor.shape)}, expected {tuple(shape)} for this layer"
        )


def check_keys(name: str, tensors: dict[str, torch.Tensor], allowed: set[str] | frozenset[str]) -> None:
    unknown = set(tensors) - set(allowed)
    if unknown:
        raise BadInput(f"{name}: unexpected key suffix {sorted(unknown)[0]!r}")


def read_alpha(tensors: dict[str, torch.Tensor], dim: int, *, name: str) -> float:
    """The file's scalar alpha, or dim when absent or 0 (scale 1: kohya's and LyCORIS's reading,
    ``alpha = lora_dim if alpha is None or alpha == 0 else alpha``)."""
    t = tensors.get("alpha")
    if t is None:
        return float(dim)
    if t.numel() != 1:
        raise BadInput(f"{name}: alpha must be a scalar, got shape {tuple(t.shape)}")
    return float(t.float().item()) or float(dim)


def alpha_tensor(alpha: float) -> torch.Tensor:
    return torch.tensor(float(alpha), dtype=torch.float32)
