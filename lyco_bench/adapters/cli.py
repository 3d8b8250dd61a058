"""``lyco-bench adapter inspect|merge|extract``: look into, bake in and extract adapter files.

  inspect FILE                                  per-module algorithm, shapes, rank bound, params
  merge --base MODEL --adapter FILE[:λ][:dyn=R] … --out DIR   a complete pipeline folder with W0 + Σλ·ΔW
  extract --base MODEL --tuned MODEL2 --rank R --out FILE   SVD of tuned − base into a LoRA

Everything is validated before anything is written; outputs appear atomically (temp + rename).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

from lyco_bench.adapters.reference import load_adapter_arg, parse_adapter_arg  # noqa: F401 - re-exported
from lyco_bench.errors import BadInput

# Free space asked before extracting: an SD1.5 LoRA of rank 8–32 is some tens of MB; a floor that
# catches a full disk before two pipelines load and every layer is decomposed.
EXTRACT_NEED_BYTES = 64 * 2**20


# --- inspect --------------------------------------------------------------------------------
def inspect_rows(file) -> list[dict]:
    """One row per module: key, algorithm, tensor shapes, rank bound, parameter count, finite."""
    from lyco_bench.adapters.fileformat import nonfinite_modules, parameter_count, rank_bound

    nonfinite = set(nonfinite_modules(file))
    rows = []
    for key, cls in file.modules.items():
        tensors = file.module_tensors(key)
        shapes = " ".join(
            f"{s.removesuffix('.weight')}:{'×'.join(map(str, t.shape))}"
            for s, t in sorted(tensors.items())
            if s != "alpha"
        )
        alpha = tensors.get("alpha")
        try:
            bound = rank_bound(cls, tensors)
        except (KeyError, NotImplementedError):
            bound = None
        rows.append(
            {
                "module": key,
                "algo": cls.algo,
                "shapes": shapes,
                "alpha": None if alpha is None else float(alpha.float()),
                "rank_bound": bound,
                "params": parameter_count(cls, tensors),
                "finite": key not in nonfinite,
            }
        )
    return rows


def _check_width(width: int | None) -> None:
    if width is not None and width < 1:
        raise BadInput(f"--width {width}: must be ≥ 1 (columns of the table)")


def _cmd_inspect(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from lyco_bench.adapters.fileformat import load_adapter

    _check_width(args.width)
    file = load_adapter(args.file, allow_nonfinite=True)  # shown first, refused at the end
    if args.rank is not None:
        from lyco_bench.adapters.ops import truncate_adapter

        file = truncate_adapter(file, args.rank)
    rows = inspect_rows(file)
    console = Console(width=args.width)
    if args.json:
        print(json.dumps({"modules": rows, "metadata": file.metadata}, indent=2, sort_keys=True))
    else:
        table = Table(title=f"{args.file}", show_lines=False)
        for col in ("module", "algo", "shapes", "alpha", "rank ≤", "params"):
            table.add_column(col, justify="right" if col in ("alpha", "rank ≤", "params") else "left")
        for r in rows:
            alpha = "" if r["alpha"] is None else f"{r['alpha']:g}"
            bound = "" if r["rank_bound"] is None else str(r["rank_bound"])
            algo = r["algo"] if r["finite"] else f"{r['algo']} NaN/inf"
            table.add_row(r["module"], algo, r["shapes"], alpha, bound, f"{r['params']:,}")
        table.add_section()
        table.add_row("total", "", "", "", "", f"{sum(r['params'] for r in rows):,}")
        console.print(table)
        if file.metadata:
            meta = Table(title="metadata")
            meta.add_column("key")
            meta.add_column("value", overflow="fold")
            for key, value in sorted(file.metadata.items()):
                meta.add_row(key, value)
            console.print(meta)
    algos = ", ".join(f"{n} {a}" for a, n in sorted(file.algorithms().items()))
    unet = sum(1 for k in file.modules if k.startswith("lora_unet_"))
    from lyco_bench.utils import console as stderr_console

    (stderr_console if args.json else console).print(
        f"{args.file}: {len(rows)} modules ({algos}; {unet} UNet, {len(rows) - unet} text encoder), "
        f"{sum(r['params'] for r in rows):,} parameters, {Path(args.file).stat().st_size:,} bytes"
    )
    _refuse_nonfinite(args.file, [r["module"] for r in rows if not r["finite"]])
    return 0


def _refuse_nonfinite(path: str, modules: list[str], shown: int = 3) -> None:
    if modules:
        more = f" and {len(modules) - shown} more" if len(modules) > shown else ""
        names = ", ".join(modules[:shown]) + more
        plural = "s" if len(modules) > 1 else ""
        raise BadInput(f"{path}: NaN or inf values in {len(modules)} module{plural}: {names}")


# --- merge ----------------------------------------------------------------------------------
def _check_new_output(path: Path, *, force: bool) -> None:
    if path.exists() and not force:
        raise BadInput(f"{path}: already exists (use --force to replace it)")
    if path.exists() and not path.is_dir() and force:
        raise BadInput(f"{path}: exists and is not a folder")


def save_pipeline_atomic(pipe, out: Path) -> None:
    """save_pretrained into a temporary sibling folder, then rename it to ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    from diffusers.utils import logging as diffusers_logging

    try:
        diffusers_logging.disable_progress_bar()  # one summary line is ours to print
        pipe.save_pretrained(tmp, safe_serialization=True)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _cmd_merge(args: argparse.Namespace) -> int:
    from lyco_bench.adapters.ops import merge_adapters
    from lyco_bench.families import family_of
    from lyco_bench.models import load_pipeline, local_model_bytes
    from lyco_bench.utils import check_output_dir, console

    out = Path(args.out)
    _check_new_output(out, force=args.force)
    sources = [parse_adapter_arg(a) for a in args.adapter]
    files = [(load_adapter_arg(path, rank), lam) for path, lam, rank in sources]  # before the heavy load
    # The merged pipeline is saved in the base's dtype: about the base's size on disk.
    check_output_dir(out, what=f"--out {out}", need_bytes=local_model_bytes(args.base))
    pipe = load_pipeline(args.base, config=args.config)
    family = family_of(pipe)  # which denoiser and text encoders the files' keys name
    handle = merge_adapters(family.denoiser(pipe), family.encoders(pipe), files)
    save_pipeline_atomic(pipe, out)
    parts = " + ".join(f"{lam:g}·{Path(f.name).name}" for f, lam in files)
    console.print(f"merged {parts} into {len(handle.originals)} layers of {args.base} → {out}")
    return 0


# --- extract --------------------------------------------------------------------------------
def _extraction_metadata(args: argparse.Namespace) -> dict[str, str]:
    from lyco_bench.adapters.ops import extraction_metadata

    settings = {
        "base": str(args.base),
        "tuned": str(args.tuned),
        "rank": args.rank,
        "conv_rank": args.conv_rank,
    }
    return extraction_metadata(settings, rank=args.rank, conv_rank=args.conv_rank, base=str(args.base))


def _print_extraction(rows: list, *, out: Path, rank: int, width: int | None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=width)
    table = Table(title=f"extracted rank ≤ {rank}: relative error ‖D − D_r‖/‖D‖ per layer")
    for col in ("module", "shape", "rank", "rel. error", "bias changed"):
        table.add_column(col, justify="left" if col == "module" else "right")
    for r in rows:
        shape = "×".join(map(str, r.shape))
        table.add_row(r.key, shape, str(r.rank), f"{r.relative_error:.4g}", "yes" if r.bias_changed else "")
    console.print(table)
    worst = max(rows, key=lambda r: r.relative_error)
    mean = sum(r.relative_error for r in rows) / len(rows)
    console.print(
        f"extracted {len(rows)} layers into {out}: mean relative error {mean:.4g}, "
        f"worst {worst.relative_error:.4g} ({worst.key})"
    )


def _cmd_extract(args: argparse.Namespace) -> int:
    from lyco_bench.adapters.fileformat import detect_modules, save_tensors
    from lyco_bench.adapters.ops import extract_lora
    from lyco_bench.families import family_of, key_map_of
    from lyco_bench.models import load_pipeline
    from lyco_bench.utils import check_output_dir

    out = Path(args.out)
    if args.rank < 1 or (args.conv_rank is not None and args.conv_rank < 1):
        raise BadInput("--rank and --conv-rank must be ≥ 1")
    if not 0 <= args.threshold < float("inf"):  # NaN fails too: it would skip no layer, silently
        raise BadInput(f"--threshold {args.threshold}: must be a finite number ≥ 0")
    _check_width(args.width)
    if out.suffix != ".safetensors":
        raise BadInput(f"{out}: --out must end in .safetensors")
    if out.exists() and not args.force:
        raise BadInput(f"{out}: already exists (use --force to replace it)")
    if out.is_dir():
        raise BadInput(f"--out {out}: is a folder, not a file")
    check_output_dir(out.parent, what=f"--out {out}", need_bytes=EXTRACT_NEED_BYTES)
    base = load_pipeline(args.base, config=args.config)
    tuned = load_pipeline(args.tuned, config=args.config)
    family = family_of(base)
    if family_of(tuned) is not family:
        raise BadInput(f"--tuned {args.tuned}: a {family_of(tuned).name} model; --base is {family.name}")
    te_base = family.encoders(base) if not args.unet_only else None
    te_tuned = family.encoders(tuned) if not args.unet_only else None
    for name, pipe, encoders in (
        (f"--base {args.base}", base, te_base),
        (f"--tuned {args.tuned}", tuned, te_tuned),
    ):
        parts = {family.denoiser_attr: family.denoiser(pipe)}
        parts.update(
            {s.attr: getattr(pipe, s.attr) for s in family.text_encoders if s.prefix in (encoders or {})}
        )
        _check_finite_weights(name, parts)
    tensors, rows = extract_lora(
        family.denoiser(base),
        te_base,
        family.denoiser(tuned),
        te_tuned,
        rank=args.rank,
        conv_rank=args.conv_rank,
        threshold=args.threshold,
    )
    metadata = _extraction_metadata(args)
    to_file = key_map_of(family.denoiser(base)).to_file
    if to_file is not None:  # the family's file layout (FLUX: kohya's fused BFL layers)
        tensors = to_file(tensors, detect_modules(tensors, name=str(out)))
    save_tensors(out, tensors, metadata)
    _print_extraction(rows, out=out, rank=args.rank, width=args.width)
    return 0


def _check_finite_weights(name: str, models: dict) -> None:
    """BadInput naming the model and the first parameter holding a NaN or inf: its SVD would
    spread the non-finite values over every extracted factor (or fail to converge)."""
    import torch

    for part, model in models.items():
        if model is None:
            continue
        for key, value in model.named_parameters():
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise BadInput(f"{name}: {part}.{key} holds NaN or inf values")


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    ins = sub.add_parser(
        "inspect",
        help="per-module algorithm, shapes, rank bound and parameter count of an adapter file",
        description="Show each module of an adapter file (algorithm detected from its keys), totals and metadata.",
    )
    ins.add_argument("file", help="adapter .safetensors file (lyco-bench, LyCORIS or kohya)")
    ins.add_argument("--json", action="store_true", help="print the rows and metadata as JSON instead")
    ins.add_argument(
        "--rank",
        type=int,
        default=None,
        help="show the file truncated to its first RANK rank components (DyLoRA)",
    )
    ins.add_argument("--width", type=int, default=None, help="table width (default: terminal width)")
    ins.set_defaults(func=_cmd_inspect)


def _add_merge(sub: argparse._SubParsersAction) -> None:
    mer = sub.add_parser(
        "merge",
        help="bake adapters into a base model: W0 + Σ λ·ΔW, written as a complete pipeline folder",
        description=(
            "Merge one or more adapter files, each with its own multiplier λ, into the UNet and text "
            "encoder of MODEL (any base of the architecture the adapters were trained on) and write a "
            "complete diffusers pipeline folder loadable by StableDiffusionPipeline.from_pretrained."
        ),
    )
    mer.add_argument(
        "--base", required=True, metavar="MODEL", help="diffusers pipeline folder, hub id or .safetensors"
    )
    mer.add_argument(
        "--adapter",
        required=True,
        action="append",
        metavar="FILE[:λ][:dyn=R]",
        help="adapter file with an optional multiplier (default 1); repeat to combine several",
    )
    mer.add_argument("--out", required=True, metavar="DIR", help="output pipeline folder (must not exist)")
    mer.add_argument("--force", action="store_true", help="replace DIR if it exists")
    mer.add_argument(
        "--config",
        default=None,
        metavar="DIR",
        help="for single-file .safetensors models offline: a local diffusers folder of the same architecture",
    )
    mer.set_defaults(func=_cmd_merge)


def _add_extract(sub: argparse._SubParsersAction) -> None:
    ext = sub.add_parser(
        "extract",
        help="SVD-extract tuned − base into a LoRA/LoCon of rank R, with the error per layer",
        description=(
            "For every Linear/Conv2d where the tuned model differs from the base, keep the best rank-R "
            "approximation of the difference (truncated SVD; convs as a k×k down and 1×1 up conv) and "
            "report the relative Frobenius error per layer."
        ),
    )
    ext.add_argument("--base", required=True, metavar="MODEL", help="the base pipeline")
    ext.add_argument(
        "--tuned", required=True, metavar="MODEL2", help="the fine-tuned pipeline (same architecture)"
    )
    ext.add_argument(
        "--rank", required=True, type=int, metavar="R", help="rank for Linear and 1×1 conv layers"
    )
    ext.add_argument("--conv-rank", type=int, default=None, help="rank for k×k conv layers (default: R)")
    ext.add_argument(
        "--threshold",
        type=float,
        default=0.0,
        help="skip layers with ‖tuned − base‖ ≤ threshold·‖base‖ (default 0: only identical layers)",
    )
    ext.add_argument("--unet-only", action="store_true", help="leave the text encoder out")
    ext.add_argument("--out", required=True, metavar="FILE", help="output .safetensors file")
    ext.add_argument("--force", action="store_true", help="replace FILE if it exists")
    ext.add_argument(
        "--config",
        default=None,
        metavar="DIR",
        help="for single-file .safetensors models offline: a local diffusers folder of the same architecture",
    )
    ext.add_argument("--width", type=int, default=None, help="table width (default: terminal width)")
    ext.set_defaults(func=_cmd_extract)


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "adapter",
        help="inspect, merge or extract adapter files (any registered layer algorithm; LyCORIS/kohya format)",
        description=(
            "Work with adapter files in the kohya/LyCORIS safetensors layout, of any registered layer "
            "algorithm (detected from the file's keys)."
        ),
    )
    sub = p.add_subparsers(dest="adapter_command", metavar="SUBCOMMAND", required=True)
    _add_inspect(sub)
    _add_merge(sub)
    _add_extract(sub)
