"""data.buckets: bucket lists on fixed sizes, assignment, resize + crop, batching by bucket."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from lyco_bench.data import assign_bucket, bucket_batches, image_tensor, make_buckets, resize_to_bucket
from lyco_bench.errors import BadInput

PAPER_BUCKETS = [
    (320, 704),
    (320, 768),
    (384, 640),
    (448, 576),
    (512, 512),
    (576, 448),
    (640, 384),
    (704, 320),
    (768, 320),
]


def test_paper_buckets():
    # By hand, 512² = 262144: w=320 → 262144/320 = 819.2 → 768; w=384 → 682.7 → 640; w=448 → 585.1 → 576;
    # w=704 → 372.4 → 320; w=768 → 341.3 → 320; w=832 → 315 → 256 < 320, dropped.
    assert make_buckets() == PAPER_BUCKETS
    assert make_buckets(512, min_size=320, max_size=960, step=64) == PAPER_BUCKETS
    assert all(w * h <= 512 * 512 and w % 64 == 0 and h % 64 == 0 for w, h in PAPER_BUCKETS)


def test_small_buckets():
    # 64² = 4096: w=32 → 128; w=48 → 85.3 → 80; w=80 → 51.2 → 48; w=96 → 42.7 → 32; w=112, 128 → 32.
    assert make_buckets(64, min_size=32, max_size=128, step=16) == [
        (32, 96),
        (32, 112),
        (32, 128),
        (48, 80),
        (64, 64),
        (80, 48),
        (96, 32),
        (112, 32),
        (128, 32),
    ]
    assert make_buckets(64, min_size=64, max_size=64, step=16) == [(64, 64)]


def test_bucket_settings_checked():
    with pytest.raises(BadInput, match="bucket step 12: must be a positive multiple of 8"):
        make_buckets(64, min_size=32, max_size=128, step=12)
    with pytest.raises(BadInput, match="min_size"):
        make_buckets(512, min_size=600, max_size=960, step=64)


def test_assign_bucket():
    assert assign_bucket(512, 512, PAPER_BUCKETS) == (512, 512)
    assert assign_bucket(3000, 3000, PAPER_BUCKETS) == (512, 512)
    # 16:9: log(1.778) = 0.575; 640x384 → log(1.667) = 0.511 (gap 0.064), 704x320 → log(2.2) = 0.788.
    assert assign_bucket(1920, 1080, PAPER_BUCKETS) == (640, 384)
    assert assign_bucket(1080, 1920, PAPER_BUCKETS) == (384, 640)
    assert assign_bucket(768, 320, PAPER_BUCKETS) == (768, 320)
    assert assign_bucket(10, 10, [(32, 32), (64, 64), (96, 32)]) == (64, 64)  # ties → larger
    with pytest.raises(BadInput):
        assign_bucket(0, 10, PAPER_BUCKETS)


def _thirds(width: int, height: int):
    """An image whose left, middle and right thirds are red, green and blue."""
    from PIL import Image

    image = Image.new("RGB", (width, height), (0, 255, 0))
    image.paste((255, 0, 0), (0, 0, width // 3, height))
    image.paste((0, 0, 255), (width - width // 3, 0, width, height))
    return image


def test_resize_and_center_crop():
    # 120x60 into 64x64: scale max(64/120, 64/60) = 1.0667 → 128x64, crop x 32..96 = source x 30..90:
    # red (0..40) on the left edge, green in the middle, blue (80..120) on the right edge.
    out = resize_to_bucket(_thirds(120, 60), (64, 64))
    assert out.size == (64, 64)
    assert out.getpixel((0, 32)) == (255, 0, 0)
    assert out.getpixel((32, 32)) == (0, 255, 0)
    assert out.getpixel((63, 32)) == (0, 0, 255)
    # Source x 30..40 is red: 10 source px → 10.67 output columns.
    red_columns = sum(out.getpixel((x, 32))[0] > 128 for x in range(64))
    assert red_columns in (10, 11)
    # Same aspect ratio: a plain resize, nothing cropped.
    same = resize_to_bucket(_thirds(96, 48), (64, 32))
    assert (
        same.size == (64, 32)
        and same.getpixel((0, 0)) == (255, 0, 0)
        and same.getpixel((63, 0)) == (0, 0, 255)
    )


def test_image_tensor(tmp_path):
    path = tmp_path / "thirds.png"
    _thirds(90, 60).save(path)
    pixels = image_tensor(path, (48, 32))
    assert pixels.shape == (3, 32, 48) and pixels.dtype == torch.float32
    torch.testing.assert_close(pixels[:, 16, 0], torch.tensor([1.0, -1.0, -1.0]))  # red → (1, -1, -1)
    torch.testing.assert_close(pixels[:, 16, 24], torch.tensor([-1.0, 1.0, -1.0]))
    torch.testing.assert_close(image_tensor(path, (48, 32), flip=True), pixels.flip(-1))


def test_bucket_batches():
    buckets = [(64, 64), (64, 64), (80, 48), (64, 64), (80, 48), (48, 80)]
    repeats = [1, 2, 1, 1, 3, 1]
    batches = bucket_batches(buckets, 2, torch.Generator().manual_seed(0), repeats=repeats)
    # Every batch holds one bucket; every item appears `repeats` times; 4 + 4 + 1 entries → 2 + 2 + 1 batches.
    assert all(len({buckets[i] for i in batch}) == 1 for batch in batches)
    assert Counter(i for batch in batches for i in batch) == Counter({0: 1, 1: 2, 2: 1, 3: 1, 4: 3, 5: 1})
    assert sorted(len(b) for b in batches) == [1, 2, 2, 2, 2]
    again = bucket_batches(buckets, 2, torch.Generator().manual_seed(0), repeats=repeats)
    assert again == batches
    orders = {
        str(bucket_batches(buckets, 2, torch.Generator().manual_seed(s), repeats=repeats)) for s in range(8)
    }
    assert len(orders) > 1
    assert bucket_batches(buckets, 8, torch.Generator().manual_seed(0))  # default repeats of 1
    with pytest.raises(BadInput, match="batch_size 0"):
        bucket_batches(buckets, 0, torch.Generator())


def test_exif_orientation(tmp_path):
    """A photo stored landscape with EXIF orientation 6 (rotate 90°) is portrait everywhere."""
    from PIL import Image

    from lyco_bench.data import image_size

    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    _thirds(90, 60).save(path, exif=exif, quality=95)
    assert image_size(path) == (60, 90)
    # Orientation 6 displays the stored image turned 90° clockwise: its left (red) edge becomes the top.
    pixels = image_tensor(path, (32, 48))  # (3, 48, 32)
    assert pixels.shape == (3, 48, 32)
    assert pixels[0, 2, 16] > 0.8 and pixels[2, 45, 16] > 0.8  # red on top, blue at the bottom
