"""Training data: the dataset tree and captions, aspect-ratio buckets, the latent cache, the demo dataset.

A dataset is ``<root>/<category>/<concept>[/<subclass>]/`` folders of images with same-stem ``.txt``
tag captions (the kohya sd-scripts layout) plus ``<root>/dataset.yaml`` (datasets/README.md).
Everything public is importable from here: ``from lyco_bench.data import load_dataset, …``.
"""

from lyco_bench.data.buckets import (
    DEFAULT_MAX_SIZE,
    DEFAULT_MIN_SIZE,
    DEFAULT_RESOLUTION,
    DEFAULT_STEP,
    Bucket,
    assign_bucket,
    bucket_batches,
    cover_crop,
    image_tensor,
    make_buckets,
    resize_to_bucket,
)
from lyco_bench.data.dataset import (
    CAPTION_STRATEGIES,
    IMAGE_SUFFIXES,
    Concept,
    ConceptSpec,
    Dataset,
    DatasetSpec,
    ImageItem,
    SubclassSpec,
    caption_for,
    image_size,
    load_dataset,
    split_tags,
)
from lyco_bench.data.demo import make_demo_dataset, register_cli
from lyco_bench.data.images import image_size_checked, open_image_checked
from lyco_bench.data.latents import Latent, LatentCache, vae_identity

__all__ = [
    "CAPTION_STRATEGIES",
    "DEFAULT_MAX_SIZE",
    "DEFAULT_MIN_SIZE",
    "DEFAULT_RESOLUTION",
    "DEFAULT_STEP",
    "IMAGE_SUFFIXES",
    "Bucket",
    "Concept",
    "ConceptSpec",
    "Dataset",
    "DatasetSpec",
    "ImageItem",
    "Latent",
    "LatentCache",
    "SubclassSpec",
    "assign_bucket",
    "bucket_batches",
    "caption_for",
    "image_size",
    "image_size_checked",
    "image_tensor",
    "load_dataset",
    "cover_crop",
    "make_buckets",
    "make_demo_dataset",
    "open_image_checked",
    "register_cli",
    "resize_to_bucket",
    "split_tags",
    "vae_identity",
]
