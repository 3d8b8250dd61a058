"""Helpers the test modules share (tiny models and layers, LyCORIS presets, a micro study,
hand-made results tables, generation folders): one module, so that no test module imports another.
Fixtures several modules share live in conftest.py."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

from lyco_bench.adapters import AdapterSpec
from lyco_bench.analysis.results import collect_results
from lyco_bench.training import RunConfig

_BUILT: dict[str, dict] = {}


def tiny_encoder_settings(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """EncoderSettings fields pointing at tiny random-weight DINOv2 / OpenCLIP / VGG19 saved locally.

    Built once per session, whichever test module asks first.
    """
    from lyco_bench.metrics.tiny import make_tiny_encoders

    if "fields" not in _BUILT:
        fields = make_tiny_encoders(tmp_path_factory.mktemp("tiny-encoders"), seed=0)
        _BUILT["fields"] = {**fields, "device": "cpu", "batch_size": 8}
    return dict(_BUILT["fields"])


def noise_image(seed: int, size: tuple[int, int] = (32, 32)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def write_generation(out: Path, rows: list[dict], *, seed: int) -> Path:
    """A generation folder as `lyco-bench generate` leaves it: PNGs + manifest.parquet."""
    for i, row in enumerate(rows):
        (out / row["file"]).parent.mkdir(parents=True, exist_ok=True)
        noise_image(seed * 10007 + i).save(out / row["file"])
    pd.DataFrame(rows).to_parquet(out / "manifest.parquet", index=False)
    return out


F64 = torch.float64


def linear(i: int, o: int, *, bias: bool = True) -> nn.Linear:
    return nn.Linear(i, o, bias=bias, dtype=F64).requires_grad_(False)


def conv(i: int, o: int, k: int, **kw) -> nn.Conv2d:
    return nn.Conv2d(i, o, k, dtype=F64, **kw).requires_grad_(False)


def set_params(module: nn.Module, **values) -> None:
    with torch.no_grad():
        for name, v in values.items():
            getattr(module, name).copy_(torch.tensor(v, dtype=F64).reshape(getattr(module, name).shape))


TINY_UNET = dict(
    block_out_channels=(32, 64),
    layers_per_block=1,
    cross_attention_dim=32,
    attention_head_dim=8,
    sample_size=8,
    norm_num_groups=8,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
)


TINY_CLIP = dict(
    hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=1000
)


def tiny_models(seed: int = 0):
    """A tiny UNet2DConditionModel and CLIPTextModel with random weights (eval mode)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    from transformers.utils import logging as tlog

    tlog.set_verbosity_error()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**TINY_UNET).eval()
        te = CLIPTextModel(CLIPTextConfig(**TINY_CLIP, bos_token_id=0, eos_token_id=2)).eval()
    return unet, te


def unet_inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(2, 4, 8, 8, generator=g)  # (B, C, H, W) latents
    hidden = torch.randn(2, 5, 32, generator=g)  # (B, tokens, cross_attention_dim)
    return sample, torch.tensor([10, 500]), hidden


def run_models(unet, te, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    sample, t, hidden = unet_inputs(seed)
    ids = torch.tensor([[0, 5, 17, 99, 2], [0, 7, 8, 2, 1]])
    with torch.no_grad():
        return unet(sample, t, hidden).sample, te(ids).last_hidden_state


def perturb(net, scale: float = 0.2, seed: int = 1) -> None:
    """Give every adapter parameter random values so that ΔW ≠ 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and a shared CPU does not thrash); restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Our spec, and the LyCORIS create_lycoris arguments for the same adapter.
CASES = {
    "lora": (
        AdapterSpec(algo="lora", dim=4, alpha=2, preset="full"),
        dict(algo="lora", linear_dim=4, linear_alpha=2),
    ),
    "locon-tucker": (
        AdapterSpec(algo="lora", dim=4, alpha=8, use_tucker=True, preset="full"),
        dict(algo="locon", linear_dim=4, linear_alpha=8, use_tucker=True),
    ),
    "loha": (
        AdapterSpec(algo="loha", dim=2, alpha=1, preset="full"),
        dict(algo="loha", linear_dim=2, linear_alpha=1),
    ),
    "lokr-decomposed": (
        AdapterSpec(algo="lokr", dim=2, alpha=1, factor=4, preset="full"),
        dict(algo="lokr", linear_dim=2, linear_alpha=1, factor=4),
    ),
    "lokr-full": (
        AdapterSpec(algo="lokr", dim=10000, alpha=1, factor=4, preset="full"),
        dict(algo="lokr", linear_dim=10000, linear_alpha=1, factor=4),
    ),
    "native": (AdapterSpec(algo="native", preset="full"), dict(algo="full", linear_dim=4, linear_alpha=1)),
}


UNET_PRESET = """
enable_conv = true
lora_prefix = "lora_unet"
target_module = ["Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"]
target_name = ["conv_in", "conv_out", "time_embedding.linear_1", "time_embedding.linear_2"]
"""


TE_PRESET = """
lora_prefix = "lora_te"
target_module = ["CLIPAttention", "CLIPSdpaAttention", "CLIPMLP"]
"""


class TextModelHolder(nn.Module):
    """Puts a flat transformers-5 CLIPTextModel under ``text_model`` (the 4.x module paths)."""

    def __init__(self, te: nn.Module) -> None:
        super().__init__()
        self.text_model = te


@contextlib.contextmanager
def lycoris_preset(tmp_path, text: str, name: str):
    """Apply a LyCORIS preset (class-level state in LycorisNetwork) and restore it afterwards."""
    from lycoris.wrapper import LycorisNetwork

    attrs = ["ENABLE_CONV", "TARGET_REPLACE_MODULE", "TARGET_REPLACE_NAME", "LORA_PREFIX", "MODULE_ALGO_MAP"]
    attrs += ["NAME_ALGO_MAP", "USE_FNMATCH", "TARGET_EXCLUDE_NAME"]
    saved = {a: getattr(LycorisNetwork, a) for a in attrs}
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    logging.getLogger("LyCORIS").setLevel(logging.ERROR)
    try:
        yield str(path)
    finally:
        for attr, value in saved.items():
            setattr(LycorisNetwork, attr, value)


IMG, TXT, SCD = "image_similarity", "text_similarity", "squared_centroid_distance"


# per config: seed → (image similarity, text similarity, centroid distance) of the anime category
HAND = {
    "A": {23: (0.5, 0.3, 0.1), 24: (0.7, 0.3, 0.1)},
    "B": {23: (0.4, 0.5, 0.3), 24: (0.4, 0.5, 0.3)},
    "C": {23: (0.8, 0.2, 0.2), 24: (0.8, 0.2, 0.2)},
    "D": {23: (0.5, 0.25, 0.4), 24: (0.5, 0.25, 0.4)},
}


ALGOS = {"A": "lora", "B": "loha", "C": "lokr", "D": "lora"}


def score_rows(
    checkpoint: str, triple: tuple[float, float, float], *, scene_shift: float = 0.0
) -> list[dict]:
    rows = []
    for metric, value in zip((IMG, TXT, SCD), triple, strict=True):
        for category, concept, v in (
            ("anime", "", value),  # the mean of its two concepts, as scoring writes it
            ("anime", "abukuma", value - 0.01),  # concept rows: the replication units
            ("anime", "ikamusume", value + 0.01),
            ("scene", "", value + (scene_shift if metric == IMG else 0.0)),  # no concept rows: a unit
        ):
            rows.append(
                {"checkpoint": checkpoint, "category": category, "concept": concept, "subclass": "",
                 "prompt_class": "alter", "metric": metric, "encoder": "dinov2" if metric != TXT else "clip",
                 "mode": "resize" if metric != TXT else "", "value": v, "n_images": 4,
                 "prompt_set_version": "1", "reason": ""}
            )  # fmt: skip
    return rows


def hand_results(tmp_path) -> pd.DataFrame:
    tmp_path.mkdir(parents=True, exist_ok=True)
    files, runs = [], []
    for config, seeds in HAND.items():
        for seed, triple in seeds.items():
            ckpt = f"{config}-s{seed}-e010"
            shift = 0.2 if config == "A" else 0.0  # A: checkpoint means 0.6 and 0.8
            path = tmp_path / f"{ckpt}.parquet"
            pd.DataFrame(score_rows(ckpt, triple, scene_shift=shift)).to_parquet(path)
            files.append(path)
            runs.append(
                {"checkpoint": ckpt, "config": config, "algo": ALGOS[config], "preset": "attn-mlp", "lr": 5e-4,
                 "dim": 8.0, "alpha": 4.0, "factor": np.nan, "seed": seed, "epoch": 10,
                 "trainable_params": 1000 * (ord(config) - 64), "file_bytes": 4000 * (ord(config) - 64)}
            )  # fmt: skip
    base = tmp_path / "base.parquet"
    pd.DataFrame(score_rows("base", (0.9, 0.1, 0.05))).to_parquet(base)
    return collect_results([*files, base], pd.DataFrame(runs))


def synthetic_results(
    tmp_path, configs: dict[str, float], *, seeds=(1, 2, 3), noise=0.0, std=None, n_images=4
):
    """A results table: per config an image-similarity offset; 2 categories × 2 concepts; values
    = 0.5 + offset + concept effect + seed noise (the same draw for every config: paired)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    seed_fx = {s: rng.normal(0, noise) for s in seeds}
    concept_fx = {c: rng.normal(0, noise) for c in ("a1", "a2", "b1", "b2")}
    files, runs = [], []
    for config, offset in configs.items():
        for seed in seeds:
            ckpt = f"{config}-s{seed}-e001"
            rows = []
            for category, concepts in (("a", ("a1", "a2")), ("b", ("b1", "b2"))):
                for concept in concepts:
                    for metric, label_enc, mode, base in (("image_similarity", "dinov2", "resize", 0.5),
                                                          ("text_similarity", "clip", "", 0.3)):  # fmt: skip
                        value = base + offset + seed_fx[seed] + concept_fx[concept]
                        rows.append(
                            {"checkpoint": ckpt, "category": category, "concept": concept, "subclass": "",
                             "prompt_class": "alter", "metric": metric, "encoder": label_enc, "mode": mode,
                             "value": value, "n_images": n_images, "prompt_set_version": "1", "reason": "",
                             **({"std": std} if std is not None else {})}
                        )  # fmt: skip
            path = tmp_path / f"{ckpt}.parquet"
            pd.DataFrame(rows).to_parquet(path)
            files.append(path)
            runs.append(
                {"checkpoint": ckpt, "config": config, "algo": "lora", "preset": "attn-mlp", "lr": 1e-3,
                 "seed": seed, "epoch": 1, "trainable_params": 100, "file_bytes": 1000}
            )  # fmt: skip
    return collect_results(files, pd.DataFrame(runs))


def _row(pc, cat, concept, sub, pi, seed, *, prompt=None, concepts=""):
    folder = "/".join([pc, ".".join(p for p in (cat, concept, sub) if p) or "_all"])
    prompt = prompt or f"{concept or 'thing'} {sub} prompt {pi}"
    return {
        "file": f"{folder}/{pi:03d}-{seed}.png", "prompt": prompt, "clip_text": prompt.replace("prompt", "words"),
        "prompt_class": pc, "category": cat, "concept": concept, "subclass": sub, "prompt_index": pi,
        "image_index": seed - 1000, "seed": seed, "group": f"{folder}/{pi}", "concepts": concepts,
        "checkpoint": "ck-test", "prompt_set": "test", "prompt_set_version": "3",
    }  # fmt: skip


def _manifest_rows() -> list[dict]:
    rows = [_row("trigger", "shapes", "circle", "", 0, s) for s in (1000, 1001)]
    rows += [
        _row("trigger", "shapes", "triangle", sub, 0, s) for sub in ("filled", "hollow") for s in (1000, 1001)
    ]
    rows += [_row("trigger", "patterns", "stripes", "", 0, s) for s in (1000, 1001)]
    rows += [_row("trigger", "patterns", "checker", "", 0, 1000)]  # a single image: Vendi/Fréchet undefined
    rows += [_row("alter", "shapes", "circle", "", pi, s) for pi in (0, 1) for s in (1000, 1001)]
    rows += [_row("alter", "patterns", "stripes", "", 0, s) for s in (1000, 1001)]
    rows += [_row("style", "shapes", "circle", "", 0, s) for s in (1000, 1001)]
    rows += [_row("style", "shapes", "triangle", "filled", 0, s) for s in (1000, 1001)]  # no base pair
    rows += [_row("agnostic", "", "", "", 0, s, prompt="a photo") for s in (1000, 1001)]
    both = "shapes/circle+patterns/checker"
    rows += [
        _row("combine", "shapes+patterns", "circle+checker", "", 0, s, concepts=both) for s in (1000, 1001)
    ]
    return rows


PROMPTS = {
    "name": "micro",
    "version": "1",
    "classes": ["trigger", "style"],
    "style_templates": ["{} in the style of pencil drawing"],
    "default_category": {"alter": ["{} on a beach"]},
}


def micro_study(folder: Path, *, model: str, dataset: str, encoders: dict) -> Path:
    (folder / "micro-prompts.yaml").write_text(yaml.safe_dump(PROMPTS))
    study = {
        "name": "micro",
        "model": model,
        "dataset": dataset,
        "prompts": {"set": str(folder / "micro-prompts.yaml"), "images_per_prompt": 1},
        "sampler": {"steps": 2, "width": 64, "height": 64, "batch_size": 16},
        "encoders": {**encoders, "modes": ["resize"]},
        "metrics": ["image_similarity", "text_similarity", "vendi", "style_loss_base"],
        "seeds": [1],
        "checkpoint_epochs": [1],
        "training": {"resolution": 64, "buckets": {"min": 32, "max": 96, "step": 16}, "batch_size": 8,
                     "warmup_steps": 0},
        "algorithms": {"lora": {"adapter": {"dim": 2, "alpha": 1}, "training": {"lr": 1e-3}, "default": "lora2"}},
    }  # fmt: skip
    path = folder / "micro.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def run_config(model, dataset, cache, **changes) -> RunConfig:
    data = dict(
        model=str(model),
        dataset=str(dataset),
        categories=["patterns"],
        adapter={"algo": "lora", "dim": 4, "alpha": 2},
        resolution=64,
        buckets={"min": 32, "max": 128, "step": 16},
        batch_size=3,
        warmup_steps=1,
        lr=1e-3,
        epochs=1,
        checkpoint_epochs=[1],
        cache_dir=str(cache),
        seed=5,
    )
    data.update(changes)
    return RunConfig(**data)
