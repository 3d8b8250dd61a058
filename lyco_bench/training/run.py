"""``train()``: the epoch loop, checkpoints with run records, resuming, and ``lyco-bench train``."""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lyco_bench.config import load_config
from lyco_bench.errors import BadInput
from lyco_bench.training.config import (
    RunConfig,
    checkpoint_path,
    record_path,
    resolve_device,
    state_path,
)
from lyco_bench.training.state import load_state, peak_memory, save_state
from lyco_bench.utils import (
    atomic_write_json,
    check_output_dir,
    console,
    device_name,
    git_commit,
    library_versions,
    progress_bar,
    sha256_file,
)

CHECKPOINT_FILE_RE = re.compile(r"^ckpt-e(\d{3,})\.(?:json|safetensors)$")

# Free space asked of --out before the model loads, when there is no checkpoint yet to measure:
# an SD1.5 LoRA/LoKr/LoHa checkpoint plus its optimizer state is a few to some tens of MB.
# Resuming asks for twice the last checkpoint + state instead (see _need_bytes).
FIRST_CHECKPOINT_BYTES = 64 * 2**20
DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


def _resolved(config: RunConfig) -> dict[str, Any]:
    return config.model_dump(mode="json")


# Keys that may change between a run and its resumption without changing what is trained.
_RESUMABLE_CHANGES = {
    "checkpoint_epochs", "checkpoint_every", "cache_dir", "device", "skip_bad_images", "gradient_checkpointing",
}  # fmt: skip


def find_resume(config: RunConfig, out_dir: Path) -> tuple[int, dict[str, Any]] | None:
    """(epoch, run record) of the checkpoint to resume from, or None (train from the start).

    A checkpoint is intact when its run record is readable and its adapter file has the size and
    sha256 the record holds; a resume point when its resume state is there and matches too. The
    resume point is the last one with every earlier checkpoint intact: a damaged checkpoint (bit
    rot, a partial copy, another file copied over it) is named and retrained — training is
    deterministic, so the rebuilt files equal the lost ones. BadInput when that checkpoint was
    trained with a different configuration (a changed ``epochs`` is allowed with a constant
    schedule, whose lr does not depend on the run length).
    """
    resume = None
    for epoch in _epochs_on_disk(out_dir):
        record, why = _intact_record(out_dir, epoch)
        if why:
            start = resume[0] if resume else 0
            console.print(f"train: {why}; retraining from epoch {start}", highlight=False)
            break
        if state_path(out_dir, epoch).is_file() and not _mismatch(
            state_path(out_dir, epoch), record, "state"
        ):
            resume = (epoch, record)
    if resume is None:
        return None
    epoch, record = resume
    old, new = dict(record["config"]), _resolved(config)
    allowed = set(_RESUMABLE_CHANGES)
    if config.lr_scheduler in ("constant", "constant_with_warmup"):
        allowed.add("epochs")
    for key in sorted(set(old) | set(new)):
        if key not in allowed and old.get(key) != new.get(key):
            raise BadInput(
                f"{out_dir}: holds a run with a different {key} ({old.get(key)!r} → {new.get(key)!r}); "
                "use another --out"
            )
    return epoch, record


def saved_checkpoints(out_dir: Path) -> list[tuple[int, dict[str, Any], str | None]]:
    """(epoch, run record, what is damaged or None) of every checkpoint in ``out_dir``, ascending:
    a checkpoint is intact when its record is readable and its adapter file has the recorded size
    and sha256 (``lyco-bench pick`` scores these)."""
    return [(epoch, *_intact_record(out_dir, epoch)) for epoch in _epochs_on_disk(out_dir)]


def _epochs_on_disk(out_dir: Path) -> list[int]:
    """Epochs with an adapter file or a run record in ``out_dir``, ascending."""
    found = set()
    for path in out_dir.glob("ckpt-e*") if out_dir.is_dir() else []:
        match = CHECKPOINT_FILE_RE.match(path.name)
        if match:
            found.add(int(match[1]))
    return sorted(found)


def _intact_record(out_dir: Path, epoch: int) -> tuple[dict[str, Any], str | None]:
    """(run record, None) when checkpoint ``epoch`` is intact, else ({}, what is damaged)."""
    path = record_path(out_dir, epoch)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        dict(record["config"])
    except FileNotFoundError:
        return {}, f"{path} missing (checkpoint incomplete)"
    except (OSError, ValueError, KeyError, TypeError):
        return {}, f"{path} damaged (unreadable run record)"
    ckpt = checkpoint_path(out_dir, epoch)
    why = _mismatch(ckpt, record, "file")
    if why is None:
        return record, None
    return {}, f"{ckpt} missing" if why == "missing" else f"{ckpt} damaged ({why})"


def _mismatch(path: Path, record: dict[str, Any], prefix: str) -> str | None:
    """How ``path`` differs from the size and sha256 ``record`` holds for it (``<prefix>_bytes``,
    ``<prefix>_sha256``; records without them — resume states before they were recorded — pass)."""
    size, digest = record.get(f"{prefix}_bytes"), record.get(f"{prefix}_sha256")
    try:
        actual = path.stat().st_size
    except OSError:
        return "missing"
    if size is not None and actual != size:
        return f"{actual} bytes, recorded {size}"
    if digest is not None and sha256_file(path) != digest:
        return "content differs from the recorded sha256"
    return None


def existing_checkpoints(config: RunConfig, out_dir: Path, up_to: int) -> list[Path]:
    """The checkpoints of ``config``'s save epochs up to ``up_to`` that are on disk."""
    paths = [checkpoint_path(out_dir, e) for e in config.save_epochs() if e <= up_to]
    return [p for p in paths if p.is_file()]


def train(
    config: RunConfig,
    out_dir: str | os.PathLike,
    *,
    pipeline: Any | None = None,
    on_epoch_end: Callable[[int], None] | None = None,
) -> list[Path]:
    """Train ``config`` into ``out_dir``; return the checkpoint paths of every saved epoch.

    ``pipeline``: an already loaded pipeline for ``config.model`` (benchmarks, tests); its modules
    are restored when training ends. ``on_epoch_end(epoch)`` runs after each epoch (and after its
    checkpoint is written). ``out_dir`` is checked (a file in the way, not writable, too little
    free space) before the model loads, so bad output locations fail in one line, not after an epoch.
    """
    from lyco_bench.training.session import Session

    out_dir = Path(out_dir)
    device = resolve_device(config)
    resume = find_resume(config, out_dir)
    start_epoch = resume[0] if resume else 0
    if start_epoch >= config.epochs:
        paths = existing_checkpoints(config, out_dir, config.epochs)
        console.print(f"train: {out_dir} already holds epoch {start_epoch}; nothing to do")
        return paths
    check_output_dir(out_dir, what=f"--out {out_dir}", need_bytes=_need_bytes(out_dir, start_epoch))
    started = time.perf_counter()
    session = Session(config, device=device, pipeline=pipeline)
    try:
        if resume:
            load_state(session, state_path(out_dir, start_epoch), name=str(out_dir))
        prior_wall = float(resume[1].get("wall_time_total_s", 0.0)) if resume else 0.0
        written = _run_epochs(
            session,
            out_dir=out_dir,
            start_epoch=start_epoch,
            started=started,
            prior_wall=prior_wall,
            on_epoch_end=on_epoch_end,
        )
    finally:
        session.close()
    elapsed = time.perf_counter() - started
    names = ", ".join(p.stem for p in written) or "none"
    console.print(
        f"train: {config.adapter.algo} on {session.dataset_name} ({session.num_images} images): "
        f"{session.steps - session.steps_at_start} steps in {elapsed:.1f} s, final loss "
        f"{session.last_loss:.4f}, checkpoints {names} → {out_dir}"
        + (f" (resumed from epoch {start_epoch})" if resume else "")
    )
    return existing_checkpoints(config, out_dir, config.epochs)


def _need_bytes(out_dir: Path, last_epoch: int) -> int:
    """Free space one more checkpoint needs, with a 2× margin over the last one's files."""
    if not last_epoch:
        return FIRST_CHECKPOINT_BYTES
    files = (checkpoint_path(out_dir, last_epoch), state_path(out_dir, last_epoch))
    return 2 * sum(p.stat().st_size for p in files)


def _run_epochs(
    session: Any,
    *,
    out_dir: Path,
    start_epoch: int,
    started: float,
    prior_wall: float,
    on_epoch_end: Callable[[int], None] | None,
) -> list[Path]:
    config = session.config
    written: list[Path] = []
    remaining = (config.epochs - start_epoch) * session.steps_per_epoch
    with progress_bar() as bar:
        task = bar.add_task("train", total=remaining, info="")
        tick = time.perf_counter()
        for epoch in range(start_epoch + 1, config.epochs + 1):
            for batch in session.epoch_batches():
                loss = session.step(batch)
                now = time.perf_counter()
                rate = 1.0 / max(now - tick, 1e-9)
                tick = now
                bar.update(task, advance=1, info=f"epoch {epoch} loss {loss:.4f} {rate:.2f} it/s")
            if epoch in config.save_epochs():
                wall = prior_wall + time.perf_counter() - started
                written.append(_save_checkpoint(session, out_dir=out_dir, epoch=epoch, wall=wall))
            if on_epoch_end is not None:
                on_epoch_end(epoch)
    return written


def _save_checkpoint(session: Any, *, out_dir: Path, epoch: int, wall: float) -> Path:
    """Adapter file, resume state and run record, all or nothing.

    The three are written under temporary names and renamed into place only once all three are
    on disk (the record last: it marks the checkpoint complete), so a full disk or a crash never
    leaves an adapter file without its state and record; resuming then starts from the previous
    complete checkpoint. A full disk is BadInput naming the out folder.
    """
    final = [checkpoint_path(out_dir, epoch), state_path(out_dir, epoch), record_path(out_dir, epoch)]
    temps = [path.with_name(f".{path.name}.partial") for path in final]
    placed: list[Path] = []
    try:
        session.net.save(temps[0], metadata=_checkpoint_metadata(session, epoch))
        save_state(session, temps[1], epoch=epoch)
        atomic_write_json(temps[2], _record(session, temps[0], temps[1], epoch=epoch, wall=wall))
        tool_files = getattr(session.net, "tool_files", None)  # e.g. one file per TI concept
        if tool_files is not None:
            tool_files(final[0], _checkpoint_metadata(session, epoch))
        for tmp, path in zip(temps, final, strict=True):
            os.replace(tmp, path)
            placed.append(path)
    except BaseException as exc:
        for path in [*temps, *placed]:
            path.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            raise BadInput(
                f"--out {out_dir}: disk full while saving epoch {epoch} ({exc.strerror}); "
                "free some space and rerun to resume"
            ) from None
        raise
    _drop_older_states(out_dir, epoch)
    return final[0]


def _drop_older_states(out_dir: Path, epoch: int) -> None:
    """Resume states of earlier epochs: nothing reads them once a later checkpoint is complete
    (resuming starts from the last one), and each is ~3× its adapter file (parameters + Adam)."""
    for path in out_dir.glob("ckpt-e*.state.safetensors"):
        match = re.match(r"^ckpt-e(\d{3,})\.state\.safetensors$", path.name)
        if match and int(match[1]) < epoch:
            path.unlink(missing_ok=True)


def _checkpoint_metadata(session: Any, epoch: int) -> dict[str, str]:
    config = session.config
    return {
        "base_model": config.model,
        "seed": str(config.seed),
        "epoch": str(epoch),
        "steps": str(session.steps),
        "dataset": session.dataset_name,
        "caption_strategy": config.captions.strategy,
    }


def _record(session: Any, ckpt: Path, state: Path, *, epoch: int, wall: float) -> dict[str, Any]:
    config = session.config
    memory, memory_kind = peak_memory(session.device)
    return {
        "config": _resolved(config),
        "seed": config.seed,
        "epoch": epoch,
        "steps": session.steps,
        "epoch_mean_loss": session.epoch_mean_loss(),
        # The model family and its objective (lyco_bench.families): what the loss above means.
        "family": session.family.name,
        "objective": session.prediction_type,
        "library_versions": library_versions(),
        "git_commit": git_commit(),
        "device": str(session.device),
        "device_name": device_name(str(session.device)),
        "wall_time_total_s": round(wall, 3),
        "peak_memory_bytes": memory,
        "peak_memory_kind": memory_kind,
        "trainable_params": session.net.num_trainable(),
        "file_bytes": ckpt.stat().st_size,
        "dataset": {"name": session.dataset_name, "version": session.dataset_version},
        "images": session.num_images,
        "steps_per_epoch": session.steps_per_epoch,
        "latents_encoded": session.cache.encoded,
        "latents_cached": session.cache.hits,
        "file_sha256": sha256_file(ckpt),
        # The resume state's size and hash: resuming checks it (find_resume).
        "state_bytes": state.stat().st_size,
        "state_sha256": sha256_file(state),
    }


def _cmd_train(args: argparse.Namespace) -> int:
    config = load_config(RunConfig, args.config, args.overrides)
    train(config, Path(args.out))
    return 0


def keys_help() -> str:
    """Every configuration key with its default and first docstring line, for ``--help``."""
    lines = ["configuration keys (defaults are the paper's unless noted):"]
    defaults = RunConfig(model="-", dataset="-").model_dump(mode="json")
    for name, field in RunConfig.model_fields.items():
        value = "(required)" if field.is_required() else json.dumps(defaults[name])
        if name == "adapter":
            value = (
                "{algo, dim, alpha, factor, preset, include, exclude, …} (lyco_bench.adapters.AdapterSpec)"
            )
        doc = (field.description or "").strip().splitlines()
        lines.append(f"  {name}: {value}" + (f"\n      {doc[0]}" if doc else ""))
    return "\n".join(lines)


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train one configuration and save adapter checkpoints",
        description=(
            "Train one run configuration (YAML, see lyco_bench.training.RunConfig for every key and "
            "its paper default) and save ckpt-eNNN.safetensors (+ .json run record, + resume state) "
            "at the checkpoint epochs. Rerunning into the same --out resumes from the last complete "
            "checkpoint. Example: lyco-bench train run.yaml adapter.algo=loha adapter.dim=4 "
            "adapter.alpha=2 seed=24 --out runs/loha-24"
        ),
        epilog=keys_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", help="run configuration (YAML)")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="overrides, e.g. lr=1e-4 adapter.dim=16"
    )
    parser.add_argument("--out", required=True, help="output folder for checkpoints and run records")
    parser.set_defaults(func=_cmd_train, positional_overrides=True)
