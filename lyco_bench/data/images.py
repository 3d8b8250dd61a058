"""Opening a user's image safely: every stage that reads dataset or generated images goes through
:func:`open_image_checked`, so a corrupt file or a decompression bomb is one line naming the file.

Pillow refuses images over 2× ``Image.MAX_IMAGE_PIXELS`` but only warns between 1× and 2×, and
would then decode them: a PNG of a few hundred bytes claiming 15000×15000 pixels asks for 675 MB
when loaded. Here the warning is an error too, so the limit is Pillow's own, applied as a limit.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

from lyco_bench.errors import BadInput

# What Pillow raises for a file it cannot open or decode (UnidentifiedImageError is an OSError).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError)


@contextlib.contextmanager
def open_image_checked(path: str | Path) -> Iterator:
    """``with open_image_checked(path) as img:`` — ``PIL.Image.open`` for an image a user handed in.

    BadInput ``<path>: …`` when the file is missing, is not an image, is over Pillow's
    decompression-bomb limit (already past 1× ``Image.MAX_IMAGE_PIXELS``), or fails to decode
    inside the ``with`` block (``img.load()``, ``convert``, …). The file is closed on exit.
    """
    path = Path(path)
    img = _open(path)
    with img:
        try:
            yield img
        except FileNotFoundError:
            raise  # not the image: something the block itself opened
        except DECODE_ERRORS as exc:
            raise BadInput(f"{path}: unreadable image ({_first_line(exc)})") from None


def _open(path: Path):
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(path)
    except FileNotFoundError:
        raise BadInput(f"{path}: no such image file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
        raise BadInput(
            f"{path}: image too large ({pixels}; Pillow's decompression-bomb limit "
            f"Image.MAX_IMAGE_PIXELS is {Image.MAX_IMAGE_PIXELS:,})"
        ) from None
    except DECODE_ERRORS as exc:
        raise BadInput(f"{path}: unreadable image ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def image_size_checked(path: str | Path) -> tuple[int, int]:
    """(width, height) from the header only, with the checks of :func:`open_image_checked`."""
    with open_image_checked(path) as img:
        return img.size


__all__ = ["DECODE_ERRORS", "image_size_checked", "open_image_checked"]
