"""``make-world``: rebuild every shipped weight of the world from nothing (lyco_bench/world/weights).

Stages, each cached in a work folder so an interrupted build resumes at the stage it was in:
VAE → latents → text encoder + UNet → classifier → DINOv2 → OpenCLIP → the shipped folder.
One thread (``THREADS``), fixed seeds, fp16 rounding of the VAE before anything reads its
latents or reconstructions (so everything downstream sees exactly the shipped VAE). On the same
CPU kind with the same torch/diffusers/transformers/open_clip/NumPy/SciPy/Pillow versions the
files come out byte-identical; ``weights/BUILD.json`` records the versions and file hashes.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from lyco_bench.utils import sha256_file
from lyco_bench.world.pretrain import THREADS, PretrainSettings

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
CLASSIFIER_FILE = "classifier.safetensors"


def weights_dir() -> Path:
    """The shipped weights: ``model/`` (diffusers folder), ``dinov2/``, ``open_clip/``, the classifier."""
    return WEIGHTS_DIR


def model_dir(root: Path | None = None) -> Path:
    return (root or WEIGHTS_DIR) / "model"


def encoder_settings(root: Path | None = None) -> dict:
    """EncoderSettings fields for the world's evaluators (VGG stays the tiny random one)."""
    from lyco_bench.world.evaluators import DINO_IMAGE_SIZE

    root = root or WEIGHTS_DIR
    return {
        "dino": str(root / "dinov2"),
        "dino_image_size": DINO_IMAGE_SIZE,
        "clip": str(root / "open_clip"),
        "clip_pretrained": None,
    }


def _round_fp16(module):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.half().float())
        for b in module.buffers():
            if b.is_floating_point():
                b.copy_(b.half().float())
    return module


def _save_state(module, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()}, str(path))


def _load_state(module, path: Path):
    from safetensors.torch import load_file

    module.load_state_dict(load_file(str(path)))
    return module


def load_classifier(root: Path | None = None):
    from lyco_bench.world.classifier import AttributeClassifier

    model = AttributeClassifier()
    state = __import__("safetensors.torch", fromlist=["load_file"]).load_file(
        str((root or WEIGHTS_DIR) / CLASSIFIER_FILE)
    )
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.eval()


def evaluator_scenes(seed: int, n_base: int, n_held: int):
    from lyco_bench.world.pretrain import base_scenes, held_out_scenes

    return base_scenes(seed + 7, n_base) + held_out_scenes(seed + 7, n_held, stream=3)


def make_world(
    out_dir: Path = WEIGHTS_DIR,
    *,
    work_dir: Path,
    settings: PretrainSettings = PretrainSettings(),
    log=print,
) -> Path:
    """Build everything into ``out_dir`` (replaced at the end), caching stages in ``work_dir``."""
    from diffusers import AutoencoderKL

    from lyco_bench.world import evaluators as ev
    from lyco_bench.world import pretrain as pt
    from lyco_bench.world.classifier import train_classifier

    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / "settings.json").write_text(json.dumps(asdict(settings), indent=2) + "\n")
    times: dict[str, float] = {}
    s = settings

    def stage(name: str):
        log(f"== {name}")
        times[name] = time.time()

    def done(name: str):
        times[name] = round(time.time() - times[name], 1)
        log(f"== {name} done in {times[name]:.0f} s")

    # 1. VAE
    stage("vae")
    vae_file = work_dir / "vae.safetensors"
    vae = AutoencoderKL(**pt.WORLD_VAE)
    if vae_file.exists():
        _load_state(vae, vae_file).eval()
    else:
        pictures = np.concatenate(
            [
                pt.draw_images(pt.base_scenes(s.seed, s.images)),
                pt.draw_images(pt.held_out_scenes(s.seed, s.held_out_vae_images)),
            ]
        )
        vae = _round_fp16(pt.train_vae(pictures, s, log=log))
        del pictures
        _save_state(vae, vae_file)
    done("vae")

    # 2. latents of the base world
    stage("latents")
    lat_file = work_dir / "latents.safetensors"
    scenes = pt.base_scenes(s.seed, s.images)
    if lat_file.exists():
        from safetensors.torch import load_file

        lat = load_file(str(lat_file))
        means, stds = lat["mean"], lat["std"]
    else:
        from safetensors.torch import save_file

        means, stds = pt.encode(vae, pt.draw_images(scenes))
        save_file({"mean": means.contiguous(), "std": stds.contiguous()}, str(lat_file))
    # Unit-variance latents, as SD's 0.18215; rounded so the config holds a short number.
    scaling = float(f"{1.0 / means.std().item():.5f}")
    vae.register_to_config(scaling_factor=scaling)
    done("latents")

    # 3. text encoder + UNet
    stage("unet")
    unet_file, te_file = work_dir / "unet.safetensors", work_dir / "text_encoder.safetensors"
    if unet_file.exists() and te_file.exists():
        unet = _load_state(pt.build_unet(0), unet_file).eval()
        text_encoder = _load_state(pt.build_text_encoder(0), te_file).eval()
    else:
        unet, text_encoder = pt.train_unet(means, stds, scenes, scaling, s, log=log)
        _round_fp16(unet)
        _round_fp16(text_encoder)
        _save_state(unet, unet_file)
        _save_state(text_encoder, te_file)
    done("unet")

    # 4–6. evaluators and the classifier, on drawn pictures and their reconstructions
    ev_scenes = evaluator_scenes(s.seed, s.eval_base_images, s.eval_held_out_images)
    drawn = pt.draw_images(ev_scenes)
    recon = pt.decode(vae, pt.encode(vae, drawn)[0])
    images, both = np.concatenate([drawn, recon]), ev_scenes + ev_scenes
    del drawn, recon

    stage("classifier")
    clf_file = work_dir / CLASSIFIER_FILE
    from lyco_bench.world.classifier import AttributeClassifier

    if clf_file.exists():
        classifier = _load_state(AttributeClassifier(), clf_file).eval()
    else:
        classifier = _round_fp16(
            train_classifier(images, both, seed=s.seed, steps=s.classifier_steps, log=log)
        )
        _save_state(classifier, clf_file)
    done("classifier")

    stage("dinov2")
    dino_file = work_dir / "dinov2.safetensors"
    from transformers import Dinov2Config, Dinov2Model

    if dino_file.exists():
        dino = _load_state(Dinov2Model(Dinov2Config(**ev.DINO_CONFIG)), dino_file).eval()
    else:
        dino = _round_fp16(ev.train_dinov2(images, both, seed=s.seed, steps=s.dino_steps, log=log))
        _save_state(dino, dino_file)
    done("dinov2")

    stage("open_clip")
    clip_file = work_dir / "open_clip.safetensors"
    config_dir = ev.write_clip_config(work_dir / "open_clip_config")
    if clip_file.exists():
        import open_clip

        clip = open_clip.create_model(f"local-dir:{config_dir}", load_weights=False)
        _load_state(clip, clip_file).eval()
    else:
        clip = _round_fp16(
            ev.train_open_clip(images, both, config_dir, seed=s.seed, steps=s.clip_steps, log=log)
        )
        _save_state(clip, clip_file)
    done("open_clip")

    # 7. the shipped folder, written beside and renamed into place
    stage("save")
    out_dir = Path(out_dir)
    tmp = out_dir.parent / f".{out_dir.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(tmp / "model", unet, vae, text_encoder)
    ev.save_dinov2(dino, tmp / "dinov2")
    ev.save_open_clip(clip, tmp / "open_clip")
    _save_fp16(classifier, tmp / CLASSIFIER_FILE)
    write_build_record(tmp, settings, {k: v for k, v in times.items() if k != "save"})  # save: running
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    done("save")
    return out_dir


def _save_fp16(module, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().half().contiguous() for k, v in module.state_dict().items()}, str(path))


def save_model(out: Path, unet, vae, text_encoder) -> Path:
    """The diffusers folder, fp16 safetensors (configs say float32: loaders upcast)."""
    from lyco_bench.models import _quiet_hf
    from lyco_bench.world.pretrain import make_pipeline

    pipe = make_pipeline(unet, vae, text_encoder)
    pipe.to(torch.float16)
    with _quiet_hf():
        pipe.save_pretrained(out, safe_serialization=True)
    pipe.to(torch.float32)
    config = out / "text_encoder" / "config.json"
    data = json.loads(config.read_text())
    data["dtype"] = "float32"
    config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return out


def write_build_record(root: Path, settings: PretrainSettings, times: dict) -> Path:
    import diffusers
    import open_clip
    import PIL
    import scipy
    import transformers

    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != "BUILD.json")
    record = {
        "settings": asdict(settings),
        "threads": THREADS,
        "versions": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
            "open_clip": open_clip.__version__,
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "pillow": PIL.__version__,
        },
        "machine": platform.machine(),
        "stage_seconds": {k: v for k, v in times.items() if isinstance(v, float)},
        "files": {str(p.relative_to(root)): sha256_file(p) for p in files},
    }
    path = root / "BUILD.json"
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return path
