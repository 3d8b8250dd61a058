"""Encoders loaded from tiny local models, preprocessing modes, the feature cache and its hit counting."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.testing import assert_close

from lyco_bench.errors import BadInput
from lyco_bench.metrics import encoders as enc
from lyco_bench.metrics.cache import FeatureCache
from lyco_bench.metrics.features import EncoderPool, EncoderSettings, image_features, text_features
from tests.helpers import noise_image, tiny_encoder_settings


@pytest.fixture(scope="session")
def tiny_encoders(tmp_path_factory) -> dict:
    return tiny_encoder_settings(tmp_path_factory)


def test_preprocess_modes_by_hand():
    white = Image.new("RGB", (8, 4), (255, 255, 255))  # 2:1
    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    pad = enc.preprocess(white, mode="padding", size=4, mean=mean, std=std)  # 4×2 pasted at rows 1–2
    assert pad.shape == (3, 4, 4)
    assert_close(pad[:, [0, 3]], torch.zeros(3, 2, 4))
    assert_close(pad[:, 1:3], torch.ones(3, 2, 4))
    for mode in ("resize", "crop"):
        assert_close(enc.preprocess(white, mode=mode, size=4, mean=mean, std=std), torch.ones(3, 4, 4))
    half = Image.new("RGB", (8, 4), (0, 0, 0))
    half.paste((255, 255, 255), (4, 0, 8, 4))  # right half white
    crop = enc.preprocess(half, mode="crop", size=4, mean=mean, std=std)  # keeps the middle 4×4 of 8×4
    assert_close(crop[0, :, 0], torch.zeros(4))
    assert_close(crop[0, :, 3], torch.ones(4))
    norm = enc.preprocess(white, mode="resize", size=2, mean=enc.IMAGENET_MEAN, std=enc.IMAGENET_STD)
    assert_close(norm[:, 0, 0], (1 - torch.tensor(enc.IMAGENET_MEAN)) / torch.tensor(enc.IMAGENET_STD))
    assert enc.canonical_mode((5, 5), "padding") == "resize" and enc.canonical_mode((5, 4), "crop") == "crop"
    with pytest.raises(BadInput, match="mode 'zoom'"):
        enc.preprocess(white, mode="zoom", size=4, mean=mean, std=std)


def test_preprocess_matches_open_clip_transforms_on_odd_sizes():
    """The reference modes reproduce open_clip's eval transforms (what the paper's code used)."""
    import open_clip

    for size in ((97, 61), (61, 97), (640, 480), (75, 50), (33, 30)):
        image = noise_image(7, size)
        for mode, resize_mode in (("crop", "shortest"), ("resize", "squash"), ("padding", "longest")):
            own = open_clip.image_transform(
                32, is_train=False, mean=enc.IMAGENET_MEAN, std=enc.IMAGENET_STD, resize_mode=resize_mode
            )
            got = enc.preprocess(image, mode=mode, size=32, mean=enc.IMAGENET_MEAN, std=enc.IMAGENET_STD)
            assert_close(got, own(image), msg=f"{size} {mode}")


def test_dinov2_is_the_normalized_layernormed_cls(tiny_encoders):
    from transformers import Dinov2Model

    dino = enc.DinoV2Encoder(tiny_encoders["dino"], device="cpu", image_size=56)
    images = [noise_image(1, (60, 40)), noise_image(2)]
    feats = dino.encode_images(images, "padding")
    assert feats.shape == (2, 32)
    assert_close(feats.norm(dim=1), torch.ones(2))
    model = Dinov2Model.from_pretrained(tiny_encoders["dino"]).eval()
    x = torch.stack(
        [
            enc.preprocess(im, mode="padding", size=56, mean=enc.IMAGENET_MEAN, std=enc.IMAGENET_STD)
            for im in images
        ]
    )
    with torch.no_grad():
        out = model(pixel_values=x)
        hidden = model.embeddings(x)
        for layer in model.encoder.layer:
            out_layer = layer(hidden)
            hidden = out_layer[0] if isinstance(out_layer, tuple) else out_layer
        cls = model.layernorm(hidden)[:, 0]
    assert_close(feats, torch.nn.functional.normalize(out.pooler_output, dim=1))
    assert_close(feats, torch.nn.functional.normalize(cls, dim=1), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(feats[0], dino.encode_images(images[:1], "crop")[0])  # modes differ for 3:2


def test_clip_truncation_keeps_end_of_text(tiny_encoders):
    clip = enc.ClipEncoder(tiny_encoders["clip"], device="cpu")
    long_prompt = " ".join(["red"] * 100)  # > 77 tokens
    tokens = clip.tokenize([long_prompt, "a photo"])
    eot = clip.tokenizer.eot_token_id
    assert tokens.shape == (2, 77)
    assert tokens[0, -1] == eot and tokens[0, 0] == clip.tokenizer.sot_token_id
    assert (tokens[0, 1:-1] == tokens[0, 1]).all()  # 75 words kept, then end-of-text
    feats = clip.encode_texts([long_prompt])
    assert_close(feats.norm(dim=1), torch.ones(1))
    cut = tokens[:1].clone()
    cut[0, -1] = tokens[0, 1]  # what a plain cut at 77 tokens would feed: no end-of-text token
    with torch.no_grad():
        broken = torch.nn.functional.normalize(clip.model.encode_text(cut), dim=-1)
        kept = torch.nn.functional.normalize(clip.model.encode_text(tokens[:1]), dim=-1)
    assert_close(feats, kept)
    assert not torch.allclose(feats, broken)
    img = clip.encode_images([noise_image(3)], "crop")
    assert img.shape == (1, 16)


def test_clip_images_use_open_clips_own_transforms(tiny_encoders):
    import open_clip

    clip = enc.ClipEncoder(tiny_encoders["clip"], device="cpu")
    cfg = open_clip.get_model_preprocess_cfg(clip.model)
    image = noise_image(6, (97, 61))  # odd aspect: torchvision truncates the resized long side
    for mode, resize_mode in (("crop", "shortest"), ("resize", "squash"), ("padding", "longest")):
        own = open_clip.image_transform(
            cfg["size"], is_train=False, mean=cfg["mean"], std=cfg["std"], resize_mode=resize_mode
        )
        with torch.no_grad():
            want = torch.nn.functional.normalize(clip.model.encode_image(own(image)[None]), dim=-1)
        assert_close(clip.encode_images([image], mode), want)
    with pytest.raises(BadInput, match="mode 'zoom'"):
        clip.encode_images([image], "zoom")


def test_vgg_gram_matches_torchvision_layout(tiny_encoders):
    from safetensors.torch import load_file
    from torchvision.models.vgg import make_layers

    from lyco_bench.metrics.tiny import TINY_VGG_WIDTHS

    vgg = enc.VggGramEncoder(tiny_encoders["vgg"], device="cpu", short_side=32)
    image = noise_image(4, (48, 32))  # short side already 32: no resampling
    feats = vgg.encode_images([image, noise_image(5)])
    assert feats.shape == (2, sum(c * (c + 1) // 2 for c in TINY_VGG_WIDTHS))
    w = TINY_VGG_WIDTHS
    cfg = [w[0], w[0], "M", w[1], w[1], "M", *[w[2]] * 4, "M", *[w[3]] * 4, "M", *[w[4]] * 4, "M"]
    trunk = make_layers(cfg)  # torchvision's own VGG builder (indices as in vgg19().features)
    state = {k.removeprefix("features."): v for k, v in load_file(tiny_encoders["vgg"]).items()}
    trunk.load_state_dict(state, strict=False)
    x = enc._normalize(enc._to_tensor(image), enc.IMAGENET_MEAN, enc.IMAGENET_STD)[None]
    grams = []
    with torch.no_grad():
        for i, layer in enumerate(trunk[:29]):
            x = layer(x) if not isinstance(layer, torch.nn.ReLU) else torch.relu(x)
            if i in (0, 5, 10, 19, 28):
                assert isinstance(layer, torch.nn.Conv2d)
                f = x.flatten(2)[0]  # (C, H·W), before the ReLU
                g = f @ f.T / f.numel()
                grams.append(g)
    assert_close(feats[0].pow(2).sum(), sum(g.pow(2).sum() for g in grams), rtol=1e-4, atol=1e-8)
    c = w[0]
    rows, cols = torch.triu_indices(c, c)
    assert_close(feats[0, : c * (c + 1) // 2][rows == cols], grams[0].diagonal(), rtol=1e-4, atol=1e-8)


def test_vgg_loads_a_full_torchvision_vgg19_state_dict(tmp_path):
    """A real checkpoint holds features.0…34 (conv5_4) and the classifier, nothing past index 34."""
    from safetensors.torch import save_file
    from torchvision.models.vgg import make_layers

    w = (4, 8, 8, 16, 16)
    cfg = [w[0], w[0], "M", w[1], w[1], "M", *[w[2]] * 4, "M", *[w[3]] * 4, "M", *[w[4]] * 4, "M"]
    torch.manual_seed(0)
    full = make_layers(cfg)  # torchvision's vgg19().features layout, 37 modules
    state = {f"features.{k}": v.contiguous() for k, v in full.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)
    save_file(state, str(tmp_path / "vgg19.safetensors"))
    vgg = enc.VggGramEncoder(str(tmp_path / "vgg19.safetensors"), device="cpu", short_side=16)
    assert len(vgg.trunk) == 29 and [type(m) for m in vgg.trunk] == [type(m) for m in full[:29]]
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert_close(vgg.trunk(x), full[:29](x))  # ends at conv5_1, before its ReLU
    assert len(enc.vgg19_features()) == 29


def test_bad_encoders_are_bad_input(tiny_encoders, tmp_path):
    with pytest.raises(BadInput, match="encoder 'bogus'"):
        EncoderPool(EncoderSettings(**tiny_encoders)).id("bogus")
    with pytest.raises(BadInput, match="encoder dinov2"):
        enc.DinoV2Encoder(str(tmp_path / "no-such-model"), device="cpu")
    with pytest.raises(BadInput, match="encoder clip"):
        enc.ClipEncoder("No-Such-Arch", None, device="cpu")
    bad = tmp_path / "vgg.safetensors"
    from safetensors.torch import save_file

    save_file({"features.0.weight": torch.zeros(2, 3, 3, 3)}, str(bad))
    with pytest.raises(BadInput, match="not a VGG19 state dict"):
        enc.VggGramEncoder(str(bad), device="cpu")


def test_cache_hits_second_run_encodes_nothing(tiny_encoders, tmp_path):
    paths = []
    for i in range(5):
        paths.append(tmp_path / f"{i}.png")
        noise_image(i, (32, 24) if i == 0 else (32, 32)).save(paths[-1])
    settings = EncoderSettings(**tiny_encoders)
    cache = FeatureCache(tmp_path / "cache")
    pool = EncoderPool(settings)
    first = image_features(pool, "dinov2", paths, mode="crop", cache=cache)
    first_pad = image_features(pool, "dinov2", paths, mode="padding", cache=cache)
    # square images are shared between modes: only the 32×24 one is encoded again
    assert cache.misses == 5 + 1 and pool.loads == ["dinov2"]
    assert_close(first[1:], first_pad[1:])
    assert not torch.allclose(first[0], first_pad[0])
    texts = text_features(pool, ["a red circle", "a blue square", "a red circle"], cache=cache)
    assert_close(texts[0], texts[2])

    calls = []
    fresh = EncoderPool(settings)
    fresh.get = lambda kind: calls.append(kind)  # any encoder use would be recorded here
    cache2 = FeatureCache(tmp_path / "cache")
    again = image_features(fresh, "dinov2", paths, mode="crop", cache=cache2)
    text_features(fresh, ["a red circle", "a blue square"], cache=cache2)
    assert calls == [] and cache2.misses == 0 and cache2.hits == 7
    assert_close(again, first)
    copy = tmp_path / "copy.png"
    copy.write_bytes(paths[2].read_bytes())  # same bytes elsewhere: still a hit (content-addressed)
    image_features(fresh, "dinov2", [copy], mode="crop", cache=cache2)
    assert calls == []


def test_cache_shards_and_a_corrupt_shard_is_a_miss(tmp_path):
    cache = FeatureCache(tmp_path)
    cache.put("ab" * 32, "enc:x", "resize", torch.tensor([1.0, 2.0]))
    cache.put("ef" * 32, "enc:x", "resize", torch.tensor([3.0, 4.0]))
    assert_close(cache.get("ab" * 32, "enc:x", "resize"), torch.tensor([1.0, 2.0]))  # buffered
    (shard,) = cache.flush()  # one file for both entries
    assert cache.shards() == [shard] and FeatureCache(tmp_path).count("enc:x") == 2
    assert_close(FeatureCache(tmp_path).get("ef" * 32, "enc:x", "resize"), torch.tensor([3.0, 4.0]))
    shard.write_bytes(b"\x00garbage")
    fresh = FeatureCache(tmp_path)
    assert fresh.get("ab" * 32, "enc:x", "resize") is None
    assert fresh.get("cd" * 32, "enc:x", "crop") is None and fresh.misses == 2


def _writer(root: str) -> None:
    cache = FeatureCache(root)
    for i in range(40):
        key = f"{i:064x}"
        cache.put(key, "enc:concurrent", "resize", torch.full((256,), float(i)))
    cache.flush()  # the same 40 keys from both writers: the same shard name, renamed into place


def test_cache_concurrent_writers_leave_valid_entries(tmp_path):
    ctx = multiprocessing.get_context("fork")  # the writers share nothing but the folder
    procs = [ctx.Process(target=_writer, args=(str(tmp_path),)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()  # their exit, however long a loaded machine takes
        assert p.exitcode == 0
    cache = FeatureCache(tmp_path)
    for i in range(40):
        assert_close(cache.get(f"{i:064x}", "enc:concurrent", "resize"), torch.full((256,), float(i)))
    assert not [p for p in Path(tmp_path).rglob("*.tmp")] and len(cache.shards()) == 1


def test_make_tiny_encoders_cli_writes_loadable_settings(tmp_path, capsys):
    from lyco_bench.cli import main
    from lyco_bench.config import load_config

    assert main(["make-tiny-encoders", str(tmp_path / "enc"), "--seed", "1"]) == 0
    settings = load_config(EncoderSettings, tmp_path / "enc" / "encoders.yaml", ["device=cpu"])
    assert Path(settings.dino).is_dir() and Path(settings.vgg).is_file() and settings.clip_pretrained is None
    pool = EncoderPool(settings)
    assert pool.label("clip") == "clip:open_clip" and pool.id("dinov2").startswith("dinov2:dinov2@")
    assert "encoders.yaml" in capsys.readouterr().err
