"""Plumbing shared by every stage: atomic writes, hashing, run metadata, progress bars."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it over ``path``.

    A reader never sees a half-written file: either the old content or the complete new one.
    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (``kill``, a job scheduler stopping the command) raises KeyboardInterrupt while
    inside, so that ``atomic_folder`` / ``atomic_path`` remove their temporary files as on Ctrl-C
    (Python's default SIGTERM ends the process with no cleanup). Main thread only; elsewhere a
    no-op, as only the main thread may set handlers."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, *, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; on success rename it to ``path``: a reader never
    sees half a folder. ``path`` must be absent or an empty folder, unless ``replace``: then a
    folder already there (a stale build) is moved aside and removed once the new one is in place.
    On an exception the temporary folder is removed and ``path`` is left untouched."""
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary folder
    old = None
    try:
        yield tmp
        if replace and path.is_dir() and any(path.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.replace(path, old / path.name)
        elif path.exists():
            path.rmdir()
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and (old / path.name).exists() and not path.exists():
            os.replace(old / path.name, path)  # the previous build stays in place
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def stable_hash(obj: Any, length: int = 10) -> str:
    """Short hash of a JSON-serializable object, independent of dict order."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return sha256_bytes(text.encode())[:length]


def library_versions() -> dict[str, str]:
    from importlib import metadata

    names = ["torch", "diffusers", "transformers", "open_clip_torch", "safetensors", "lyco-bench"]
    versions = {"python": platform.python_version()}
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def git_commit() -> str | None:
    """The commit of the lyco-bench checkout, or None outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def device_name(device: str | None = None) -> str:
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return platform.processor() or platform.machine() or "cpu"


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cuda_fast_math() -> None:
    """TF32 tensor-core matmuls and convolutions for what stays float32 on CUDA (10 mantissa
    bits in the products, float32 accumulation; 10 mantissa bits are ~1e-3 relative, below what
    fp16/bf16 sampling and bf16 training keep anyway). Process-wide; a no-op without CUDA."""
    import torch

    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def progress_bar(*, transient: bool = False, extra: str = "") -> Progress:
    """A rich progress bar on stderr: description, bar, n/total, elapsed, ETA and a free text field.

    Use ``with progress_bar() as bar: task = bar.add_task("train", total=n, info="")`` and
    ``bar.update(task, advance=1, info=f"loss {loss:.4f}")``.
    """
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}" + extra),
        console=console,
        transient=transient,
        disable=os.environ.get("LYCO_BENCH_NO_PROGRESS") == "1",
    )


def free_bytes(path: str | os.PathLike) -> int:
    """Free bytes on the filesystem holding ``path`` (or its nearest existing ancestor)."""
    import shutil

    return shutil.disk_usage(_existing_ancestor(Path(path))).free


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_dir(path: str | os.PathLike, *, what: str, need_bytes: int = 0) -> Path:
    """Check, before any work, that ``path`` can become (or is) a writable folder.

    BadInput naming ``what`` (e.g. ``--out runs/x``) when ``path`` or one of its parents is a
    file, when the folder that would hold it is not writable, or when the disk has fewer than
    ``need_bytes`` free. Writes nothing: writability is probed with ``os.access`` plus a
    temporary file that is removed at once.
    """
    from lyco_bench.errors import BadInput

    path = Path(path)
    for parent in [path, *path.absolute().parents]:
        if parent.exists() and not parent.is_dir():
            raise BadInput(f"{what}: {parent} is a file, not a folder")
    anchor = _existing_ancestor(path)
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise BadInput(f"{what}: {anchor} is not writable")
    try:
        fd, probe = tempfile.mkstemp(prefix=".lyco-bench-probe-", dir=anchor)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise BadInput(f"{what}: cannot write in {anchor} ({exc.strerror or exc})") from None
    if need_bytes > 0:
        free = free_bytes(anchor)
        if free < need_bytes:
            raise BadInput(f"{what}: {_size(free)} free on the disk of {anchor}, {_size(need_bytes)} needed")
    return path


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def pickle_refusal(exc: BaseException) -> str:
    """The one-line refusal of a file ``torch.load(weights_only=True)`` would not read (it pickles
    objects other than tensors), naming the file from the refused call's frame. torch's own message
    advises ``weights_only=False``, which must never reach the user."""
    tb, found = exc.__traceback__, "a file"
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name == "load" and "torch" in frame.f_code.co_filename:
            f = frame.f_locals.get("f")
            found = str(f) if isinstance(f, str | os.PathLike) else getattr(f, "name", found)
        tb = tb.tb_next
    return f"{found}: refused: it holds pickled objects other than tensors; convert it to .safetensors"
