"""The ``paper`` evaluation profile against the paper's evaluation code's formulas, worked by hand:
VGG Grams after the in-place ReLUs, the short-side truncation, resize-before-RGB, torch.hub DINOv2's
position-embedding interpolation, subclass-then-concept means, ``<alter>`` Vendi blocks, identity."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch.testing import assert_close

from lyco_bench.metrics import encoders as enc
from lyco_bench.metrics import profiles
from lyco_bench.metrics.diversity import _file_order, vendi_blocks
from lyco_bench.metrics.features import EncoderPool, EncoderSettings
from tests.helpers import noise_image, tiny_encoder_settings


@pytest.fixture(scope="session")
def tiny_encoders(tmp_path_factory) -> dict:
    return tiny_encoder_settings(tmp_path_factory)


# --- VGG ----------------------------------------------------------------------------------------
def _paper_grams(vgg_file: str, image: Image.Image) -> list[torch.Tensor]:
    """The paper's VGG.forward + VggGram.encode: torchvision's trunk with its in-place ReLUs,
    the conv outputs kept as they are when the loop ends, G = (F/√(CHW))(F/√(CHW))ᵀ flattened."""
    from safetensors.torch import load_file
    from torchvision.models.vgg import make_layers

    from lyco_bench.metrics.tiny import TINY_VGG_WIDTHS

    w = TINY_VGG_WIDTHS
    cfg = [w[0], w[0], "M", w[1], w[1], "M", *[w[2]] * 4, "M", *[w[3]] * 4, "M", *[w[4]] * 4, "M"]
    trunk = make_layers(cfg)[:29]  # torchvision's builder: nn.ReLU(inplace=True) after each conv
    state = {k.removeprefix("features."): v for k, v in load_file(vgg_file).items()}
    trunk.load_state_dict({k: state[k] for k in trunk.state_dict()})
    x = enc._normalize(enc._to_tensor(image.convert("RGB")), enc.IMAGENET_MEAN, enc.IMAGENET_STD)[None]
    kept = []
    with torch.no_grad():
        for i, layer in enumerate(trunk):
            x = layer(x)
            if i in (0, 5, 10, 19, 28):
                kept.append(x)  # the same tensor the next in-place ReLU rectifies
    grams = []
    for f in kept:
        b, c, h, wd = f.shape
        flat = f.view(b, c, h * wd) / np.sqrt(c * h * wd)
        grams.append(torch.bmm(flat, flat.transpose(1, 2)).view(-1))
    return grams


def _sq_dist_full(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return float(sum(((x.double() - y.double()) ** 2).sum() for x, y in zip(a, b, strict=True)))


def test_paper_vgg_grams_are_taken_after_the_in_place_relus(tiny_encoders):
    images = [noise_image(4, (48, 32)), noise_image(5, (32, 32))]  # short side 32: no resampling
    paper = enc.VggGramEncoder(tiny_encoders["vgg"], device="cpu", short_side=32, profile="paper")
    lyco = enc.VggGramEncoder(tiny_encoders["vgg"], device="cpu", short_side=32)
    fp, fl = paper.encode_images(images), lyco.encode_images(images)
    ref = [_paper_grams(tiny_encoders["vgg"], im) for im in images]
    # Packed Grams keep squared distances and norms of the full flattened ones (the style losses).
    assert_close(
        float(((fp[0].double() - fp[1].double()) ** 2).sum()), _sq_dist_full(*ref), rtol=1e-4, atol=0
    )
    assert_close(
        float((fp[0].double() ** 2).sum()), _sq_dist_full(ref[0], [0 * g for g in ref[0]]), rtol=1e-4, atol=0
    )
    # conv5_1 (the last block) is before its ReLU in both; conv1_1–conv4_1 differ.
    from lyco_bench.metrics.tiny import TINY_VGG_WIDTHS

    last = TINY_VGG_WIDTHS[4] * (TINY_VGG_WIDTHS[4] + 1) // 2
    assert_close(fp[:, -last:], fl[:, -last:])
    assert (fp[:, :-last] - fl[:, :-last]).abs().max() > 1e-3
    assert paper.id.endswith(":paper") and not lyco.id.endswith(":paper")


def test_vgg_short_side_truncates_in_the_paper_profile():
    image = Image.new("RGB", (517, 389), (10, 20, 30))
    assert profiles.paper_short_side(image, 224).size == (297, 224)  # int(224·517/389 = 297.7)
    assert profiles.lyco_short_side(image, 224).size == (298, 224)  # rounded
    assert profiles.paper_short_side(image.transpose(Image.Transpose.ROTATE_90), 224).size == (224, 297)


# --- image conversion order -------------------------------------------------------------------
def test_rgba_is_resized_with_premultiplied_alpha_before_rgb():
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[:, :4] = (255, 0, 0, 255)  # opaque red left half
    rgba[:, 4:] = (0, 0, 255, 0)  # fully transparent blue right half
    image = Image.fromarray(rgba, "RGBA")
    paper = np.array(profiles.paper_square(image, mode="resize", size=4))
    lyco = np.asarray(image.convert("RGB").resize((4, 4), Image.BICUBIC))
    # Premultiplied: the transparent pixels weigh nothing, so no blue reaches any pixel; where
    # some alpha remains, un-premultiplying gives back pure red.
    assert paper[..., 2].max() == 0 and lyco[..., 2].max() > 100
    assert (paper[:, :2] == (255, 0, 0)).all()
    # The normalized tensors differ by several units (mean 0, std 1/255 → ×255 per level).
    a = enc.preprocess(image, mode="resize", size=4, mean=(0, 0, 0), std=(1, 1, 1), profile="paper")
    b = enc.preprocess(image, mode="resize", size=4, mean=(0, 0, 0), std=(1, 1, 1))
    assert_close(a, torch.from_numpy(paper).permute(2, 0, 1).float() / 255)
    assert (a - b).abs().max() > 0.4


def test_palette_images_resize_by_nearest_neighbour_before_rgb():
    image = Image.new("P", (2, 2))
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.putdata([0, 1, 1, 0])  # red/blue checkerboard
    for mode in ("resize", "crop", "padding"):
        out = np.asarray(profiles.paper_square(image, mode=mode, size=5)).reshape(-1, 3)
        assert {tuple(p) for p in out} <= {(255, 0, 0), (0, 0, 255)}  # only palette colours
    mixed = np.asarray(image.convert("RGB").resize((5, 5), Image.BICUBIC)).reshape(-1, 3)
    assert len({tuple(p) for p in mixed}) > 2


def test_padding_pads_in_the_image_mode_with_zero():
    image = Image.new("P", (4, 2))
    image.putpalette([9, 8, 7, 200, 100, 50] + [0] * 762)
    image.putdata([1] * 8)
    out = np.asarray(profiles.paper_square(image, mode="padding", size=4))
    # ResizeMaxSize: 4×2 stays 4×2 (scale 1, not square → still padded), pad 1 row above and below
    # with palette index 0 = (9, 8, 7).
    assert (out[[0, 3]] == (9, 8, 7)).all() and (out[1:3] == (200, 100, 50)).all()
    rgb = Image.new("RGB", (6, 6), (50, 60, 70))  # square of another side: resized, no pad
    assert profiles.paper_square(rgb, mode="padding", size=4).size == (4, 4)


# --- DINOv2 position embeddings ---------------------------------------------------------------
def _keys_cubic(x: float, a: float = -0.75) -> float:
    x = abs(x)
    if x <= 1:
        return (a + 2) * x**3 - (a + 3) * x**2 + 1
    return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a if x < 2 else 0.0


def _resample_1d(values: list[float], n_out: int, ratio: float) -> list[float]:
    """Bicubic (Keys, a = −0.75, border clamped) with source x = (i + ½)·ratio − ½ (PyTorch's
    ``align_corners=False``: ratio = 1/scale_factor when one is given, else in/out)."""
    out = []
    for i in range(n_out):
        src = (i + 0.5) * ratio - 0.5
        base = math.floor(src)
        t = src - base
        acc = 0.0
        for k in (-1, 0, 1, 2):
            j = min(max(base + k, 0), len(values) - 1)
            acc += _keys_cubic(t - k) * values[j]
        out.append(acc)
    return out


def test_dinov2_position_embeddings_as_torch_hub_interpolates_them():
    from transformers import Dinov2Config, Dinov2Model

    m, dim, n = 37, 2, 16  # ViT-L/14: 518/14 = 37 positions a side; 224/14 = 16
    model = Dinov2Model(Dinov2Config(hidden_size=4, num_hidden_layers=1, num_attention_heads=1,
                                     patch_size=14, image_size=14 * m, hidden_dropout_prob=0.0))  # fmt: skip
    model.config.hidden_size = dim
    rows = [0.05 * r * r - 0.3 * r for r in range(m)]  # varies along rows only, non-linearly
    grid = torch.tensor(rows, dtype=torch.float32)[:, None, None].expand(m, m, dim).clone()
    grid[..., 1] += 1.0
    cls = torch.tensor([[[7.0, 8.0]]])
    emb = model.embeddings
    emb.position_embeddings = torch.nn.Parameter(torch.cat([cls, grid.reshape(1, m * m, dim)], dim=1))
    tokens = torch.zeros(1, 1 + n * n, dim)
    lyco = emb.interpolate_pos_encoding(tokens, 14 * n, 14 * n)
    profiles.use_hub_interpolation(model)
    paper = emb.interpolate_pos_encoding(tokens, 14 * n, 14 * n)
    for got, ratio in ((paper, m / (n + 0.1)), (lyco, m / n)):
        assert_close(got[0, 0], cls[0, 0])
        want = torch.tensor(_resample_1d(rows, n, ratio))  # per output row
        out = got[0, 1:].reshape(n, n, dim)
        assert_close(out[..., 0], want[:, None].expand(n, n), rtol=1e-5, atol=1e-5)
        assert_close(out[..., 1], want[:, None].expand(n, n) + 1.0, rtol=1e-5, atol=1e-5)
    assert (paper - lyco).abs().max() > 1e-3


def test_dinov2_paper_profile_changes_features_only_when_interpolating(tiny_encoders):
    images = [noise_image(1, (56, 56)), noise_image(2, (70, 42))]
    size = tiny_encoders["dino_image_size"]  # 56: the tiny model's own grid, nothing interpolated
    paper = enc.DinoV2Encoder(tiny_encoders["dino"], device="cpu", image_size=size, profile="paper")
    lyco = enc.DinoV2Encoder(tiny_encoders["dino"], device="cpu", image_size=size)
    assert_close(paper.encode_images(images[:1], "resize"), lyco.encode_images(images[:1], "resize"))
    paper.image_size = lyco.image_size = 42  # 3×3 patches from a 4×4 grid
    assert (paper.encode_images(images, "crop") - lyco.encode_images(images, "crop")).abs().max() > 1e-6


# --- aggregation --------------------------------------------------------------------------------
def test_alter_vendi_blocks_of_ten():
    eye = torch.eye(16)
    feats = torch.cat([eye[:10], eye[:1]])  # a block of 10 orthogonal images, then one image
    assert_close(vendi_blocks(feats, 10), (10.0 + 1.0) / 2)  # Vendi of orthogonal = 10; of one = 1
    same = torch.ones(12, 4)
    assert_close(vendi_blocks(same, 10), 1.0)
    names = ["a/10-1000.png", "a/2-1000.png", "a/2-999.png", "a/1-1000.png"]
    assert sorted(names, key=_file_order) == ["a/1-1000.png", "a/2-999.png", "a/2-1000.png", "a/10-1000.png"]


def test_subclass_then_concept_means():
    base = {"prompt_class": "trigger", "category": "people", "concept": "ann", "metric": "m",
            "encoder": "e", "mode": "resize", "prompt_set_version": "v", "reason": ""}  # fmt: skip
    rows = pd.DataFrame([
        {**base, "subclass": "", "value": 0.5, "std": 0.3, "n_images": 30},  # the pooled value
        {**base, "subclass": "a", "value": 0.2, "std": 0.1, "n_images": 10},
        {**base, "subclass": "b", "value": 0.8, "std": 0.2, "n_images": 20},
        {**base, "concept": "bob", "subclass": "", "value": 0.4, "std": 0.1, "n_images": 5},
    ])  # fmt: skip
    out = profiles.subclass_means(rows, {("trigger", "people", "ann")})
    ann = out[(out["concept"] == "ann") & (out["subclass"] == "")].iloc[0]
    assert ann["value"] == pytest.approx(0.5 * (0.2 + 0.8))
    assert ann["n_images"] == 30
    # std² / n = (0.1²/10 + 0.2²/20) / 2²
    assert ann["std"] ** 2 / 30 == pytest.approx((0.01 / 10 + 0.04 / 20) / 4)
    assert out.loc[3, "value"] == 0.4 and out.loc[1, "value"] == 0.2  # others untouched


# --- settings and identity ----------------------------------------------------------------------
def test_profile_enters_encoder_ids_and_keeps_lyco_ids(tiny_encoders):
    lyco = EncoderPool(EncoderSettings(vgg="IMAGENET1K_V1"))
    paper = EncoderPool(EncoderSettings(vgg="IMAGENET1K_V1", profile="paper"))
    assert lyco.id("vgg19") == "vgg19:IMAGENET1K_V1:224"  # unchanged: its cached features stay valid
    for kind in ("dinov2", "clip", "vgg19"):
        assert paper.id(kind) == lyco.id(kind) + ":paper"
    assert paper.id("hps") == lyco.id("hps")  # not in the paper: one preprocessing
    with pytest.raises(Exception, match="profile"):
        EncoderSettings(profile="papers")


def test_auto_precision_autocasts_on_cuda_only():
    """The paper encoded under fp16 autocast on CUDA; ``auto`` (either profile) does the same."""
    assert profiles.autocast_dtype("auto", torch.device("cuda")) == torch.float16
    assert profiles.autocast_dtype("auto", torch.device("cpu")) is None
    assert profiles.autocast_dtype("float32", torch.device("cuda")) is None
    with profiles.encoding("auto", torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_auto_precision_encodes_under_fp16_autocast_on_cuda():
    with profiles.encoding("auto", torch.device("cuda")):
        assert torch.is_autocast_enabled("cuda") and torch.get_autocast_dtype("cuda") == torch.float16
