"""The trainer's optimizers: AdamW (torch) and the paper's 8-bit AdamW (bitsandbytes, ``pip install
'lyco-bench[gpu]'``), and where the 8-bit one can run.

bitsandbytes decides that, not lyco-bench: CUDA always; recent releases (0.50 here, measured) run
8-bit AdamW on the CPU as well, older ones and other devices may not. :func:`eight_bit_error`
asks once per device type by taking one real 8-bit step on a throw-away parameter, so a run that
cannot work fails before its model is loaded, in one line naming ``optimizer``.
"""

from __future__ import annotations

import contextlib
import functools
import io
from typing import Any

import torch

from lyco_bench.errors import BadInput

INSTALL_HINT = "pip install 'lyco-bench[gpu]'"


@functools.lru_cache(maxsize=1)
def bitsandbytes_missing() -> str | None:
    """Why bitsandbytes cannot be imported here (None: it can)."""
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            import bitsandbytes  # noqa: F401 - its import notices are not ours to print
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken native library
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
    return None


@functools.lru_cache(maxsize=8)
def _eight_bit_step_fails(device_type: str) -> str | None:
    import bitsandbytes as bnb

    try:
        # 4096 elements: bitsandbytes keeps smaller tensors' state in 32 bits, so this is a real 8-bit step.
        param = torch.nn.Parameter(torch.ones(64, 64, device=device_type))
        opt = bnb.optim.AdamW8bit([param], lr=1e-3)
        param.grad = torch.ones_like(param)
        opt.step()
    except Exception as exc:  # noqa: BLE001 - unsupported device: bitsandbytes' own error
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
    return None


def eight_bit_error(device: torch.device | None = None) -> str | None:
    """Why ``optimizer: adamw8bit`` cannot run (on ``device``; None: only whether bitsandbytes
    imports), or None when it can."""
    missing = bitsandbytes_missing()
    if missing is not None:
        return f"adamw8bit needs bitsandbytes, which cannot be imported here ({missing}; {INSTALL_HINT})"
    if device is None:
        return None
    failed = _eight_bit_step_fails(device.type)
    if failed is not None:
        return f"adamw8bit: bitsandbytes cannot run it on {device.type} here ({failed}); use 'adamw'"
    return None


def make_optimizer(name: str, groups: list[dict[str, Any]], **kwargs: Any) -> torch.optim.Optimizer:
    """AdamW or bitsandbytes' AdamW8bit over ``groups`` (BadInput naming ``optimizer`` when it cannot run)."""
    if name == "adamw8bit":
        error = eight_bit_error()
        if error is not None:
            raise BadInput(f"optimizer: {error}")
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(groups, **kwargs)
    return torch.optim.AdamW(groups, **kwargs)
