"""HPS v2.1 encodes under ``encoders.precision`` like the other encoders: a half precision enters
its cache id (float32 ids unchanged) and its features stay close to float32's."""

from __future__ import annotations

import torch
from PIL import Image

from lyco_bench.metrics.encoders import ENCODERS
from lyco_bench.metrics.encoders.hps import HpsEncoder, hps_id, make_tiny_hps
from lyco_bench.metrics.features import EncoderSettings


def test_hps_encodes_under_the_precision_setting(tmp_path):
    folder, checkpoint = make_tiny_hps(tmp_path, seed=0)
    images = [Image.new("RGB", (40, 30), (200, 40, 90)), Image.new("RGB", (24, 24), (10, 220, 30))]
    full = HpsEncoder(str(folder), str(checkpoint), device="cpu", precision="float32")
    half = HpsEncoder(str(folder), str(checkpoint), device="cpu", precision="bfloat16")
    assert full.id == hps_id(str(folder), str(checkpoint))  # float32: the id as before
    assert half.id == full.id + ":bfloat16"
    a, b = full.encode_images(images), half.encode_images(images)
    assert a.dtype == b.dtype == torch.float32 and not torch.equal(a, b)
    assert torch.nn.functional.cosine_similarity(a, b).min() > 0.99
    texts = full.encode_texts(["a cat"]), half.encode_texts(["a cat"])
    assert torch.nn.functional.cosine_similarity(*texts).min() > 0.99
    settings = EncoderSettings(hps=str(folder), hps_checkpoint=str(checkpoint), precision="bfloat16")
    assert ENCODERS["hps"].identity(settings) == half.id
