"""Sampling prompt items to PNG files plus a ``manifest.parquet`` (`lyco-bench generate`).

The pipeline is loaded once; adapter files are merged into the weights (W0 += λ·ΔW, several
files each with its λ) before sampling, so generating with an adapter costs what the base model
costs, and unmerged afterwards. Each image has its own ``torch.Generator`` seeded with its item's
seed (docs/protocol.md §4: seed_base + i), and batches are planned per folder (``plan_batches``), so an
image does not depend on what else is generated, nor on whether the run was interrupted.

Files: ``<out>/<class>/<category>/<concept>[/<subclass>]/<prompt_index>-<seed>.png`` and
``<out>/manifest.parquet`` (columns in docs/internals.md), both written atomically. PNG encoding
and the manifest rows go to a writer thread (``lyco_bench.generation_io``): each batch's rows are
appended to a journal and the manifest is written once at the end, so an interrupted run loses at
most the batches in flight, and a rerun skips every image that is on disk and listed (manifest or
journal) with the same prompt and seed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, field_validator

from lyco_bench.config import StrictModel, validate
from lyco_bench.errors import BadInput
from lyco_bench.generation_io import (  # noqa: F401 - MANIFEST_COLUMNS, save_png: this module's API
    MANIFEST,
    MANIFEST_COLUMNS,
    SETTING_COLUMNS,
    ImageWriter,
    read_manifest,
    save_png,
    write_manifest,
)
from lyco_bench.prompts import PROMPT_CLASSES, PromptItem, PromptSet, expand_prompts, load_prompt_set
from lyco_bench.utils import console, cuda_fast_math, default_device, progress_bar, stable_hash

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
OUTPUT_VERSION = 1
"""Bumped when a change here changes the images written for the same inputs (sweep job ids)."""


class SamplerSettings(StrictModel):
    """How images are sampled; defaults are the paper's (docs/protocol.md §4)."""

    sampler: str = "ddim"
    """diffusers scheduler: DDIM (η = 0), Euler, DPM-Solver++ (multistep) for the UNet families;
    ``flow-euler`` (flow-matching Euler) for FLUX: a name some model family samples with
    (lyco_bench.families; the loaded model's family checks it is one of its own)."""
    steps: int = Field(25, ge=1)
    cfg: float = 7.0
    """Classifier-free guidance scale (≤ 1: no guidance)."""
    width: int = Field(512, ge=8, multiple_of=8)
    height: int = Field(512, ge=8, multiple_of=8)
    negative_prompt: str = ""
    seed_base: int = 1000
    """The i-th image of a prompt gets seed_base + i."""
    batch_size: int = Field(4, ge=1)
    """Images per pipeline call (see plan_batches: images agree across batch sizes only up to
    float rounding, about one pixel level on a few pixels)."""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """Sampling precision. ``auto`` resolves before anything is hashed or sampled
    (:meth:`resolved`): float16 on a CUDA device, float32 elsewhere; a sweep resolves it on the
    machine that plans it, so its job ids hold the precision the images are drawn in. What
    stays float32 on CUDA runs with TF32 matmuls (``utils.cuda_fast_math``)."""

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, value: str) -> str:
        known = known_samplers()
        if value not in known:
            raise ValueError(f"unknown sampler {value!r} (known: {', '.join(known)})")
        return value

    def resolved(self, device: str | torch.device) -> SamplerSettings:
        """These settings with ``auto`` replaced by the precision for ``device``."""
        if self.dtype != "auto":
            return self
        return self.model_copy(update={"dtype": auto_dtype(device)})


def known_samplers() -> list[str]:
    """Every sampler some model family samples with (lyco_bench.families), in registry order."""
    from lyco_bench.families import FAMILIES

    return list(dict.fromkeys(name for family in FAMILIES.values() for name in family.samplers))


def auto_dtype(device: str | torch.device) -> str:
    """``auto`` sampling precision: float16 on CUDA (SD1.5 samples in half precision, 2–3× the
    float32 speed), float32 elsewhere (CPU half-precision kernels are slower, not faster)."""
    return "float16" if torch.device(device).type == "cuda" else "float32"


AdapterArg = tuple[str | os.PathLike, float] | tuple[str | os.PathLike, float, int | None]
"""(file, λ) or (file, λ, rank): a rank keeps the file's first rank components (DyLoRA, ``dyn=``)."""


def base_images_key(model: str | os.PathLike, prompt_set: PromptSet, sampler: SamplerSettings) -> str:
    """Folder name for base-model images: one per (base model, prompt set content, sampler settings).

    Which classes or how many images are asked for is left out: those only add files to the same
    folder. The batch size is left out too, since images do not depend on it.
    """
    path = Path(str(model)).expanduser()
    model_id = str(path.resolve()) if path.exists() else str(model)
    prompts = prompt_set.model_dump(exclude={"source", "classes", "images_per_prompt", "description"})
    settings = sampler.model_dump(exclude={"batch_size"})
    digest = stable_hash({"model": model_id, "prompts": prompts, "sampler": settings})
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", path.name or str(model)).strip("-")[:40] or "model"
    return f"{slug}-{prompt_set.name}-v{prompt_set.version}-{sampler.sampler}{sampler.steps}-{digest}"


def make_scheduler(pipe: Any, sampler: str) -> Any:
    """A fresh scheduler of the requested kind built from the pipeline's own noise schedule (the
    pipeline's model family knows which samplers it has: lyco_bench.families)."""
    from lyco_bench.families import family_of

    family = family_of(pipe)
    if sampler not in family.samplers:
        raise BadInput(
            f"sampler: unknown sampler {sampler!r} for {family.name} ({', '.join(family.samplers)})"
        )
    return family.make_scheduler(pipe, sampler)


def sample_batch(
    pipe: Any, items: Sequence[PromptItem], sampler: SamplerSettings, methods: Sequence[Any] = ()
) -> Any:
    """Sample one batch; returns uint8 images (B, H, W, 3). One generator per image (its seed);
    ``methods`` (model-level, attached or merged) rewrite each prompt (TI: trigger → its tokens)."""
    import numpy as np

    generators = [torch.Generator(device="cpu").manual_seed(item.seed) for item in items]
    latents = initial_noise(pipe, generators, sampler)
    with torch.inference_mode():
        out = pipe(
            latents=_family(pipe).pipeline_latents(pipe, latents).to(pipe.device, _denoiser(pipe).dtype),
            prompt=[_method_prompt(item.prompt, methods) for item in items],
            negative_prompt=[sampler.negative_prompt] * len(items),
            num_inference_steps=sampler.steps,
            guidance_scale=sampler.cfg,
            **_family(pipe).pipeline_kwargs(pipe, sampler),
            width=sampler.width,
            height=sampler.height,
            generator=generators,
            output_type="np",
        )
    images = np.asarray(out.images, dtype=np.float32)  # (B, H, W, 3) in [0, 1]
    finite = np.isfinite(images).reshape(len(items), -1).all(axis=1)
    if not finite.all():  # NaN would be cast to arbitrary bytes: a black or noise PNG, silently
        item = items[int(np.argmin(finite))]
        raise NonFiniteImage(
            f"prompt {item.prompt!r} (seed {item.seed}): the sampled image holds NaN or inf "
            f"({int((~finite).sum())} of {len(items)} in its batch); nothing of the batch is written"
        )
    return (np.clip(images, 0.0, 1.0) * 255.0).round().astype(np.uint8)


class NonFiniteImage(ValueError):
    """A sampled image with NaN/inf pixels (an overflowing adapter or model); generate() turns it
    into BadInput naming the checkpoint."""


def initial_noise(pipe: Any, generators: Sequence[torch.Generator], sampler: SamplerSettings) -> torch.Tensor:
    """Each image's initial latent noise, (B, C, H/f, W/f) in float32 on the CPU.

    Drawn from CPU generators, one per image, whatever device samples: the same seed gives the
    same noise on CPU and GPU and in any precision (cast afterwards), so images of one job differ
    between devices only by their arithmetic, and base and fine-tuned images stay paired. The
    draws are diffusers' own for CPU generators (``randn_tensor``: one (1, C, h, w) draw per
    generator, which then goes on to the scheduler's own draws), so CPU images are unchanged.
    """
    from lyco_bench.families import family_of

    shape = family_of(pipe).noise_shape(pipe, sampler.height, sampler.width)
    return torch.cat([torch.randn(shape, generator=g, dtype=torch.float32) for g in generators])


def _family(pipe: Any) -> Any:
    from lyco_bench.families import family_of

    return family_of(pipe)


def _denoiser(pipe: Any) -> Any:
    return _family(pipe).denoiser(pipe)


def _method_prompt(text: str, methods: Sequence[Any]) -> str:
    for method in methods:
        text = method.prompt(text)
    return text


def _adapter_label(adapters: Sequence[AdapterArg]) -> str:
    """``name@<sha256[:12]>:λ;…``: a retrained file under the same name is another adapter."""
    from lyco_bench.utils import sha256_file

    parts = []
    for path, lam, *rank in adapters:
        dyn = f":dyn={rank[0]}" if rank and rank[0] is not None else ""
        parts.append(f"{Path(path).name}@{sha256_file(path)[:12]}:{float(lam):g}{dyn}")
    return ";".join(parts)


def _row(item: PromptItem, settings: dict[str, Any], prompt_set: PromptSet | None) -> dict[str, Any]:
    return {
        **item.model_dump(exclude={"concepts"}),
        "file": item.relpath,
        "subclass": item.subclass or "",
        "concepts": "+".join(item.concepts),
        "prompt_set": prompt_set.name if prompt_set else "",
        **settings,
    }


def _is_done(item: PromptItem, rows: dict[str, dict[str, Any]], out_dir: Path) -> bool:
    row = rows.get(item.relpath)
    return row is not None and row["prompt"] == item.prompt and (out_dir / item.relpath).is_file()


@contextlib.contextmanager
def _merged(pipe: Any, adapters: Sequence[AdapterArg]) -> Iterator[list[Any]]:
    """Adapters merged into the UNet / text-encoder weights (W0 += λ·ΔW), restored on exit.

    A model-level method's file (lyco_bench.methods: Textual Inversion, Hypernetworks) is merged
    too when that is exact, else attached for the call; the methods are yielded, for their prompts.
    """
    from lyco_bench.adapters import merge_adapters, unmerge_adapters
    from lyco_bench.adapters.reference import load_adapter_arg
    from lyco_bench.families import family_of
    from lyco_bench.methods import method_of_file

    layers, methods = [], []
    for path, lam, *rank in adapters:
        cls = method_of_file(path)
        if cls is None:
            layers.append((load_adapter_arg(path, rank[0] if rank else None), float(lam)))
        else:
            method = cls.from_file(path)
            method.set_multiplier(float(lam))
            methods.append(method)
    family = family_of(pipe)
    encoders = family.encoders(pipe)
    handle = merge_adapters(family.denoiser(pipe), encoders, layers) if layers else None
    undo = []
    try:
        for method in methods:
            if method.merges_exactly:
                undo.append((method.unmerge, method.merge(pipe)))
            else:
                method.attach(pipe)
                undo.append((lambda _h, m=method: m.detach(), None))
        yield methods
    finally:
        for fn, arg in reversed(undo):
            fn(arg)
        if handle is not None:
            unmerge_adapters(handle)


def generate(
    *,
    model: str | os.PathLike,
    adapters: Sequence[AdapterArg] = (),
    items: Sequence[PromptItem],
    out_dir: str | os.PathLike,
    sampler: SamplerSettings,
    device: str | None = None,
    checkpoint_name: str | None = None,
    prompt_set: PromptSet | None = None,
    pipeline: Any = None,
    exact: bool = False,
) -> Path:
    """Generate every item not yet in ``out_dir``; return the path of ``manifest.parquet``.

    ``adapters``: ``(file, λ)`` pairs merged into the weights for this call. ``checkpoint_name``
    (default: the adapter file stems, or ``"base"``) and ``prompt_set`` (name, version) go into
    the manifest. ``pipeline``: an already loaded pipeline to reuse (e.g. across checkpoints);
    its scheduler is replaced by ``sampler``'s. Item seeds are re-derived from
    ``sampler.seed_base`` (seed = seed_base + image_index). ``exact``: the folder ends up holding
    exactly ``items`` — images of other items are removed and the manifest rows of kept ones are
    rewritten from their items, so a changed prompt set (another version, an edited template)
    regenerates only the images whose prompt changed.
    """
    out_dir = Path(out_dir)
    for path, *_ in adapters:
        if not Path(path).is_file():
            raise BadInput(f"--adapter {path}: no such file")
    items = [item.with_seed_base(sampler.seed_base) for item in items]
    _check_unique(items)
    if checkpoint_name is None:
        checkpoint_name = "+".join(Path(p).stem for p, *_ in adapters) or "base"
    settings = {
        "checkpoint": checkpoint_name,
        "adapters": _adapter_label(adapters),
        "model": str(model),
        "prompt_set_version": prompt_set.version if prompt_set else "",
        **{k: getattr(sampler, k) for k in ("sampler", "steps", "cfg", "width", "height", "negative_prompt")},
    }
    checked = [c for c in SETTING_COLUMNS if not (exact and c == "prompt_set_version")]
    rows = read_manifest(out_dir, settings, checked=checked)
    done = {item.relpath for item in items if _is_done(item, rows, out_dir)}
    rows = {f: r for f, r in rows.items() if (out_dir / f).is_file()}
    if exact:
        rows = _keep_only(out_dir, items, rows, done=done, settings=settings, prompt_set=prompt_set)
    todo = [
        batch
        for batch in plan_batches(items, sampler.batch_size)
        if any(i.relpath not in done for i in batch)
    ]
    if not todo:
        return write_manifest(out_dir, rows)
    device = device or (str(pipeline.device) if pipeline is not None else default_device())
    sampler = sampler.resolved(device)
    if torch.device(device).type == "cuda":
        cuda_fast_math()
    if pipeline is None:
        pipeline = _load(model, device=device, dtype=DTYPES[sampler.dtype])
    pipeline.scheduler = make_scheduler(pipeline, sampler.sampler)
    total = sum(i.relpath not in done for batch in todo for i in batch)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _merged(pipeline, adapters) as methods, progress_bar() as bar, ImageWriter(out_dir) as writer:
        task = bar.add_task("generate", total=total, info=checkpoint_name)
        for batch in todo:
            # The whole batch is sampled even if some of it is on disk: its composition fixes
            # the float rounding, so a resumed run writes the same bytes as an uninterrupted one.
            try:
                images = sample_batch(pipeline, batch, sampler, methods)
            except NonFiniteImage as exc:
                raise BadInput(f"checkpoint {checkpoint_name}: {exc}") from None
            missing = [
                (item.relpath, image, _row(item, settings, prompt_set))
                for item, image in zip(batch, images, strict=True)
                if item.relpath not in done
            ]
            writer.submit(missing)  # PNG encoding and the journal: on the writer's thread
            rows.update((relpath, row) for relpath, _, row in missing)
            bar.update(task, advance=len(missing))
    return write_manifest(out_dir, rows)


def _keep_only(
    out_dir: Path, items: Sequence[PromptItem], rows: dict, *, done: set[str], settings, prompt_set
):
    """Remove images that are not ``items`` (or not done); rows of done items rebuilt from them."""
    wanted = {item.relpath: item for item in items}
    for image in sorted(out_dir.rglob("*.png")) if out_dir.is_dir() else []:
        rel = image.relative_to(out_dir).as_posix()
        if rel not in done:
            image.unlink()
    return {rel: _row(wanted[rel], settings, prompt_set) for rel in sorted(done)}


def plan_batches(items: Sequence[PromptItem], batch_size: int) -> list[list[PromptItem]]:
    """Batches of at most ``batch_size`` items of one prompt class, in item order.

    Batched float kernels round differently with the batch's shape and an image's position in
    it (measured: ~1e-6 in the UNet, now and then one pixel level in the PNG), so a batch's
    composition must not depend on what else is generated: it depends only on the items of its
    class and the batch size. Asking for more or fewer classes (base model vs checkpoints), or
    resuming an interrupted run, then gives byte-identical images.
    """
    by_class: dict[str, list[PromptItem]] = {}
    for item in items:
        by_class.setdefault(item.prompt_class, []).append(item)
    return [
        group[i : i + batch_size] for group in by_class.values() for i in range(0, len(group), batch_size)
    ]


def _load(model: str | os.PathLike, *, device: str, dtype: torch.dtype) -> Any:
    from lyco_bench.models import load_pipeline

    return load_pipeline(str(model), device=device, dtype=dtype)


def _check_unique(items: Sequence[PromptItem]) -> None:
    seen: set[str] = set()
    for item in items:
        if item.relpath in seen:
            raise BadInput(f"items: two items map to the same file {item.relpath}")
        seen.add(item.relpath)


# --- command line ---------------------------------------------------------------------------


def parse_adapter(text: str) -> tuple[str, float, int | None]:
    """``FILE[:λ][:dyn=R]`` → (file, λ, rank); λ defaults to 1, a finite number (as ``adapter merge``)."""
    from lyco_bench.adapters.reference import parse_adapter_arg

    return parse_adapter_arg(text)


def _cmd_generate(args: argparse.Namespace) -> int:
    from lyco_bench.adapters.reference import load_adapter_arg
    from lyco_bench.data import load_dataset
    from lyco_bench.methods import method_of_file
    from lyco_bench.utils import check_output_dir

    adapters = [parse_adapter(a) for a in args.adapter]
    for path, _, rank in adapters:
        if not Path(path).is_file():
            raise BadInput(f"--adapter {path}: no such file")
        # unreadable, non-finite or a bad rank: refused before the model loads
        method = method_of_file(path)
        method.from_file(path) if method is not None else load_adapter_arg(path, rank)
    ps = load_prompt_set(args.prompts)
    dataset = load_dataset(args.dataset)
    other = load_dataset(args.combine_dataset) if args.combine_dataset else None
    names = (
        "sampler",
        "steps",
        "cfg",
        "width",
        "height",
        "negative_prompt",
        "seed_base",
        "batch_size",
        "dtype",
    )
    sampler = validate(SamplerSettings, {k: getattr(args, k) for k in names}, source="generate")
    items = expand_prompts(
        ps, dataset, args.classes, seed_base=args.seed_base, images_per_prompt=args.images_per_prompt,
        combine_with=other,
    )  # fmt: skip
    out = Path(args.out)
    before = _count_listed(out)
    # Upper bound: a PNG is at most about its raw RGB size.
    need = max(len(items) - before, 0) * args.width * args.height * 3
    check_output_dir(out, what=f"--out {out}", need_bytes=need)
    started = time.perf_counter()
    manifest = generate(
        model=args.model, adapters=adapters, items=items, out_dir=out, sampler=sampler, device=args.device,
        checkpoint_name=args.checkpoint_name, prompt_set=ps,
    )  # fmt: skip
    made = _count_listed(out) - before
    console.print(
        f"generate: {made} new images, {len(items) - made} already there, "
        f"{time.perf_counter() - started:.1f}s → {manifest}"
    )
    return 0


def _count_listed(out_dir: Path) -> int:
    import pandas as pd

    path = out_dir / MANIFEST
    return len(pd.read_parquet(path, columns=["file"])) if path.is_file() else 0


def _sampler_arguments(p: argparse.ArgumentParser) -> None:
    d = SamplerSettings()
    p.add_argument(
        "--sampler", choices=known_samplers(), default=d.sampler,
        help="a sampler of the model's family (default %(default)s; FLUX: flow-euler)",
    )  # fmt: skip
    p.add_argument("--steps", type=int, default=d.steps, help="sampling steps (default %(default)s)")
    p.add_argument("--cfg", type=float, default=d.cfg, help="guidance scale (default %(default)s)")
    p.add_argument("--width", type=int, default=d.width, help="default %(default)s")
    p.add_argument("--height", type=int, default=d.height, help="default %(default)s")
    p.add_argument("--negative-prompt", default=d.negative_prompt, help="default empty")
    p.add_argument("--seed-base", type=int, default=d.seed_base, help="image i of a prompt gets seed-base + i (default %(default)s)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="images per pipeline call (default %(default)s)")  # fmt: skip
    p.add_argument(
        "--dtype", choices=["auto", *DTYPES], default=d.dtype,
        help="sampling precision (default %(default)s: float16 on CUDA, float32 elsewhere)",
    )  # fmt: skip


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "generate",
        help="generate the images of a prompt set for a base model or checkpoint",
        description=(
            "Expand a prompt set over a dataset's concepts and sample every image (PNG + "
            "manifest.parquet) with the base model or with adapter files merged into its weights. "
            "Reruns skip images already done. Defaults are the paper's: DDIM, 25 steps, CFG 7, 512 px, seeds 1000 + i."
        ),
    )
    p.add_argument("--model", required=True, help="hub id, diffusers folder or single .safetensors file")
    p.add_argument("--adapter", action="append", default=[], metavar="FILE[:λ][:dyn=R]", help="adapter file merged with weight λ (default 1), optionally kept to its first R rank components (DyLoRA); repeat to merge several")  # fmt: skip
    p.add_argument("--prompts", required=True, help="prompt set name (prompts/<name>.yaml) or YAML path")
    p.add_argument("--dataset", required=True, help="dataset folder (its concepts and triggers)")
    p.add_argument("--classes", nargs="+", choices=PROMPT_CLASSES, help="prompt classes (default: the set's)")
    p.add_argument("--images-per-prompt", type=int, help="override the images per prompt of every class")
    p.add_argument("--combine-dataset", help="second dataset for cross-model <combine> prompts")
    p.add_argument(
        "--checkpoint-name", help="name written to the manifest (default: adapter file stems, or base)"
    )
    p.add_argument("--device", help="cpu, cuda, cuda:1 … (default: cuda if available)")
    _sampler_arguments(p)
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_cmd_generate)
