"""The trainer (``lyco_bench.training``): one run configuration → adapter checkpoints at chosen epochs (docs/protocol.md §2).

Loss: ε-prediction MSE of DDPM (Ho et al. 2020, eq. 14). With x₀ the VAE latent × scaling factor,
t ~ U{0, …, T−1}, ε ~ N(0, I) and ᾱ_t from the pipeline's own noise schedule,

    x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε,      L = mean ‖ε − ε_θ(x_t, t, c)‖²

(target v = √ᾱ_t·ε − √(1−ᾱ_t)·x₀ for a v-prediction model). c is the (adapted) text encoder's last
hidden state of the caption. The VAE is only used through the latent cache, under no_grad; every
weight of the base model is frozen, only the adapter parameters train.

Example, the tiny model and the demo dataset on a CPU (seconds)::

    lyco-bench make-tiny-model /tmp/tiny && lyco-bench make-demo-dataset /tmp/demo
    lyco-bench train run.yaml --out runs/demo-lora

with ``run.yaml``::

    model: /tmp/tiny
    dataset: /tmp/demo
    adapter: {algo: lora, dim: 4, alpha: 2}
    resolution: 64
    buckets: {min: 32, max: 128, step: 16}   # the tiny UNet needs latents divisible by 2
    batch_size: 2
    warmup_steps: 5                          # the paper's 3,500 is for 50 epochs of 1,706 images
    epochs: 2
    checkpoint_epochs: [1, 2]

Files in the output folder, per checkpoint epoch e (ckpt-e010 …):
  ``ckpt-e010.safetensors``        the adapter (kohya/LyCORIS layout); metadata without wall times,
                                   so the same config + seed gives the same bytes on a CPU
  ``ckpt-e010.state.safetensors``  resume state: exact parameters, optimizer, scheduler, RNG states
  ``ckpt-e010.json``               run record (config, versions, time, memory, sizes); written last,
                                   it marks the checkpoint complete
Rerunning into the same folder continues from the last complete checkpoint; on a CPU the files
then end up byte-identical to an uninterrupted run's.
"""

from lyco_bench.training.config import (
    OUTPUT_VERSION,
    BucketSettings,
    CaptionSettings,
    RunConfig,
    checkpoint_path,
    default_cache_dir,
    record_path,
    state_path,
)
from lyco_bench.training.run import find_resume, register_cli, train

__all__ = [
    "OUTPUT_VERSION",
    "BucketSettings",
    "CaptionSettings",
    "RunConfig",
    "checkpoint_path",
    "default_cache_dir",
    "find_resume",
    "record_path",
    "register_cli",
    "state_path",
    "train",
]
