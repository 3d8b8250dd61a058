"""Image grids for the report: side by side, the same prompts and image seeds in every column.

- :func:`write_grids`: one grid per generation folder and prompt class, the base model's images of
  the same prompts and seeds underneath (``lyco-bench report --manifest KEY=PATH``);
- :func:`variant_grids`: one grid per group (a configuration, …) and prompt class, one row per
  value of any columns of an image-set table — checkpoint × seed (``epoch``, ``seed``), a
  multiplier sweep (``multiplier``), an evaluation base model … — each row named at its left, and
  a last row without adapter: the base model's images of the same prompts and seeds.

Cells match on MATCH_KEYS (prompt class, category, concept, subclass, prompt index, image
index): an image the store no longer keeps, or without a twin, is a grey cell.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lyco_bench.analysis.plots import slug
from lyco_bench.errors import BadInput
from lyco_bench.utils import atomic_path

THUMB = 128  # grid cell size in pixels
LABEL_WIDTH = 136  # the row names' strip at the left of a variant grid, in pixels
MATCH_KEYS = ["prompt_class", "category", "concept", "subclass", "prompt_index", "image_index"]
GREY = (235, 235, 235)
BASE_ROW = "no adapter (base)"


def _why(e: Exception) -> str:
    """The first line of an exception's message (a reader's errors span lines), else its type."""
    lines = str(e).strip().splitlines()
    return lines[0][:200] if lines else type(e).__name__


def _read_manifest(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise BadInput(f"{path}: generation manifest not found")
    try:
        manifest = pd.read_parquet(path)
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise BadInput(f"{path}: not a readable manifest.parquet ({_why(e)})") from None
    missing = [c for c in ("file", "prompt_class") if c not in manifest]
    if missing:
        raise BadInput(f"{path}: manifest lacks columns {missing}")
    for col in MATCH_KEYS:
        if col not in manifest:
            manifest[col] = "" if col not in ("prompt_index", "image_index") else 0
    manifest[["category", "concept", "subclass"]] = manifest[["category", "concept", "subclass"]].fillna("")
    if not all(isinstance(f, str) and f for f in manifest["file"]):
        raise BadInput(f"{path}: manifest column file holds a value that is not a file name")
    manifest["path"] = [path.parent / f for f in manifest["file"]]
    return manifest.sort_values(MATCH_KEYS, kind="mergesort").reset_index(drop=True)


def _thumb(path: Path):
    from PIL import Image, ImageOps

    from lyco_bench.data.images import open_image_checked

    with open_image_checked(path) as img:
        img = ImageOps.contain(img.convert("RGB"), (THUMB, THUMB))  # up- or down-scaled to fit
        cell = Image.new("RGB", (THUMB, THUMB), "white")
        cell.paste(img, ((THUMB - img.width) // 2, (THUMB - img.height) // 2))
    return cell


def make_grid(
    rows: Sequence[Sequence[Path | None]], path: Path, *, labels: Sequence[str] | None = None
) -> Path:
    """Paste thumbnails into a grid PNG (rows × columns; None leaves a grey cell); ``labels``: a
    name per row, written in a strip of LABEL_WIDTH pixels at the left."""
    from PIL import Image, ImageDraw, ImageFont

    n_cols = max(len(r) for r in rows)
    left = LABEL_WIDTH if labels is not None else 0
    grid = Image.new("RGB", (left + n_cols * THUMB, len(rows) * THUMB), GREY)
    if labels is not None:
        draw, font = ImageDraw.Draw(grid), ImageFont.load_default(size=13)
        draw.rectangle((0, 0, left - 1, len(rows) * THUMB - 1), fill="white")
        for i, text in enumerate(labels):
            draw.multiline_text((4, i * THUMB + 4), _wrap(text), fill="black", font=font, spacing=2)
    for i, row in enumerate(rows):
        for j, image_path in enumerate(row):
            if image_path is not None:
                grid.paste(_thumb(image_path), (left + j * THUMB, i * THUMB))
    with atomic_path(path) as tmp:
        grid.save(tmp, format="PNG")
    return path


def grid_rows_of(manifest: pd.DataFrame, images_per_grid: int) -> list[tuple[str, pd.DataFrame]]:
    """(prompt class, the manifest rows drawn in its grid): the first images in MATCH_KEYS order."""
    ordered = manifest.sort_values(MATCH_KEYS, kind="mergesort")
    return [(str(pc), rows.head(images_per_grid)) for pc, rows in ordered.groupby("prompt_class", sort=True)]


def _present(path: Path | None) -> Path | None:
    """An image removed after scoring (a study's ``images: grids|none``) is drawn as a grey cell."""
    return path if path is not None and Path(path).is_file() else None


def read_manifests(image_manifests: Mapping[str, Path | pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Each KEY's manifest read and checked (BadInput naming the file), in key order."""
    return {
        key: p if isinstance(p, pd.DataFrame) else _read_manifest(Path(p))
        for key, p in sorted(image_manifests.items())
    }


def write_grids(
    image_manifests: Mapping[str, Path | pd.DataFrame],
    out_dir: Path,
    *,
    base_key: str = "base",
    images_per_grid: int = 8,
) -> list[dict[str, str]]:
    """One grid per (key, prompt class); returns [{"src", "caption"}] with paths relative to out_dir.
    A value is a manifest.parquet path, or its table as :func:`read_manifests` returns it."""
    manifests = read_manifests(image_manifests)
    base = manifests.pop(base_key, None)
    base_index = (
        {tuple(r[k] for k in MATCH_KEYS): r["path"] for _, r in base.iterrows()} if base is not None else {}
    )
    grids = []
    for key, manifest in manifests.items():
        for prompt_class, chosen in grid_rows_of(manifest, images_per_grid):
            top = [_present(p) for p in chosen["path"]]
            grid_rows = [top]
            if base is not None:
                grid_rows.append(
                    [_present(base_index.get(tuple(r[k] for k in MATCH_KEYS))) for _, r in chosen.iterrows()]
                )
            rel = Path("grids") / f"{slug(key)}__{slug(str(prompt_class))}.png"
            make_grid(grid_rows, out_dir / rel)
            grids.append({"src": rel.as_posix(), "caption": f"{key} · <{prompt_class}>"})
    return grids


def _wrap(text: str, width: int = 17) -> str:
    """A row name in lines that fit the label strip (at word breaks where it can)."""
    import textwrap

    return textwrap.fill(text, width=width) or text


def _value_text(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def row_name(columns: Sequence[str], values: Sequence[object]) -> str:
    """``epoch=10, seed=1`` (``multiplier=0.5``): a grid row's name."""
    return ", ".join(f"{c}={_value_text(v)}" for c, v in zip(columns, values, strict=True))


def _index(manifest: pd.DataFrame) -> dict[tuple, Path]:
    return {tuple(r[k] for k in MATCH_KEYS): r["path"] for _, r in manifest.iterrows()}


def variant_grids(
    image_sets: pd.DataFrame,
    columns: Sequence[str],
    out_dir: Path,
    *,
    base: Path | pd.DataFrame | None = None,
    group_by: Sequence[str] = ("config",),
    images_per_row: int = 8,
) -> list[dict[str, str]]:
    """One grid per ``group_by`` group and prompt class of ``image_sets`` (one row per generation
    folder: the ``group_by`` and ``columns`` values and ``manifest``, a manifest.parquet path or
    its table): one grid row per distinct ``columns`` value, sorted, on the prompts and image
    seeds of the first row's first ``images_per_row`` images; with ``base``, a last row of the base
    model's images of the same prompts and seeds. Returns [{"src", "caption"}] relative to out_dir."""
    missing = [c for c in (*group_by, *columns, "manifest") if c not in image_sets]
    if missing:
        raise BadInput(
            f"image sets: no column {', '.join(map(repr, missing))} (columns: {list(image_sets.columns)})"
        )
    base_index = _index(read_manifests({"base": base})["base"]) if base is not None else None
    grids = []
    ordered = image_sets.sort_values([*group_by, *columns], kind="mergesort")
    for group, sets in ordered.groupby(list(group_by), sort=True):
        group = group if isinstance(group, tuple) else (group,)
        manifests = [m if isinstance(m, pd.DataFrame) else _read_manifest(Path(m)) for m in sets["manifest"]]
        names = [row_name(columns, [r[c] for c in columns]) for _, r in sets.iterrows()]
        indexes = [_index(m) for m in manifests]
        for prompt_class, chosen in grid_rows_of(manifests[0], images_per_row):
            keys = [tuple(r[k] for k in MATCH_KEYS) for _, r in chosen.iterrows()]
            rows = [[_present(index.get(k)) for k in keys] for index in indexes]
            labels = list(names)
            if base_index is not None:
                rows.append([_present(base_index.get(k)) for k in keys])
                # a study generates base images for its `base_classes` only: say so, not just grey
                labels.append(
                    BASE_ROW if any(rows[-1]) else f"{BASE_ROW}: not generated for <{prompt_class}>"
                )
            stem = "__".join(
                [*(slug(_value_text(g)) for g in group), slug("-".join(columns)), slug(prompt_class)]
            )
            rel = Path("grids") / f"{stem}.png"
            make_grid(rows, out_dir / rel, labels=labels)
            what = " × ".join(columns)
            grids.append(
                {
                    "src": rel.as_posix(),
                    "caption": f"{' '.join(map(_value_text, group))} · {what} · <{prompt_class}>",
                }
            )
    return grids


@dataclass(frozen=True)
class GridSet:
    """What :func:`variant_grids` draws: ``image_sets`` (group_by and columns values, manifest), one
    grid row per ``columns`` value within each ``group_by`` group."""

    image_sets: pd.DataFrame
    columns: tuple[str, ...]
    group_by: tuple[str, ...] = ("config",)

    def loaded(self) -> GridSet:
        """The same with every manifest read and checked (BadInput naming the file or column):
        a report checks its inputs before it writes anything."""
        missing = [c for c in (*self.group_by, *self.columns, "manifest") if c not in self.image_sets]
        if missing:
            raise BadInput(f"image sets: no column {', '.join(map(repr, missing))}")
        sets = self.image_sets.copy()
        sets["manifest"] = [
            m if isinstance(m, pd.DataFrame) else _read_manifest(Path(m)) for m in sets["manifest"]
        ]
        return GridSet(sets, tuple(self.columns), tuple(self.group_by))
