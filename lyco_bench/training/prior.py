"""DreamBooth prior preservation: class images beside the instance images of every step.

    L = MSE(instance) + w·MSE(class)          (Ruiz et al. 2023, "DreamBooth", eq. 2)

Each instance sample of a batch is joined by one class sample of its concept's class — an image
the *base* model drew for the concept's ``class_prompt`` (or one from the concept's
``class_images`` folder, a kohya regularization set), captioned with the class prompt — in the
same batch, as diffusers' DreamBooth script does. Batches are aspect-ratio buckets, so a class
image is brought to the batch's bucket (cover + centre crop) before it is encoded; its latents
are cached per bucket like the instance images'. Which class image joins which instance is drawn
from the run's own ``prior`` generator, so resuming is exact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lyco_bench.errors import BadInput


class PriorData:
    """Class images per concept key, their latents per bucket (lazily, cached)."""

    def __init__(self, config: Any, concepts: list[Any], cache: Any, vae: Any) -> None:
        self.cache, self.vae = cache, vae
        self.pools: dict[str, list[Any]] = {}
        self.prompts: dict[str, str] = {}
        for concept in concepts:
            if concept.class_images is None and not concept.class_prompt:
                raise BadInput(
                    f"dataset: concept {concept.key}: no class_prompt (or class_images folder) in "
                    "dataset.yaml, which prior preservation (prior_loss_weight > 0) needs"
                )
        generated = _generated_images(config.class_images)
        for concept in concepts:
            self.pools[concept.key], self.prompts[concept.key] = _pool(concept, generated, config)
        self._latents: dict[tuple[str, tuple[int, int]], Any] = {}

    def sample(
        self, concept_key: str, bucket: tuple[int, int], generator: torch.Generator
    ) -> tuple[str, Any, tuple[int, int]]:
        """(caption, latent, (width, height) of the image file) of one class image of the concept's
        class, in ``bucket``."""
        pool = self.pools[concept_key]
        item = pool[int(torch.randint(len(pool), (), generator=generator))]
        key = (str(item.path), bucket)
        if key not in self._latents:
            (self._latents[key],) = self.cache.get_or_encode([item], self.vae, buckets=[bucket])
        from lyco_bench.data.dataset import image_size

        size = (item.width, item.height) if item.width and item.height else image_size(item.path)
        return self.prompts[concept_key], self._latents[key], size


def _generated_images(folder: str | None) -> dict[str, list[Path]]:
    """Class prompt → image paths of a ``lyco-bench generate`` folder (its manifest)."""
    if folder is None:
        return {}
    from lyco_bench.metrics.manifest import read_manifest

    manifest = read_manifest(folder)
    out: dict[str, list[Path]] = {}
    for prompt, path in zip(manifest["prompt"], manifest["path"], strict=True):
        out.setdefault(str(prompt), []).append(Path(path))
    return out


def _pool(concept: Any, generated: dict[str, list[Path]], config: Any) -> tuple[list[Any], str]:
    from lyco_bench.data import ImageItem
    from lyco_bench.data.dataset import image_files, image_size

    if concept.class_images is not None:
        paths = image_files(Path(concept.class_images))  # a dangling link: one line, as in a dataset
    else:
        paths = generated.get(concept.class_prompt, [])[: config.num_class_images]
    if not paths:
        where = concept.class_images or config.class_images or "class_images (none given)"
        raise BadInput(f"class_images: {where}: no class image for {concept.key} ({concept.class_prompt!r})")
    items = []
    for path in paths:
        width, height = image_size(path)
        items.append(ImageItem(path, [], concept.category, concept.name, concept.subclass, width, height))
    return items, concept.class_prompt
