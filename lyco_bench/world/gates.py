"""The world's gates, measured with the shipped weights (benchmarks/world.py prints them).

- G1 (``measure_g1``): the base model follows prompts. Every colour × shape prompt
  ``a {colour} {shape}`` (and with a background), a few seeds each, sampled with DDIM through the
  pipeline ``load_pipeline`` gives; the attribute classifier reads shape, colour and background.
- G2 (``measure_g2``): a default LoRA trained by the project's trainer on the world dataset; its
  ``<trigger>`` pictures (the trigger alone) are judged by the classifier's kind/hat/style heads,
  beside the base model's pictures for the same prompts and seeds.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from lyco_bench.world.classifier import HEADS, predict
from lyco_bench.world.draw import COLOURS, SHAPES


def _pipeline(weights: Path | None):
    from lyco_bench.models import load_pipeline
    from lyco_bench.world.build import model_dir

    return load_pipeline(str(model_dir(weights)))


def g1_prompts(images_per_prompt: int, *, backgrounds: bool = True):
    """(prompt, expected labels) pairs: ``a {colour} {shape}``, and with each background."""
    rows = []
    for colour in COLOURS:
        for shape in SHAPES:
            rows.append((f"a {colour} {shape}", {"colour": colour, "shape": shape}))
            if backgrounds:
                for bg in ("white", "black", "grey"):
                    rows.append(
                        (
                            f"a {colour} {shape}, {bg} background",
                            {"colour": colour, "shape": shape, "background": bg},
                        )
                    )
    return [(p, y) for p, y in rows for _ in range(images_per_prompt)]


def measure_g1(
    *,
    images_per_prompt: int = 4,
    steps: int = 20,
    cfg: float = 7.0,
    seed_base: int = 1000,
    backgrounds: bool = True,
    weights: Path | None = None,
    log=None,
) -> dict:
    """Accuracy per attribute over the G1 prompts; ``by_prompt`` splits plain / with background."""
    from lyco_bench.world.build import load_classifier
    from lyco_bench.world.pretrain import sample

    pipe = _pipeline(weights)
    clf = load_classifier(weights)
    rows = g1_prompts(images_per_prompt, backgrounds=backgrounds)
    prompts = [p for p, _ in rows]
    # Image i of a prompt gets seed seed_base + i (the benchmark's convention).
    seeds, count = [], {}
    for p in prompts:
        seeds.append(seed_base + count.get(p, 0))
        count[p] = count.get(p, 0) + 1
    start = time.time()
    images = sample(pipe, prompts, seeds=seeds, steps=steps, cfg=cfg)
    seconds = time.time() - start
    pred = predict(clf, images)
    result: dict = {"images": len(images), "sampling_s": round(seconds, 1), "steps": steps, "cfg": cfg}
    for subset, keep in (("all", lambda y: True), ("plain", lambda y: "background" not in y),
                         ("with background", lambda y: "background" in y)):  # fmt: skip
        idx = [i for i, (_, y) in enumerate(rows) if keep(y)]
        if not idx:
            continue
        accs = {}
        for head in ("shape", "colour", "background"):
            pairs = [(pred[head][i], HEADS[head].index(rows[i][1][head])) for i in idx if head in rows[i][1]]
            if pairs:
                accs[head] = float(np.mean([a == b for a, b in pairs]))
        accs["object"] = float(np.mean([pred["kind"][i] == 0 for i in idx]))
        result[subset] = accs
    result["_images"] = images
    result["_prompts"] = prompts
    return result


def trigger_prompts():
    """(leaf key, prompt, concept) for every leaf of the world dataset: the trigger alone."""
    from lyco_bench.world.dataset import CONCEPT_OF_LEAF, WORLD_LEAVES

    out = []
    for leaf in WORLD_LEAVES:
        prompt = f"{leaf.trigger}, {leaf.trigger_suffix}" if leaf.trigger_suffix else leaf.trigger
        key = "/".join(x for x in (leaf.category, leaf.concept, leaf.subclass) if x)
        out.append((key, prompt, CONCEPT_OF_LEAF[leaf.subclass or leaf.concept], leaf.subclass))
    return out


def recognised(pred: dict, i: int, concept: str, subclass: str | None) -> tuple[bool, bool]:
    """(concept recognised, subclass recognised too) for picture i."""
    if concept == "comic":
        ok = pred["kind"][i] == 0 and HEADS["style"][pred["style"][i]] == "comic"
        return bool(ok), bool(ok)
    ok = HEADS["kind"][pred["kind"][i]] == concept
    if subclass is None:
        return bool(ok), bool(ok)
    return bool(ok), bool(ok and HEADS["hat"][pred["hat"][i]] == subclass.split("_")[0])


def judge(images: np.ndarray, labels: list[tuple[str, str | None]], classifier) -> list[tuple[bool, bool]]:
    pred = predict(classifier, images)
    return [recognised(pred, i, c, s) for i, (c, s) in enumerate(labels)]


def train_default_lora(
    run_dir: Path,
    dataset: Path,
    *,
    weights: Path | None = None,
    epochs: int = 10,
    dim: int = 8,
    alpha: float = 4,
    lr: float = 1e-3,
    batch_size: int = 4,
    preset: str = "attn-mlp",
    seed: int = 1,
    cache_dir: Path | None = None,
) -> Path:
    """A LoRA trained by lyco_bench.training on the world dataset; returns the last checkpoint."""
    from lyco_bench.training import RunConfig, train
    from lyco_bench.world.build import model_dir

    config = RunConfig(
        model=str(model_dir(weights)),
        dataset=str(dataset),
        adapter={"algo": "lora", "dim": dim, "alpha": alpha, "preset": preset},
        lr=lr,
        warmup_steps=0,
        batch_size=batch_size,
        resolution=64,
        buckets={"min": 32, "max": 96, "step": 32},
        epochs=epochs,
        checkpoint_epochs=[epochs],
        seed=seed,
        device="cpu",
        cache_dir=str(cache_dir or run_dir / "cache"),
    )
    return train(config, run_dir)[-1]


def measure_g2(
    *,
    images_per_prompt: int = 16,
    steps: int = 20,
    cfg: float = 7.0,
    seed_base: int = 1000,
    epochs: int = 10,
    dim: int = 8,
    alpha: float = 4,
    lr: float = 1e-3,
    batch_size: int = 4,
    weights: Path | None = None,
    work: Path | None = None,
    log=None,
) -> dict:
    """Recognition rates per leaf for the LoRA and the base model (same prompts and seeds)."""
    from lyco_bench.adapters import merge_adapters, unmerge_adapters
    from lyco_bench.world.build import load_classifier
    from lyco_bench.world.dataset import make_world_dataset
    from lyco_bench.world.pretrain import sample

    with tempfile.TemporaryDirectory(dir=work) as tmp:
        tmp = Path(tmp)
        dataset = make_world_dataset(tmp / "dataset")
        start = time.time()
        ckpt = train_default_lora(
            tmp / "run",
            dataset,
            weights=weights,
            epochs=epochs,
            dim=dim,
            alpha=alpha,
            lr=lr,
            batch_size=batch_size,
        )
        train_s = time.time() - start
        pipe = _pipeline(weights)
        clf = load_classifier(weights)
        leaves = trigger_prompts()
        prompts = [p for _, p, _, _ in leaves for _ in range(images_per_prompt)]
        labels = [(c, s) for _, _, c, s in leaves for _ in range(images_per_prompt)]
        seeds = [seed_base + i for _ in leaves for i in range(images_per_prompt)]
        base = sample(pipe, prompts, seeds=seeds, steps=steps, cfg=cfg)
        handle = merge_adapters(pipe.unet, pipe.text_encoder, [(ckpt, 1.0)])
        tuned = sample(pipe, prompts, seeds=seeds, steps=steps, cfg=cfg)
        unmerge_adapters(handle)
    out: dict = {"train_s": round(train_s, 1), "epochs": epochs, "leaves": {}}
    jb, jt = judge(base, labels, clf), judge(tuned, labels, clf)
    for k, (key, prompt, _concept, subclass) in enumerate(leaves):
        sl = slice(k * images_per_prompt, (k + 1) * images_per_prompt)
        out["leaves"][key] = {
            "prompt": prompt,
            "lora": float(np.mean([a for a, _ in jt[sl]])),
            "lora_subclass": float(np.mean([b for _, b in jt[sl]])) if subclass else None,
            "base": float(np.mean([a for a, _ in jb[sl]])),
        }
    out["lora"] = float(np.mean([a for a, _ in jt]))
    out["base"] = float(np.mean([a for a, _ in jb]))
    out["_base_images"], out["_lora_images"] = base, tuned
    return out
