"""The run configuration of one training run (docs/protocol.md §2 defaults) and the files a run writes."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import ConfigDict, Field, field_validator, model_validator

from lyco_bench.adapters import ALGORITHMS, AdapterSpec
from lyco_bench.adapters.inject import DEFAULT_ALGO
from lyco_bench.config import StrictModel
from lyco_bench.errors import BadInput

OUTPUT_VERSION = 1
"""Bumped when a change to the trainer changes the checkpoints written for the same settings
(sweep job ids cover it: every finished training becomes stale)."""


class CaptionSettings(StrictModel):
    """How an image's caption is built (docs/protocol.md §2)."""

    strategy: Literal["tags", "trigger", "all-tags"] = "tags"
    """``tags``: trigger + tags without the concept's own (paper); ``trigger``; ``all-tags``."""
    dropout: float = Field(0.05, ge=0.0, le=1.0)
    """Probability that a caption is replaced by the empty string."""


class BucketSettings(StrictModel):
    """Aspect-ratio buckets: sides from ``min`` to ``max`` in steps of ``step`` pixels."""

    min: int = Field(320, gt=0)
    max: int = Field(960, gt=0)
    step: int = Field(64, gt=0)
    """Must keep latents divisible by the UNet's downsampling (SD1.x: 64, the tiny model: 16)."""


class RunConfig(StrictModel):
    """One training run. Defaults are the paper's (docs/protocol.md §2) except where noted."""

    model_config = ConfigDict(**StrictModel.model_config, use_attribute_docstrings=True)

    model: str
    """Hub id, local diffusers folder or single-file ``.safetensors`` checkpoint."""
    dataset: str
    """Dataset root (``<root>/dataset.yaml`` + ``<category>/<concept>[/<subclass>]/`` folders)."""
    categories: list[str] | None = None
    """Train on these categories only (None: all)."""
    skip_bad_images: bool = False
    """Leave unreadable images out with a warning instead of failing."""
    captions: CaptionSettings = CaptionSettings()
    adapter: AdapterSpec = AdapterSpec()
    """Algorithm, its settings, preset, include/exclude (lyco_bench.adapters.AdapterSpec); settings
    left out take the algorithm's own defaults (the paper's for LoRA/LoHa/LoKr)."""
    train_text_encoder: bool = True
    """Adapt the text encoder too (the paper does); kept equal to ``adapter.train_text_encoder``."""
    lr: float = Field(5e-4, gt=0)
    """Left out: the algorithm's ``default_lr`` (the paper's: 5e-4 for LyCORIS algorithms, 1e-6 native)."""
    text_encoder_lr: float | None = Field(None, gt=0)
    """None: the same as ``lr`` (as the paper)."""
    lr_scheduler: Literal["constant_with_warmup", "constant", "cosine", "linear"] = "constant_with_warmup"
    warmup_steps: int = Field(3500, ge=0)
    """The paper's 3,500 steps; a tiny run (a few dozen steps) should override it."""
    optimizer: Literal["adamw", "adamw8bit"] = "adamw"
    """``adamw8bit`` (the paper's) needs bitsandbytes (``pip install 'lyco-bench[gpu]'``), checked
    here, and a device bitsandbytes runs it on (CUDA; the CPU too with recent releases), checked
    when the run's device is known (lyco_bench.training.optim)."""
    weight_decay: float = Field(0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = Field(1e-8, gt=0)
    max_grad_norm: float = Field(1.0, ge=0)
    """Gradient-norm clip; 0 turns clipping off."""
    batch_size: int = Field(8, ge=1)
    resolution: int = Field(512, gt=0)
    buckets: BucketSettings = BucketSettings()
    epochs: int = Field(50, ge=1)
    checkpoint_epochs: list[int] = [10, 30, 50]
    """Epochs saved; the last epoch is always saved too."""
    checkpoint_every: int | None = Field(None, ge=1)
    """Also save every N epochs (cheap checkpoints for a trajectory; None: only ``checkpoint_epochs``).
    Saving changes nothing that is trained: the same run with or without it has the same files."""
    seed: int = 23
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """The paper trained in bf16 on a GPU; fp16 needs a GPU (loss scaling)."""
    gradient_checkpointing: bool = False
    """Recompute the denoiser's (and trained text encoders') blocks in backward instead of keeping
    their activations: the same numbers, less memory, ~30% more compute."""
    base_dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    """The frozen base weights' dtype (denoiser, text encoders); adapter parameters and optimizer
    state stay float32. A half dtype needs ``mixed_precision`` of the same dtype (the base layers
    then compute in it, as autocast casts them anyway). ``auto``: ``mixed_precision``'s dtype
    (``bf16`` → bfloat16, ``fp16`` → float16, ``no`` → float32), resolved here."""
    cache_text_outputs: bool = False
    """Encode every caption the run can draw once, then train on the stored outputs and take the
    text encoders off the GPU. Only when no text encoder gets gradients (no text-encoder adapter,
    no textual inversion): otherwise resolved to false."""
    device: str = "auto"
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``, ``cuda:N``."""
    cache_dir: str | None = None
    """Latent cache; None: ``$LYCO_BENCH_CACHE`` or ``~/.cache/lyco-bench``, then ``/latents``.
    Entries are keyed by image content, VAE and bucket, so one cache serves every run."""
    prior_loss_weight: float = Field(0.0, ge=0)
    """DreamBooth prior preservation (Ruiz et al. 2023, eq. 2): loss = MSE(instance) + w·MSE(class)
    with a class image of each instance's concept in the same batch; 0: off, 1.0 DreamBooth's."""
    class_images: str | None = None
    """Class images for prior preservation: a folder written by ``lyco-bench generate`` (its
    manifest's prompts are the concepts' ``class_prompt``); the sweep fills it. Concepts with a
    ``class_images`` folder in dataset.yaml use that instead."""
    num_class_images: int = Field(100, ge=1)
    """Class images per class prompt (DreamBooth's 100) when lyco-bench generates them."""
    noise_offset: float = Field(0.0, ge=0)
    """Adds offset·N(0, I) per (sample, channel) to the noise (0: plain DDPM, as the paper)."""

    @model_validator(mode="before")
    @classmethod
    def _fill_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        adapter = data.get("adapter", {})
        if not isinstance(adapter, dict):
            return data  # let validation name the bad value
        adapter = dict(adapter)
        algo = adapter.get("algo", DEFAULT_ALGO)
        if algo in ALGORITHMS:  # an unknown one is named by AdapterSpec's own check
            data.setdefault("lr", ALGORITHMS[algo].default_lr)
        # One switch, two places: the adapter spec selects the layers, the trainer the lr groups.
        if "train_text_encoder" in data:
            adapter.setdefault("train_text_encoder", data["train_text_encoder"])
        elif "train_text_encoder" in adapter:
            data["train_text_encoder"] = adapter["train_text_encoder"]
        data["adapter"] = adapter
        if data.get("base_dtype") == "auto":
            data["base_dtype"] = AUTOCAST_BASE_DTYPE.get(data.get("mixed_precision", "no"), "auto")
        if data.get("cache_text_outputs") is True and text_encoder_gradients(data, algo):
            data["cache_text_outputs"] = False  # nothing to cache: the outputs change every step
        return data

    @field_validator("betas")
    @classmethod
    def _betas(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in value):
            raise ValueError("each beta must be in [0, 1)")
        return value

    @field_validator("checkpoint_epochs")
    @classmethod
    def _sorted_epochs(cls, value: list[int]) -> list[int]:
        if any(e < 1 for e in value):
            raise ValueError("epochs count from 1")
        return sorted(set(value))

    @field_validator("optimizer")
    @classmethod
    def _optimizer_available(cls, value: str) -> str:
        if value == "adamw8bit":
            from lyco_bench.training.optim import eight_bit_error

            error = eight_bit_error()
            if error is not None:
                raise ValueError(error)
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", value):
            raise ValueError("expected auto, cpu, cuda, cuda:N or mps")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        if self.adapter.train_text_encoder != self.train_text_encoder:
            raise ValueError("train_text_encoder differs from adapter.train_text_encoder (set one)")
        if self.base_dtype != "float32" and AUTOCAST_BASE_DTYPE[self.mixed_precision] != self.base_dtype:
            want = {v: k for k, v in AUTOCAST_BASE_DTYPE.items()}[self.base_dtype]
            raise ValueError(
                f"base_dtype: {self.base_dtype} needs mixed_precision: {want} "
                f"(got {self.mixed_precision}; the base layers compute in their weights' dtype)"
            )
        late = [e for e in self.checkpoint_epochs if e > self.epochs]
        if late:
            raise ValueError(f"checkpoint_epochs: {late[0]} is after the last epoch ({self.epochs})")
        if not self.buckets.min <= self.resolution <= self.buckets.max:
            raise ValueError(f"buckets: need min ≤ resolution ({self.resolution}) ≤ max")
        return self

    def save_epochs(self) -> list[int]:
        every = (
            range(self.checkpoint_every, self.epochs + 1, self.checkpoint_every)
            if self.checkpoint_every
            else ()
        )
        return sorted({*self.checkpoint_epochs, *every, self.epochs})


AUTOCAST_BASE_DTYPE = {"no": "float32", "bf16": "bfloat16", "fp16": "float16"}
"""``base_dtype: auto`` per ``mixed_precision``: the dtype autocast computes the base layers in."""


def text_encoder_gradients(data: dict[str, Any], algo: str) -> bool:
    """Whether a run (raw config) back-propagates into a text encoder: a model-level method's own
    declaration (textual inversion does), else whether text-encoder adapters are trained."""
    from lyco_bench.methods import is_model_method

    cls = ALGORITHMS.get(algo)
    if cls is not None and is_model_method(cls):
        return bool(cls.text_encoder_gradients)
    return bool(data.get("train_text_encoder", True))


def checkpoint_path(out_dir: str | os.PathLike, epoch: int) -> Path:
    """``out_dir / ckpt-e010.safetensors`` for epoch 10."""
    return Path(out_dir) / f"ckpt-e{epoch:03d}.safetensors"


def state_path(out_dir: str | os.PathLike, epoch: int) -> Path:
    return Path(out_dir) / f"ckpt-e{epoch:03d}.state.safetensors"


def record_path(out_dir: str | os.PathLike, epoch: int) -> Path:
    return Path(out_dir) / f"ckpt-e{epoch:03d}.json"


def default_cache_dir() -> Path:
    root = os.environ.get("LYCO_BENCH_CACHE") or Path.home() / ".cache" / "lyco-bench"
    return Path(root) / "latents"


def resolve_device(config: RunConfig) -> torch.device:
    """The device to train on; BadInput for a GPU that is not there or a precision it needs."""
    name = config.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BadInput(f"device: {name!r} requested but no CUDA GPU is available")
    if name == "mps" and not torch.backends.mps.is_available():
        raise BadInput("device: 'mps' requested but MPS is not available")
    device = torch.device(name)
    if config.mixed_precision == "fp16" and device.type != "cuda":
        raise BadInput("mixed_precision: fp16 needs a CUDA GPU (use 'no' or 'bf16')")
    if config.optimizer == "adamw8bit":
        from lyco_bench.training.optim import eight_bit_error

        error = eight_bit_error(device)
        if error is not None:
            raise BadInput(f"optimizer: {error}")
    return device
