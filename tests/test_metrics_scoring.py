"""`score` on a small generation folder built here (PNGs + manifest) against the demo dataset."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from torch.testing import assert_close

from lyco_bench.cli import main
from lyco_bench.errors import BadInput
from lyco_bench.metrics import fidelity
from lyco_bench.metrics.features import EncoderPool, EncoderSettings
from lyco_bench.metrics.scoring import ROW_COLUMNS, score
from lyco_bench.utils import sha256_file
from tests.helpers import _manifest_rows, noise_image


@pytest.fixture(scope="module")
def scored(generated, demo_dataset_dir, tiny_encoders, tmp_path_factory) -> tuple[pd.DataFrame, Path]:
    images, base = generated
    cache = tmp_path_factory.mktemp("cache")
    settings = EncoderSettings(**tiny_encoders)
    rows = score(
        images_dir=images, dataset=demo_dataset_dir, base_images_dir=base, encoders=settings, cache_dir=cache
    )
    return rows, cache


def _pick(rows, **where) -> pd.DataFrame:
    mask = pd.Series(True, index=rows.index)
    for key, value in where.items():
        mask &= rows[key] == value
    return rows[mask]


def _one(rows, **where) -> pd.Series:
    found = _pick(rows, **where)
    assert len(found) == 1, (where, found)
    return found.iloc[0]


def test_rows_columns_and_reasons(scored):
    rows, _ = scored
    assert list(rows.columns) == ROW_COLUMNS
    assert set(rows["checkpoint"]) == {"ck-test"} and set(rows["prompt_set_version"]) == {"3"}
    assert (rows.loc[rows["value"].isna(), "reason"] != "").all()
    assert (rows.loc[rows["value"].notna(), "reason"] == "").all()
    assert set(rows["mode"]) == {"", "resize", "crop", "padding"}
    assert set(rows["metric"]) == {
        "image_similarity",
        "squared_centroid_distance",
        "frechet_distance",
        "text_similarity",
        "vendi",
        "clip_iqa",
        "style_loss_base",
        "style_loss_dataset",
        "intrusion",
        "drift",
        "kid",
        "composition_min",
        "composition_drop",
    }  # fmt: skip  (hps_delta is not a default metric)
    # std: defined exactly for the means over images with at least 2 of them
    from lyco_bench.metrics import METRICS

    per_image = rows["metric"].map(lambda m: METRICS[m].per_image)
    concept_level = rows["concept"] != ""
    defined = rows["std"].notna()
    assert not (defined & ~per_image).any()
    assert (defined == (per_image & rows["value"].notna() & (rows["n_images"] >= 2) & (
        concept_level | (rows["prompt_class"] == "agnostic")))).all()  # fmt: skip
    key = ["category", "concept", "subclass", "prompt_class", "metric", "encoder", "mode"]
    assert not rows.duplicated(key).any()


def test_undefined_values_are_nan_rows_with_reasons(scored):
    rows, _ = scored
    vendi = _one(rows, prompt_class="trigger", concept="checker", metric="vendi")
    assert math.isnan(vendi["value"]) and vendi["reason"] == "fewer than 2 images"
    fd = _one(rows, prompt_class="trigger", concept="checker", metric="frechet_distance", mode="crop")
    assert math.isnan(fd["value"]) and "fewer than 2" in fd["reason"]
    no_pair = _one(rows, prompt_class="style", concept="triangle", subclass="", metric="style_loss_base")
    assert (
        math.isnan(no_pair["value"])
        and no_pair["reason"] == "no base-model image with the same prompt and seed"
    )
    paired = _one(rows, prompt_class="style", concept="circle", metric="style_loss_base")
    assert paired["value"] > 0 and paired["n_images"] == 2
    leak = _one(rows, prompt_class="agnostic", category="", metric="style_loss_base")
    assert leak["value"] > 0 and leak["n_images"] == 2


def test_combine_and_agnostic_compare_with_each_concept(scored):
    rows, _ = scored
    comb = _pick(
        rows, prompt_class="combine", metric="image_similarity", mode="resize", concept="circle+checker"
    )
    assert sorted(comb["subclass"]) == ["patterns/checker", "shapes/circle"]
    assert _pick(rows, prompt_class="agnostic", metric="image_similarity").empty  # intrusion instead
    leak = _pick(rows, prompt_class="agnostic", metric="intrusion", mode="resize", concept="")
    assert sorted(leak["subclass"]) == [
        "patterns/checker",
        "patterns/stripes",
        "shapes/circle",
        "shapes/triangle",
    ]


def test_style_loss_dataset_only_for_style_categories(scored):
    rows, _ = scored
    style = _pick(rows, metric="style_loss_dataset", subclass="")
    # "patterns" got no <style> prompts while "shapes" did: patterns are the style concepts
    assert set(style["category"]) == {"patterns"}
    assert set(style["prompt_class"]) == {"trigger", "alter"}
    assert (style["value"] > 0).all()


def test_group_and_category_aggregation(scored):
    rows, _ = scored
    subs = _pick(rows, prompt_class="trigger", concept="triangle", metric="text_similarity")
    concept = subs[subs["subclass"] == ""].iloc[0]
    parts = subs[subs["subclass"] != ""]
    assert concept["n_images"] == 4 and list(parts["n_images"]) == [2, 2]
    assert_close(
        concept["value"], float((parts["value"] * parts["n_images"]).sum() / 4)
    )  # a mean over images
    cat = _one(rows, prompt_class="trigger", category="shapes", concept="", metric="text_similarity")
    members = _pick(rows, prompt_class="trigger", category="shapes", subclass="", metric="text_similarity")
    members = members[members["concept"] != ""]
    assert_close(cat["value"], float(members["value"].mean()))
    assert cat["n_images"] == 6
    # a category mean skips undefined concept values
    vendi = _one(rows, prompt_class="trigger", category="patterns", concept="", metric="vendi")
    assert_close(
        vendi["value"], _one(rows, prompt_class="trigger", concept="stripes", metric="vendi")["value"]
    )


def test_image_similarity_matches_direct_computation(scored, generated, demo_dataset_dir, tiny_encoders):
    from lyco_bench.data import load_dataset
    from lyco_bench.metrics.encoders import DinoV2Encoder
    from lyco_bench.metrics.features import open_image

    rows, _ = scored
    images, _ = generated
    dino = DinoV2Encoder(tiny_encoders["dino"], device="cpu", image_size=tiny_encoders["dino_image_size"])
    (leaf,) = load_dataset(demo_dataset_dir).find("shapes", "circle")
    ref = dino.encode_images([open_image(Path(i.path)) for i in leaf.images], "padding")
    gen_files = [
        images / r["file"]
        for r in _manifest_rows()
        if r["prompt_class"] == "trigger" and r["concept"] == "circle"
    ]
    gen = dino.encode_images([open_image(p) for p in gen_files], "padding")
    row = _one(rows, prompt_class="trigger", concept="circle", metric="image_similarity", mode="padding")
    assert_close(row["value"], fidelity.image_similarity(ref, gen), rtol=1e-5, atol=1e-6)
    row = _one(
        rows, prompt_class="trigger", concept="circle", metric="squared_centroid_distance", mode="padding"
    )
    assert_close(row["value"], fidelity.squared_centroid_distance(ref, gen), rtol=1e-4, atol=1e-6)


def test_second_run_encodes_only_style_grams_and_is_identical(
    scored, generated, demo_dataset_dir, tiny_encoders, monkeypatch
):
    """DINOv2/CLIP features and the dataset's and base model's Grams are cached; Grams of generated
    images are not (nothing reads them twice), so a rescoring runs VGG on exactly the generated
    images a style loss reads: <style>/<agnostic> ones paired with the base model, and the style
    category's <train>/<trigger>/<alter> ones."""
    from lyco_bench.metrics.features import encode_batches  # noqa: F401 (the path under test)

    rows, cache = scored
    images, base = generated
    real_get = EncoderPool.get

    def only_vgg(self, kind):
        assert kind == "vgg19", f"encoder {kind} used on a cached run"
        return real_get(self, kind)

    monkeypatch.setattr(EncoderPool, "get", only_vgg)
    settings = EncoderSettings(**{**tiny_encoders, "experimental": False})
    passes: dict[str, int] = {}
    again = score(
        images_dir=images, dataset=demo_dataset_dir, base_images_dir=base, encoders=settings, cache_dir=cache,
        encoder_passes=passes,
    )  # fmt: skip
    pd.testing.assert_frame_equal(again, rows[rows["metric"] != "clip_iqa"].reset_index(drop=True))
    manifest = pd.DataFrame(_manifest_rows())
    base_pairs = set(pd.read_parquet(base / "manifest.parquet")["file"])  # same prompt, seed and file
    style_reads = (
        manifest["prompt_class"].isin(["style", "agnostic"]) & manifest["file"].isin(base_pairs)
    ) | ((manifest["category"] == "patterns") & manifest["prompt_class"].isin(["train", "trigger", "alter"]))
    # One pass per distinct image content read (some test images are drawn twice).
    contents = {sha256_file(images / f) for f in manifest.loc[style_reads, "file"]}
    assert passes == {"vgg19": len(contents)}


def test_metric_selection(scored, generated, demo_dataset_dir, tiny_encoders, tmp_path):
    images, base = generated
    settings = EncoderSettings(**tiny_encoders)
    only = score(
        images_dir=images, dataset=demo_dataset_dir, encoders=settings, cache_dir=tmp_path, metrics=["vendi"]
    )
    assert set(only["metric"]) == {"vendi"}
    full = scored[0]
    pd.testing.assert_frame_equal(only, full[full["metric"] == "vendi"].reset_index(drop=True))
    assert not list(tmp_path.rglob("*vgg19*")) and not list(tmp_path.rglob("*clip*"))  # never encoded
    with pytest.raises(BadInput, match="unknown metric 'fid'"):
        score(
            images_dir=images,
            dataset=demo_dataset_dir,
            encoders=settings,
            cache_dir=tmp_path,
            metrics=["fid"],
        )


def test_cli_score_is_deterministic_and_atomic(
    scored, generated, demo_dataset_dir, tiny_encoders, tmp_path, capsys
):
    images, base = generated
    warm = str(scored[1])  # the first run reads every feature from the cache, the second encodes all
    enc_yaml = tmp_path / "encoders.yaml"
    enc_yaml.write_text(yaml.safe_dump(tiny_encoders))
    common = ["--images", str(images), "--dataset", str(demo_dataset_dir), "--encoders", str(enc_yaml)]
    assert main(["score", *common, "--cache", warm, "--out", str(tmp_path / "a.parquet")]) == 0
    assert (
        main(["score", *common, "--cache", str(tmp_path / "c2"), "--out", str(tmp_path / "b.parquet")]) == 0
    )
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    assert "score: ck-test:" in capsys.readouterr().err
    # bad input: exit 2, one line, nothing written
    code = main(["score", *common, "--set", "image_encoders=[bogus]", "--out", str(tmp_path / "x.parquet")])
    assert code == 2 and not (tmp_path / "x.parquet").exists()
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "image_encoders" in err and len(err.splitlines()) == 1
    assert main(["encode", "--images", str(images), "--encoder", "bogus", "--cache", warm]) == 2
    assert "--encoder 'bogus'" in capsys.readouterr().err
    assert (
        main(
            [
                "encode",
                "--images",
                str(images),
                "--encoder",
                "dinov2",
                "--encoders",
                str(enc_yaml),
                "--cache",
                warm,
            ]
        )
        == 0
    )
    # score cached every generated image a DINOv2 metric reads: only the <style> ones are left
    n_style = sum(r["prompt_class"] == "style" for r in _manifest_rows())
    assert f"{n_style} encoded" in capsys.readouterr().err


def _copy(generated: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(generated, tmp_path / "copy"))


def _score(images, dataset, settings, tmp_path):
    return score(
        images_dir=images, dataset=dataset, encoders=EncoderSettings(**settings), cache_dir=tmp_path / "cache"
    )


def test_manifest_must_match_folder(generated, demo_dataset_dir, tiny_encoders, tmp_path):
    images = _copy(generated[0], tmp_path)
    extra = images / "trigger" / "stray.png"
    noise_image(0).save(extra)
    with pytest.raises(BadInput, match="stray.png: image not listed"):
        _score(images, demo_dataset_dir, tiny_encoders, tmp_path)
    extra.unlink()
    victim = images / _manifest_rows()[0]["file"]
    victim.unlink()
    with pytest.raises(BadInput, match="which is missing"):
        _score(images, demo_dataset_dir, tiny_encoders, tmp_path)
    victim.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(BadInput, match="unreadable image"):
        _score(images, demo_dataset_dir, tiny_encoders, tmp_path)
    assert not (tmp_path / "cache").exists()  # rejected before anything was encoded


def test_manifest_concept_or_trigger_problems(generated, demo_dataset_dir, tiny_encoders, tmp_path):
    images = _copy(generated[0], tmp_path)
    df = pd.read_parquet(images / "manifest.parquet")
    df.loc[0, "concept"] = "hexagon"
    df.to_parquet(images / "manifest.parquet", index=False)
    with pytest.raises(BadInput, match="concept 'shapes/hexagon' is not in dataset"):
        _score(images, demo_dataset_dir, tiny_encoders, tmp_path)
    df.drop(columns=["clip_text"]).to_parquet(images / "manifest.parquet", index=False)
    with pytest.raises(BadInput, match="no column 'clip_text'"):
        _score(images, demo_dataset_dir, tiny_encoders, tmp_path)
    dataset = Path(shutil.copytree(demo_dataset_dir, tmp_path / "ds"))
    spec = yaml.safe_load((dataset / "dataset.yaml").read_text())
    del spec["concepts"]["shapes/circle"]["trigger"]
    (dataset / "dataset.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(BadInput, match="trigger"):
        _score(generated[0], dataset, tiny_encoders, tmp_path)


def test_paper_profile_averages_subclasses_and_cuts_alter_into_blocks(
    scored, generated, demo_dataset_dir, tiny_encoders, tmp_path
):
    from lyco_bench.metrics.diversity import vendi_score

    lyco, _ = scored
    images, base = generated
    settings = EncoderSettings(**tiny_encoders, profile="paper")
    rows = score(
        images_dir=images,
        dataset=demo_dataset_dir,
        base_images_dir=base,
        encoders=settings,
        cache_dir=tmp_path,
    )
    tri = _pick(rows, prompt_class="trigger", concept="triangle")
    for (metric, _encoder, mode), grp in tri.groupby(["metric", "encoder", "mode"]):
        parts = grp[grp["subclass"] != ""]["value"].dropna()
        concept = grp[grp["subclass"] == ""]["value"]
        assert len(concept) == 1 and len(parts) == 2, (metric, mode)
        assert_close(float(concept.iloc[0]), float(parts.mean()))  # the paper's concept value
    members = _pick(rows, prompt_class="trigger", category="shapes", subclass="", metric="text_similarity")
    cat = members[members["concept"] == ""].iloc[0]
    assert_close(float(cat["value"]), float(members[members["concept"] != ""]["value"].mean()))
    # <alter> circle: 4 images (2 prompts × 2 seeds) make one block of at most 10: one Vendi score
    # of all four, where lyco-bench averages the two prompts' scores.
    alter = _pick(rows, prompt_class="alter", concept="circle", metric="vendi")
    unit = sorted(images.glob("alter/shapes.circle/*.png"))
    enc_pool = EncoderPool(settings)
    feats = torch.cat([enc_pool.get("dinov2").encode_images([Image.open(p)], "resize") for p in unit])
    assert_close(float(alter["value"].iloc[0]), vendi_score(feats), rtol=1e-5, atol=1e-6)
    lyco_alter = _one(lyco, prompt_class="alter", concept="circle", metric="vendi")["value"]
    assert abs(float(alter["value"].iloc[0]) - lyco_alter) > 1e-6


def test_loader_threads_give_the_one_thread_features_and_decode_each_file_once(
    generated, tiny_encoders, monkeypatch
):
    """Prefetched batches (decoded and prepared in loader threads) equal encode_images on the
    same batches bit for bit, and a second encoder reuses the first one's decoded pictures."""
    from PIL import Image

    from lyco_bench.metrics import features

    images, _ = generated
    paths = sorted(images.rglob("*.png"))
    settings = EncoderSettings(**{**tiny_encoders, "batch_size": 5})
    pool = EncoderPool(settings)
    opened = []
    real_open = features.open_image
    monkeypatch.setattr(features, "open_image", lambda p: opened.append(p) or real_open(p))
    for kind in ("dinov2", "clip", "vgg19"):
        got = list(features.encode_batches(pool, kind, paths, ["crop"] * len(paths)))
        assert [c for c, _ in got] == [
            list(range(s, min(s + 5, len(paths)))) for s in range(0, len(paths), 5)
        ]
        for chunk, feats in got:
            pictures = []
            for i in chunk:
                with Image.open(paths[i]) as im:
                    pictures.append(im.convert("RGB"))
            assert_close(feats, pool.get(kind).encode_images(pictures, "crop"), rtol=0, atol=0)
    assert sorted(opened) == paths  # three encoders, each file decoded once
    assert pool.passes["dinov2"] == pool.passes["clip"] == pool.passes["vgg19"] == len(paths)


def test_decoded_pictures_stay_within_the_budget(generated):
    from lyco_bench.metrics.features import DecodedImages

    images, _ = generated
    paths = sorted(images.rglob("*.png"))
    first = DecodedImages().get(paths[0])
    one = first.width * first.height * 4
    decoded = DecodedImages(budget=2 * one)
    for _ in range(2):
        for p in paths[:4]:
            decoded.get(p)
    assert (
        decoded.used == 2 * one and decoded.decodes == 4 + 2
    )  # the first two kept, the others decoded twice
