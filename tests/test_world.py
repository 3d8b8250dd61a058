"""The CPU world: drawing and captions are deterministic, the dataset loads, the shipped weights
load through the same code as real models and do what they are for (fast checks only; the gates
are measured by benchmarks/world.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lyco_bench.errors import BadInput
from lyco_bench.world import draw
from lyco_bench.world.captions import caption_tags, varied_caption
from lyco_bench.world.draw import CANVAS, Scene, draw_scene, sample_character, sample_object, sample_pair


def _scenes(seed: int):
    rng = np.random.default_rng(seed)
    return (
        [sample_object(rng) for _ in range(6)]
        + [sample_pair(rng) for _ in range(3)]
        + [sample_object(rng, style="comic")]
        + [sample_character(rng, "robot"), sample_character(rng, "doll", hat="blue")]
    )


def test_drawing_is_deterministic_and_64px():
    a, b = _scenes(3), _scenes(3)
    assert a == b
    for scene in a:
        x, y = np.asarray(draw_scene(scene)), np.asarray(draw_scene(scene))
        assert x.shape == (CANVAS, CANVAS, 3) and x.dtype == np.uint8
        assert np.array_equal(x, y)
    assert _scenes(4) != a


def test_drawing_shows_the_scene():
    red_square = Scene("object", "square", "red", "large", "white", "flat", 40, 32.0, 32.0)
    px = np.asarray(draw_scene(red_square)).astype(int)
    assert tuple(px[32, 32]) == draw.COLOURS["red"]  # the centre is the shape
    assert tuple(px[2, 2]) == draw.BACKGROUNDS["white"]  # the corner is the background
    outline = Scene("object", "square", "red", "large", "white", "outline", 40, 32.0, 32.0)
    assert tuple(np.asarray(draw_scene(outline))[32, 32]) == draw.BACKGROUNDS["white"]  # hollow
    comic = Scene("object", "circle", "blue", "large", "cream", "comic", 40, 32.0, 32.0)
    cpx = np.asarray(draw_scene(comic)).astype(int)
    assert tuple(cpx[1, 1]) == draw.COMIC_PAPER_RGB and tuple(cpx[32, 32]) == draw.COLOURS["blue"]
    # the ink ring: darkest pixels sit on the circle's edge
    assert cpx[32, 12 + 1].sum() < 100


def test_pairs_never_overlap_nor_look_like_a_character():
    rng = np.random.default_rng(11)
    for _ in range(300):
        p = sample_pair(rng)
        assert p.kind == "pair" and p.colour != p.colour2 and p.cx <= p.cx2
        assert frozenset({(p.colour, p.shape), (p.colour2, p.shape2)}) not in draw.HELD_OUT_PAIRS
        gap = (p.side + p.side2) / 2
        assert abs(p.cx - p.cx2) >= gap or abs(p.cy - p.cy2) >= gap


def test_every_shape_colour_and_style_draws():
    for shape in draw.SHAPES:
        for style in draw.ALL_STYLES:
            bg = "cream" if style == "comic" else "grey"
            img = np.asarray(draw_scene(Scene("object", shape, "green", "small", bg, style, 24, 30.0, 30.0)))
            assert (img != img[0, 0]).any(axis=-1).sum() > 30  # something is drawn


def test_captions_kohya_tags():
    obj = Scene("object", "cross", "purple", "small", "black", "shadow", 24, 20.0, 20.0)
    assert caption_tags(obj) == ["purple cross", "small", "black background", "drop shadow"]
    pair = Scene(
        "pair", "circle", "red", "small", "white", "flat", 20, 15.0, 15.0, "", "cross", "blue", 20, 45.0, 45.0
    )
    assert caption_tags(pair) == ["red circle", "blue cross", "small", "white background", "flat color"]
    rng = np.random.default_rng(0)
    pair_caps = [varied_caption(pair, rng) for _ in range(30)]
    assert all(
        {"red circle", "blue cross"} <= {t.removeprefix("a ") for t in c.split(", ")} for c in pair_caps if c
    )
    robot = Scene("robot", "", "", "large", "grey", "flat", 50, 32.0, 32.0)
    assert caption_tags(robot)[:3] == ["robot", "red head", "blue body"]
    doll = Scene("doll", "", "", "large", "grey", "flat", 50, 32.0, 32.0, "red")
    assert "red hat" in caption_tags(doll)
    rng1, rng2 = np.random.default_rng(5), np.random.default_rng(5)
    caps1 = [varied_caption(obj, rng1) for _ in range(50)]
    assert caps1 == [varied_caption(obj, rng2) for _ in range(50)]
    said = [c for c in caps1 if c]
    assert all("purple cross" in c for c in said) and len(set(said)) > 5
    assert "" in caps1  # the unconditional branch of classifier-free guidance


def test_world_dataset_is_deterministic_and_loads(tmp_path):
    from lyco_bench.data import caption_for, load_dataset
    from lyco_bench.world import make_world_dataset

    a = make_world_dataset(tmp_path / "a")
    b = make_world_dataset(tmp_path / "b")
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    ds = load_dataset(a)
    assert sorted(c.key for c in ds.concepts) == [
        "characters/doll/blue_hat",
        "characters/doll/red_hat",
        "characters/robot",
        "styles/comic",
    ]
    robot = ds.find("characters", "robot")[0]
    caption = caption_for(robot.images[0], robot, "tags")
    assert caption.startswith("zqx robot, ") and "red head" not in caption
    doll = ds.find("characters", "doll", "red_hat")[0]
    assert doll.trigger == "vrm doll, red hat"


# --- the shipped weights ---------------------------------------------------------------------
def test_shipped_weights_are_fp16_and_small():
    from safetensors import safe_open

    from lyco_bench.world import weights_dir

    root = weights_dir()
    files = [p for p in root.rglob("*.safetensors")]
    assert {p.parent.name for p in files} >= {"unet", "vae", "text_encoder", "dinov2", "open_clip"}
    for path in files:
        with safe_open(str(path), framework="pt") as fh:
            assert {fh.get_tensor(k).dtype for k in fh.keys()} <= {torch.float16, torch.int64}, path
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert total <= 40e6
    record = json.loads((root / "BUILD.json").read_text())
    from lyco_bench.utils import sha256_file

    for name, digest in record["files"].items():
        assert sha256_file(root / name) == digest, name


@pytest.fixture(scope="module")
def world_pipe():
    from lyco_bench.models import load_pipeline
    from lyco_bench.world import model_dir

    return load_pipeline(str(model_dir()))


def test_base_model_loads_as_sd1_and_samples(world_pipe):
    from transformers import CLIPTextModel

    from lyco_bench.models import model_kind
    from lyco_bench.world.pretrain import sample

    pipe = world_pipe
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert isinstance(pipe.text_encoder, CLIPTextModel)
    assert model_kind(pipe.unet.config) == "sd1"
    assert pipe.unet.dtype == torch.float32
    assert pipe.tokenizer("a red circle").input_ids[:2] == [
        49406,
        pipe.tokenizer.convert_tokens_to_ids("a</w>"),
    ]
    images = sample(pipe, ["a red circle", "a red circle"], seeds=[7, 7], steps=2)
    assert images.shape == (2, CANVAS, CANVAS, 3)
    assert np.array_equal(images[0], images[1])


def test_classifier_reads_drawn_pictures():
    from lyco_bench.world import load_classifier
    from lyco_bench.world.classifier import accuracy
    from lyco_bench.world.pretrain import base_scenes, draw_images, held_out_scenes

    scenes = base_scenes(123, 60) + held_out_scenes(123, 30)
    acc = accuracy(load_classifier(), draw_images(scenes), scenes)
    assert acc["shape"] >= 0.95 and acc["colour"] >= 0.95 and acc["kind"] >= 0.95


def test_evaluators_load_through_the_metrics_encoders():
    from PIL import Image

    from lyco_bench.metrics.encoders import ClipEncoder, DinoV2Encoder
    from lyco_bench.world import encoder_settings

    cfg = encoder_settings()
    red = draw_scene(Scene("object", "circle", "red", "large", "white", "flat", 44, 32.0, 32.0))
    red2 = draw_scene(Scene("object", "circle", "red", "large", "white", "flat", 40, 28.0, 34.0))
    robot = draw_scene(Scene("robot", "", "", "large", "black", "flat", 50, 32.0, 32.0))
    dino = DinoV2Encoder(cfg["dino"], image_size=cfg["dino_image_size"])
    f = dino.encode_images([red, red2, robot], "resize")
    assert f.shape[0] == 3 and torch.allclose(f.norm(dim=1), torch.ones(3), atol=1e-4)
    assert f[0] @ f[1] > f[0] @ f[2]  # same concept closer than another concept
    clip = ClipEncoder(cfg["clip"])
    img = clip.encode_images([red, robot], "resize")
    txt = clip.encode_texts(["red circle", "robot"])
    sims = txt @ img.T
    assert sims[0, 0] > sims[0, 1] and sims[1, 1] > sims[1, 0]
    assert isinstance(red, Image.Image)


def test_world_prefix_resolves_to_the_shipped_weights(tmp_path, monkeypatch):
    """`world:` as model and encoders → the shipped folders (hashed like any folder); missing
    weights → one line naming the study and the command that rebuilds them."""
    from lyco_bench.sweep.study import load_study
    from lyco_bench.world import build, model_dir, weights_dir

    demo = Path(__file__).resolve().parents[1] / "experiments" / "demo.yaml"
    study = load_study(demo).study
    assert study.model == str(model_dir())
    assert study.encoders["dino"] == str(weights_dir() / "dinov2") and study.encoders["dino_image_size"] == 64
    assert study.encoders["clip"] == str(weights_dir() / "open_clip") and study.encoders["vgg"] == "tiny:"
    assert study.dataset == "world:"  # drawn into the store by a prepare job
    from lyco_bench.sweep.assets.world import WORLD_COST_S
    from lyco_bench.sweep.planner import ROUGH_COST_S, rough_costs

    assert rough_costs(study.model) is WORLD_COST_S and rough_costs("org/sd15") is ROUGH_COST_S  # plan's ETA
    monkeypatch.setattr(build, "WEIGHTS_DIR", tmp_path / "none")
    with pytest.raises(BadInput, match=r"demo.yaml: world: the world's weights are missing .*make-world"):
        load_study(demo)
    with pytest.raises(BadInput, match=r"encoders.vgg: the world ships a DINOv2 \(dino\) and an OpenCLIP"):
        load_study(demo, ["encoders.vgg=world:"])


def test_make_world_dataset_command(tmp_path, capsys):
    """`lyco-bench make-world-dataset DIR` draws the same bytes as the function; a file in the way
    is one line, exit 2, and nothing written."""
    from lyco_bench.cli import main
    from lyco_bench.world import make_world_dataset

    assert main(["make-world-dataset", str(tmp_path / "cli"), "--images-per-leaf", "1"]) == 0
    ref = make_world_dataset(tmp_path / "ref", images_per_leaf=1)
    files = sorted(p.relative_to(ref) for p in ref.rglob("*") if p.is_file())
    assert all((tmp_path / "cli" / f).read_bytes() == (ref / f).read_bytes() for f in files)
    (tmp_path / "taken").write_text("x")
    capsys.readouterr()
    assert main(["make-world-dataset", str(tmp_path / "taken")]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"error: output folder {tmp_path / 'taken'}: {tmp_path / 'taken'} is a file, not a folder"
    )
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
