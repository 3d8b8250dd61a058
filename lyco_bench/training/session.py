"""One training session: data, model, adapter, optimizer, RNGs, and the denoising step.

What differs between base models — the text encoders and how captions become conditioning, size
conditioning, the training objective (ε/v-prediction, flow matching), the denoiser call — is the
model family's (lyco_bench.families), read off the loaded pipeline.

Every random draw of training comes from an explicit ``torch.Generator`` (batch order, caption
dropout, latent sampling + noise + timesteps) or, for adapter initialization, from a forked global
RNG, each seeded from the run seed, so the state of a run at an epoch boundary is a handful of
tensors (lyco_bench.training.state), resuming is exact, and what ran earlier in the process (any
draws from torch's, NumPy's or Python's global RNGs) changes nothing. The run never reseeds the
caller's global RNG either.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
import torch.nn.functional as F

from lyco_bench.errors import BadInput
from lyco_bench.training.config import RunConfig, default_cache_dir
from lyco_bench.training.memory import (
    DTYPES,
    FrozenCast,
    TextOutputCache,
    denoiser_of,
    text_encoders_of,
)

GENERATORS = ("order", "caption", "noise")


def derived_seed(seed: int, purpose: str) -> int:
    """An independent 63-bit seed per purpose, so one stream never shifts another."""
    digest = hashlib.sha256(f"lyco-bench:{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class Session:
    """Holds everything one run trains with; :meth:`step` is one optimizer step on one batch."""

    def __init__(self, config: RunConfig, *, device: torch.device, pipeline: Any | None = None) -> None:
        from lyco_bench.families import family_of
        from lyco_bench.models import load_pipeline
        from lyco_bench.utils import cuda_fast_math

        self.config = config
        self.device = device
        if device.type == "cuda":  # TF32 for what autocast leaves in fp32 (and fp32 training)
            cuda_fast_math()
        self._load_data()
        # A half-precision base is cast on the CPU before the denoiser and text encoders move, so
        # their fp32 weights never occupy the GPU (only the VAE goes first, to encode latents).
        self._staged = pipeline is None and config.base_dtype != "float32"
        self.pipe = pipeline if pipeline is not None else load_pipeline(config.model, device="cpu")
        (self.pipe.vae if self._staged else self.pipe).to(device)
        self.family = family_of(self.pipe)
        self.denoiser = self.family.denoiser(self.pipe)
        self.encoders = self.family.encoders(self.pipe)
        modules = (self.denoiser, *self.encoders.values(), self.pipe.vae)
        self._modules = [m for m in modules if m is not None]
        self._was_training = [m.training for m in self._modules]
        self._grad_flags = [[p.requires_grad for p in m.parameters()] for m in self._modules]
        self.net = None
        self._base_cast: Any = None
        self._offloaded: list[torch.nn.Module] = []
        self.text_cache: Any = None
        try:
            for module in self._modules:
                module.requires_grad_(False)
            self._check_buckets()
            self._encode_latents()
            self.prior = self._prior_data()
            self._build_network()
            self._build_optimizer()
            self._save_memory(lent=pipeline is not None)
        except BaseException:
            self.close()
            raise
        names = (*GENERATORS, "prior") if self.prior is not None else GENERATORS
        self.generators = {
            name: torch.Generator().manual_seed(derived_seed(config.seed, name)) for name in names
        }
        self.steps = self.steps_at_start = 0
        self.last_loss = float("nan")
        self._epoch_losses: list[float] = []

    # --- setup -------------------------------------------------------------------------------
    def _load_data(self) -> None:
        from lyco_bench.data import load_dataset, make_buckets

        cfg = self.config
        dataset = load_dataset(cfg.dataset, categories=cfg.categories, skip_bad_images=cfg.skip_bad_images)
        self.pairs = dataset.items()  # [(Concept, ImageItem)]
        if not self.pairs:
            raise BadInput(f"dataset: {cfg.dataset} has no images to train on")
        self.dataset_name, self.dataset_version = dataset.name, dataset.version
        self.num_images = len(self.pairs)
        self.buckets = make_buckets(
            cfg.resolution, min_size=cfg.buckets.min, max_size=cfg.buckets.max, step=cfg.buckets.step
        )

    def _check_buckets(self) -> None:
        # A UNet halves the latent once per down block but the last; SD1.x: 8·2³ = 64 px.
        multiple = self.family.latent_multiple(self.pipe)
        if self.config.buckets.step % multiple or self.config.resolution % multiple:
            raise BadInput(
                f"buckets.step: {self.config.buckets.step} (and resolution) must be a multiple of "
                f"{multiple} px for this model ({self.family.name}: VAE × denoiser downsampling)"
            )

    def _encode_latents(self) -> None:
        from lyco_bench.data import LatentCache

        root = self.config.cache_dir or default_cache_dir()
        self.cache = LatentCache(root)
        self.latents = self.cache.get_or_encode(
            [item for _, item in self.pairs], self.pipe.vae, buckets=self.buckets
        )
        self.shift, self.scaling = self.family.latent_scale(self.pipe)

    def _prior_data(self) -> Any:
        """Class images for prior preservation (lyco_bench.training.prior), or None when off."""
        if self.config.prior_loss_weight <= 0:
            return None
        from lyco_bench.training.prior import PriorData

        concepts = list({c.key: c for c, _ in self.pairs}.values())
        return PriorData(self.config, concepts, self.cache, self.pipe.vae)

    def _build_network(self) -> None:
        from lyco_bench.adapters import get_algorithm, inject
        from lyco_bench.methods import is_model_method

        cfg = self.config
        trained = self.family.trainable_encoders(self.pipe) if cfg.train_text_encoder else {}
        cls = get_algorithm(cfg.adapter.algo)
        # Adapter initialization draws from the global CPU RNG (AdapterModule.init_, whatever the
        # device: the same job id gives the same factors on CPU and GPU): seed it from the run
        # seed inside a fork, so the factors depend on the config alone and the caller's RNG
        # state is neither read nor changed. The device's RNG is forked too, in case a method
        # (lyco_bench.methods) draws there.
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(cfg.seed)
            if is_model_method(cls):  # acts on the pipeline as a whole (TI, hypernetworks)
                concepts = list({c.key: c for c, _ in self.pairs}.values())
                self.net = cls(cfg.adapter.options).attach(self.pipe, concepts=concepts)
            else:
                self.net = inject(self.denoiser, trained, cfg.adapter)
        self.net.to("cpu" if self._staged else self.device)
        # Gradients through the text encoder: for its adapters, or a method's parameters before it (TI).
        method = is_model_method(cls)
        self.text_encoder_gradients = cls.text_encoder_gradients if method else cfg.train_text_encoder
        self.denoiser.train()
        for prefix, encoder in self.encoders.items():
            # A model-level method leaves the text encoder's weights alone (TI trains new rows only).
            encoder.train(prefix in trained and not is_model_method(cls))
        if cfg.gradient_checkpointing:
            self.denoiser.enable_gradient_checkpointing()
            for encoder in trained.values():
                # Reentrant checkpointing drops gradients when the block inputs need none (frozen
                # embeddings); the adapters inside still need theirs.
                encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self._checkpointed = list(trained.values()) if cfg.gradient_checkpointing else []
        self.objective = self.family.objective(self.pipe)
        self.prediction_type = self.objective.name

    def _build_optimizer(self) -> None:
        from diffusers.optimization import get_scheduler

        from lyco_bench.training.optim import make_optimizer

        cfg = self.config
        groups = self.net.parameter_groups(lr=cfg.lr, text_encoder_lr=cfg.text_encoder_lr)
        self.params = [p for group in groups for p in group["params"]]
        kwargs = dict(lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
        self.optimizer = make_optimizer(cfg.optimizer, groups, **kwargs)
        self.steps_per_epoch = len(self._batches(torch.Generator().manual_seed(0)))
        total = cfg.epochs * self.steps_per_epoch
        self.lr_scheduler = get_scheduler(
            cfg.lr_scheduler,
            optimizer=self.optimizer,
            num_warmup_steps=cfg.warmup_steps,
            num_training_steps=total,
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.mixed_precision == "fp16")
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.mixed_precision)

    def _trained_text_encoders(self) -> list[torch.nn.Module]:
        return text_encoders_of(self.pipe) if self.config.train_text_encoder else []

    def _save_memory(self, *, lent: bool) -> None:
        """base_dtype, cache_text_outputs, and the VAE off the GPU once latents are cached.

        Modules leave the device only when it is not the CPU (there they are already where they
        would go). ``lent``: the caller's pipeline, given back as it came (lyco_bench.training.memory).
        """
        cfg = self.config
        if cfg.base_dtype != "float32":  # after injection: the adapters' factors were made in fp32
            modules = [denoiser_of(self.pipe), *text_encoders_of(self.pipe)]
            self._base_cast = FrozenCast(modules, DTYPES[cfg.base_dtype], keep_originals=lent)
            if self._staged:
                for module in [*modules, self.net]:
                    module.to(self.device)
        if cfg.cache_text_outputs:
            self.text_cache = TextOutputCache(self._encode_text)
            with self._autocast():
                self.text_cache.fill(self._all_captions())
            self._offload(text_encoders_of(self.pipe))
        if self.prior is None:  # prior preservation encodes class images as it draws them
            self._offload([self.pipe.vae])

    def _offload(self, modules: list[torch.nn.Module]) -> None:
        if self.device.type != "cpu":
            for module in modules:
                module.to("cpu")
                self._offloaded.append(module)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _all_captions(self) -> set[str]:
        """Every caption a step can draw: each image's caption, the empty one under caption
        dropout, the class prompts of prior preservation (caption_for draws nothing else)."""
        from lyco_bench.data import caption_for

        cfg = self.config
        captions = {
            self.net.caption(caption_for(item, concept, cfg.captions.strategy), concept)
            for concept, item in self.pairs
        }
        if cfg.captions.dropout > 0:
            captions |= {self.net.caption("", concept) for concept, _ in self.pairs}
        if self.prior is not None:
            captions |= set(self.prior.prompts.values())
        return captions

    def _autocast(self) -> Any:
        dtype = self.autocast_dtype
        return torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None)

    # --- training ----------------------------------------------------------------------------
    def _batches(self, generator: torch.Generator) -> list[list[int]]:
        from lyco_bench.data import bucket_batches

        repeats = [concept.repeats for concept, _ in self.pairs]
        buckets = [latent.bucket for latent in self.latents]
        return bucket_batches(buckets, self.config.batch_size, generator, repeats=repeats)

    def epoch_batches(self) -> list[list[int]]:
        """The next epoch's batches (indices into the dataset's images), one bucket each."""
        self._epoch_losses = []
        return self._batches(self.generators["order"])

    def epoch_mean_loss(self) -> float:
        return sum(self._epoch_losses) / max(len(self._epoch_losses), 1)

    def _inputs(self, batch: list[int]) -> tuple[list[str], torch.Tensor, torch.Tensor, torch.Tensor, list]:
        """(captions, x_t, t, target, geometry) on the CPU; the draw order here is part of the RNG
        contract."""
        from lyco_bench.data import caption_for
        from lyco_bench.families import ImageGeometry

        cfg, noise_gen = self.config, self.generators["noise"]
        captions = [
            self.net.caption(
                caption_for(
                    self.pairs[i][1],
                    self.pairs[i][0],
                    cfg.captions.strategy,
                    dropout=cfg.captions.dropout,
                    generator=self.generators["caption"],
                ),
                self.pairs[i][0],
            )
            for i in batch
        ]
        latents = [self.latents[i] for i in batch]
        sizes = [self._image_size(i) for i in batch]
        if self.prior is not None:  # one class sample per instance, in the batch's bucket
            bucket = latents[0].bucket
            for i in batch:
                prompt, latent, size = self.prior.sample(
                    self.pairs[i][0].key, bucket, self.generators["prior"]
                )
                captions.append(prompt)
                latents.append(latent)
                sizes.append(size)
        geometry = [
            ImageGeometry(size, _crop(size, lat.bucket), lat.bucket)
            for size, lat in zip(sizes, latents, strict=True)
        ]
        x0 = torch.stack([latent.sample(noise_gen) for latent in latents])  # (B[+B], C, h, w)
        x0 = (x0 - self.shift) * self.scaling if self.shift else x0 * self.scaling
        noise = torch.randn(x0.shape, generator=noise_gen)
        if cfg.noise_offset:
            noise = noise + cfg.noise_offset * torch.randn(
                (x0.shape[0], x0.shape[1], 1, 1), generator=noise_gen
            )
        x_t, t, target = self.objective.sample(x0, noise, noise_gen)
        return captions, x_t, t, target, geometry

    def _image_size(self, index: int) -> tuple[int, int]:
        item = self.pairs[index][1]
        if item.width and item.height:
            return item.width, item.height
        from lyco_bench.data.dataset import image_size

        return image_size(item.path)

    def loss(self, batch: list[int]) -> torch.Tensor:
        """The family's denoising MSE of one batch (graph attached)."""
        captions, x_t, t, target, geometry = self._inputs(batch)
        dev = self.device
        with self._autocast():
            if self.text_cache is not None:
                cond = self.text_cache(captions)
            else:
                with torch.set_grad_enabled(self.text_encoder_gradients):
                    cond = self._encode_text(captions)
            cond = {**cond, **self.family.extra_conditioning(self.pipe, geometry, dev)}
            pred = self.family.predict(self.pipe, x_t.to(dev), t.to(dev), cond)  # (B[+B], C, h, w)
        pred, target = pred.float(), target.to(dev).float()
        if self.prior is None:
            return F.mse_loss(pred, target)
        n = len(batch)  # instance samples first, then their class samples
        prior = F.mse_loss(pred[n:], target[n:])
        return F.mse_loss(pred[:n], target[:n]) + self.config.prior_loss_weight * prior

    def _encode_text(self, captions: list[str]) -> dict[str, Any]:
        """The denoiser's text conditioning of ``captions`` (the family's, batch first)."""
        return self.family.encode_prompts(self.pipe, captions, self.device)

    def step(self, batch: list[int]) -> float:
        """One optimizer step; returns the batch loss."""
        self.net.before_step(self.steps, seed=self.config.seed)
        loss = self.loss(batch)
        self.scaler.scale(loss).backward()
        if self.config.max_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.config.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps += 1
        self.last_loss = float(loss.detach())
        self._epoch_losses.append(self.last_loss)
        return self.last_loss

    def close(self) -> None:
        """Take the adapter out and give the pipeline back as it came (grad flags, train mode)."""
        if self.net is not None:
            self.net.remove()
        if self.config.gradient_checkpointing and self.net is not None:
            self.denoiser.disable_gradient_checkpointing()
            for encoder in getattr(self, "_checkpointed", []):
                encoder.gradient_checkpointing_disable()
        if self._base_cast is not None:
            self._base_cast.restore()
        for module in self._offloaded:
            module.to(self.device)
        self._offloaded = []
        for module, training, flags in zip(self._modules, self._was_training, self._grad_flags, strict=True):
            module.train(training)
            for param, flag in zip(module.parameters(), flags, strict=True):
                param.requires_grad_(flag)


def _crop(size: tuple[int, int], bucket: tuple[int, int]) -> tuple[int, int]:
    """(top, left) of an image's centre crop to its bucket (lyco_bench.data.cover_crop)."""
    from lyco_bench.data import cover_crop

    return cover_crop(*size, bucket)[1]
