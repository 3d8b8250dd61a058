"""``lyco-bench encode``, ``lyco-bench score`` and ``lyco-bench make-tiny-encoders``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from lyco_bench.errors import BadInput
from lyco_bench.utils import atomic_path, console

DEFAULT_CACHE = ".lyco-cache/features"
# Free space asked before any work: a score table is KBs; a feature cache grows by a few KB per
# image and encoder, so the floor catches a full disk rather than sizing the cache exactly.
SCORE_NEED_BYTES = 2**20
CACHE_NEED_BYTES = 64 * 2**20


def _add_encoder_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cache",
        default=DEFAULT_CACHE,
        help=f"feature cache folder, shared by all jobs (default {DEFAULT_CACHE})",
    )
    p.add_argument(
        "--encoders",
        metavar="YAML",
        help="EncoderSettings file (each encoder's weights and sizes, modes, image_encoders, …)",
    )
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override an encoder setting, e.g. --set dino=path/to/dinov2 --set batch_size=32")  # fmt: skip
    p.add_argument("--device", help="cuda, cpu, … (default: the GPU when there is one)")


def _settings(args: argparse.Namespace):
    from lyco_bench.config import apply_overrides, read_yaml, validate
    from lyco_bench.metrics.features import EncoderSettings

    overrides = list(args.overrides) + ([f"device={args.device}"] if args.device else [])
    source = str(args.encoders) if args.encoders else "config"
    data: dict = {}
    if args.encoders:
        raw = read_yaml(args.encoders)
        if raw is not None and not isinstance(raw, dict):
            raise BadInput(f"{args.encoders}: expected a mapping at the top level")
        data = _paths_beside(raw or {}, Path(args.encoders).parent)
    data = apply_overrides(data, overrides, source=source)  # --set paths stay relative to the cwd
    return validate(EncoderSettings, data, source=source)


def _paths_beside(data: dict, folder: Path) -> dict:
    """Relative local paths of the encoders' path fields that exist beside the YAML file, made
    absolute (so the file works from any working directory); hub ids, open_clip names and
    torchvision weight names (nothing of that name there) stay."""
    from lyco_bench.metrics.encoders import encoder_path_fields

    resolved = dict(data)
    for key in encoder_path_fields():
        value = data.get(key)
        if isinstance(value, str) and value and not value.startswith("~") and not Path(value).is_absolute():
            if (folder / value).exists():
                resolved[key] = str((folder / value).absolute())
    return resolved


def _check_cache(cache: str) -> None:
    from lyco_bench.utils import check_output_dir

    check_output_dir(cache, what=f"--cache {cache}", need_bytes=CACHE_NEED_BYTES)


def run_encode(args: argparse.Namespace) -> int:
    from lyco_bench.metrics.cache import FeatureCache
    from lyco_bench.metrics.encoders import ENCODERS
    from lyco_bench.metrics.features import EncoderPool, image_features, list_images

    if args.encoder not in ENCODERS:
        raise BadInput(f"--encoder {args.encoder!r}: unknown encoder (expected one of {', '.join(ENCODERS)})")
    settings = _settings(args)
    if args.dataset:
        from lyco_bench.data import load_dataset

        paths = [Path(item.path) for _, item in load_dataset(args.dataset).items()]
    else:
        if not Path(args.images).is_dir():
            raise BadInput(f"--images {args.images}: no such folder")
        paths = list_images(Path(args.images))
    if not paths:
        raise BadInput(f"{args.images or args.dataset}: no images")
    modes = args.mode or (["native"] if ENCODERS[args.encoder].native else list(settings.modes))
    _check_cache(args.cache)
    started = time.perf_counter()
    cache, pool = FeatureCache(args.cache), EncoderPool(settings)
    for mode in modes:
        image_features(pool, args.encoder, paths, mode=mode, cache=cache, desc=mode)
    console.print(
        f"encode: {len(paths)} images × {len(modes)} mode(s) with {pool.label(args.encoder)}: "
        f"{cache.misses} encoded, {cache.hits} cached, {time.perf_counter() - started:.1f}s → {args.cache}"
    )
    return 0


def run_score(args: argparse.Namespace) -> int:
    from lyco_bench.metrics import METRICS
    from lyco_bench.metrics.scoring import score
    from lyco_bench.utils import check_output_dir

    settings = _settings(args)
    out = Path(args.out)
    if out.suffix != ".parquet":
        raise BadInput(f"--out {out}: expected a .parquet file")
    if out.is_dir():
        raise BadInput(f"--out {out}: is a folder, not a file")
    check_output_dir(out.parent, what=f"--out {out}", need_bytes=SCORE_NEED_BYTES)
    _check_cache(args.cache)
    started = time.perf_counter()
    rows = score(
        images_dir=args.images, dataset=args.dataset, base_images_dir=args.base_images,
        encoders=settings, cache_dir=args.cache, checkpoint=args.checkpoint,
        metrics=args.metrics.split(",") if args.metrics else None,
    )  # fmt: skip
    if rows.empty:  # no 0-row table: nothing of these images is what the metrics score
        classes = sorted(
            {
                c
                for m in (args.metrics.split(",") if args.metrics else METRICS)
                for c in METRICS[m].prompt_classes
            }
        )
        raise BadInput(f"--metrics {args.metrics or '(default)'}: no rows for {args.images}: none of its images has a prompt class they score ({', '.join(classes)})")  # fmt: skip
    with atomic_path(out) as tmp:
        rows.to_parquet(tmp, index=False)
    nan = int(rows["value"].isna().sum())
    console.print(
        f"score: {rows['checkpoint'].iloc[0]}: {len(rows)} rows ({nan} undefined), "
        f"{rows['metric'].nunique()} metrics, {time.perf_counter() - started:.1f}s → {out}"
    )
    return 0


def run_make_tiny_encoders(args: argparse.Namespace) -> int:
    import yaml

    from lyco_bench.metrics.tiny import make_tiny_encoders

    out = Path(args.out)
    # Absolute paths: the encoders.yaml works from any folder, and is read as it was written.
    fields = make_tiny_encoders(out.absolute(), seed=args.seed)
    with atomic_path(out / "encoders.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(fields, sort_keys=True))
    from lyco_bench.metrics.encoders import ENCODERS

    kinds = ", ".join(k for k, e in ENCODERS.items() if e.make_tiny is not None)
    console.print(f"make-tiny-encoders: {kinds} (random weights) → {out}/encoders.yaml")
    return 0


def register_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "encode",
        help="encode images into the feature cache",
        description="Encode a folder of images or a dataset with one registered encoder into the "
        "content-addressed feature cache; images already cached are skipped.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", help="folder of images (searched recursively)")
    src.add_argument("--dataset", help="dataset folder (its dataset.yaml and images)")
    p.add_argument(
        "--encoder", required=True, help="encoder kind (an unknown one is answered with the known kinds)"
    )
    p.add_argument("--mode", action="append", choices=["resize", "crop", "padding"],
                   help="reference-image mode, repeatable (default: the settings' modes, all three by default)")  # fmt: skip
    _add_encoder_options(p)
    p.set_defaults(func=run_encode)

    p = subparsers.add_parser(
        "score",
        help="score a checkpoint's generated images (metric rows → parquet)",
        description="Compute the registry's metrics (image/text similarity, centroid distance, Vendi, style "
        "losses, Fréchet distance; leakage and drift against the base model on <agnostic> prompts; two-concept "
        "composition; HPS v2.1 and CLIP-IQA on request) for the images in a generation folder against the "
        "dataset; one row per (category, concept, subclass, prompt class, metric, encoder, mode).",
    )
    p.add_argument("--images", required=True, help="generation folder with manifest.parquet")
    p.add_argument("--dataset", required=True, help="dataset folder (reference images, triggers)")
    p.add_argument(
        "--base-images",
        help="the base model's generation folder, same prompts and seeds (style_loss_base, intrusion, drift, "
        "kid, hps_delta)",
    )
    p.add_argument("--checkpoint", help="checkpoint name in the rows (default: from the manifest)")
    p.add_argument("--out", required=True, help="output .parquet file (written atomically)")
    p.add_argument(
        "--metrics",
        help="comma-separated metric names (default: all but hps_delta, which downloads HPS v2.1 (ViT-H-14); "
        "clip_iqa when experimental)",
    )
    _add_encoder_options(p)
    p.set_defaults(func=run_score)

    p = subparsers.add_parser(
        "make-tiny-encoders",
        help="write tiny random-weight encoders, one per registered kind (offline tests, CPU demo)",
        description="Write tiny random-weight encoders in the real on-disk formats plus encoders.yaml, an "
        "EncoderSettings file pointing at them (use with --encoders).",
    )
    p.add_argument("out", help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_make_tiny_encoders)
