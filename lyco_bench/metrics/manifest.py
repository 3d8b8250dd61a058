"""Reading a generation folder for scoring: ``manifest.parquet`` checked against the files on disk.

The manifest is written by ``lyco-bench generate`` (columns in docs/internals.md). Scoring needs
it to match the folder exactly: a listed file that is absent, or an image that is not listed,
is bad input naming the file, raised before anything is computed or written.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lyco_bench.errors import BadInput

MANIFEST = "manifest.parquet"
REQUIRED_COLUMNS = (
    "file", "prompt", "clip_text", "prompt_class", "category", "concept", "subclass", "prompt_index", "seed",
    "prompt_set_version",
)  # fmt: skip
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def read_manifest(images_dir: str | Path) -> pd.DataFrame:
    """The manifest of ``images_dir`` with an absolute ``path`` column, sorted by ``file``."""
    images_dir = Path(images_dir)
    path = images_dir / MANIFEST
    if not images_dir.is_dir():
        raise BadInput(f"{images_dir}: no such image folder")
    if not path.is_file():
        raise BadInput(f"{path}: no manifest (generate the images with `lyco-bench generate`)")
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises many types for a damaged file
        raise BadInput(f"{path}: unreadable manifest ({type(exc).__name__})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise BadInput(f"{path}: no column {missing[0]!r}")
    if df.empty:
        raise BadInput(f"{path}: lists no images")
    if df["file"].duplicated().any():
        raise BadInput(f"{path}: lists {df.loc[df['file'].duplicated(), 'file'].iloc[0]} twice")
    listed = {Path(f).as_posix() for f in df["file"].astype(str)}
    for file in sorted(listed):
        if not (images_dir / file).is_file():
            raise BadInput(f"{path}: lists {file}, which is missing from {images_dir}")
    for image in sorted(images_dir.rglob("*")):
        rel = image.relative_to(images_dir).as_posix()
        if image.suffix.lower() in IMAGE_SUFFIXES and not image.name.startswith(".") and rel not in listed:
            raise BadInput(f"{image}: image not listed in {path}")
    df = df.copy()
    for col in ("category", "concept", "subclass", "clip_text", "prompt", "prompt_class"):
        df[col] = df[col].fillna("").astype(str)
    df["prompt_set_version"] = df["prompt_set_version"].fillna("").astype(str)
    df["path"] = [str(images_dir / f) for f in df["file"]]
    return df.sort_values("file", kind="stable").reset_index(drop=True)


def member_keys(row: pd.Series) -> list[str]:
    """Dataset keys ``category/concept[/subclass]`` of the concepts in one image.

    Uses the manifest's ``concepts`` column ("key+key" for ``<combine>``) where present; else
    derives them from ``category``/``concept`` ("a+b" with category "c" or "c1+c2").
    """
    concepts = str(row.get("concepts", "") or "")
    if concepts:
        return concepts.split("+")
    if not row["concept"]:
        return []
    names = row["concept"].split("+")
    cats = row["category"].split("+")
    if len(cats) == 1:
        cats = cats * len(names)
    if len(cats) != len(names):
        raise BadInput(
            f"manifest row {row['file']}: category {row['category']!r} does not fit concept {row['concept']!r}"
        )
    keys = [f"{c}/{n}" for c, n in zip(cats, names, strict=True)]
    if len(keys) == 1 and row["subclass"]:
        keys[0] += f"/{row['subclass']}"
    return keys


def prompt_groups(df: pd.DataFrame) -> list[str]:
    """The per-prompt group of each row (``group`` column, else subclass + prompt index)."""
    if "group" in df.columns:
        return df["group"].fillna("").astype(str).tolist()
    return (df["subclass"] + "/" + df["prompt_index"].astype(str) + "/" + df["prompt"]).tolist()
