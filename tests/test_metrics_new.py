"""The registry-driven metrics beyond the paper: std, leakage and drift against the base model on
<agnostic> prompts (intrusion, drift, KID), two-concept composition, and HPS v2.1 (hps_delta).

Formulas against values worked out by hand; the HPS encoder through its real loader on a tiny
random OpenCLIP; scoring end to end against direct computations with the encoders.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image
from torch.testing import assert_close

from lyco_bench.errors import BadInput
from lyco_bench.metrics import METRICS
from lyco_bench.metrics.encoders import HpsEncoder, hps_preprocess, load_state_file
from lyco_bench.metrics.features import EncoderPool, EncoderSettings, open_image
from lyco_bench.metrics.fidelity import (
    composition_drop,
    composition_min,
    image_similarity,
    image_similarity_per_image,
)
from lyco_bench.metrics.leakage import (
    drift,
    drift_per_pair,
    intrusion,
    intrusion_per_pair,
    kid,
    kid_of_features,
)
from lyco_bench.metrics.quality import hps_delta, hps_per_pair
from lyco_bench.metrics.scoring import score
from lyco_bench.metrics.values import sample_std
from tests.helpers import _row, noise_image, tiny_encoder_settings, write_generation


@pytest.fixture(scope="session")
def tiny_encoders(tmp_path_factory) -> dict:
    return tiny_encoder_settings(tmp_path_factory)


# --- formulas ---------------------------------------------------------------------------------
def test_sample_std_and_per_image_similarity():
    assert sample_std([1.0, 2.0, 3.0]) == 1.0  # ddof=1
    assert math.isnan(sample_std([4.0]))
    ref = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    gen = torch.tensor([[1.0, 0.0], [3.0, 4.0]])  # per image: mean cos to the refs 0.5, 0.7
    assert_close(image_similarity_per_image(ref, gen), torch.tensor([0.5, 0.7], dtype=torch.float64))
    assert_close(float(image_similarity_per_image(ref, gen).mean()), image_similarity(ref, gen))


def test_intrusion_and_drift_by_hand():
    ref = torch.tensor([[1.0, 0.0]])
    tuned = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # similarities to ref 1, 0
    base = torch.tensor([[0.0, 1.0], [0.0, 1.0]])  # 0, 0
    assert_close(intrusion(ref, tuned, base), 0.5)
    assert_close(intrusion_per_pair(ref, tuned, base), torch.tensor([1.0, 0.0], dtype=torch.float64))
    assert intrusion(ref, base, base) == 0.0
    # cosine distances 0 (same direction) and 1 (orthogonal)
    assert_close(drift(base, torch.tensor([[0.0, 3.0], [1.0, 0.0]])), 0.5)
    assert_close(sample_std(drift_per_pair(base, torch.tensor([[0.0, 3.0], [1.0, 0.0]]))), math.sqrt(0.5))
    with pytest.raises(ValueError, match="pairs row i"):
        drift(base, tuned[:1])


def _kid_by_loops(x, y, degree, gamma, coef0):
    k = lambda a, b: (gamma * sum(p * q for p, q in zip(a, b, strict=True)) + coef0) ** degree  # noqa: E731
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(a, b) for a in x for b in y) / (m * n)
    return xx + yy - 2 * xy


def test_kid_unbiased_polynomial_mmd_by_hand():
    # 1-D, linear kernel k = x·y + 1: within X 2·1+1 = 3, within Y 0·3+1 = 1,
    # across (0+1)+(3+1)+(0+1)+(6+1) = 13 → 3 + 1 − 2·13/4 = −2.5
    x, y = torch.tensor([[1.0], [2.0]]), torch.tensor([[0.0], [3.0]])
    assert_close(kid(x, y, degree=1, gamma=1.0), -2.5)
    # cubic kernel, default γ = 1/D, against explicit sums over i ≠ j
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 3, generator=gen), torch.randn(4, 3, generator=gen) + 0.5
    expected = _kid_by_loops(a.tolist(), b.tolist(), 3, 1 / 3, 1.0)
    assert_close(kid(a, b), expected, rtol=1e-10, atol=1e-12)
    # the scored form: (cos + 1)³ on unit features = the standard kernel on features of norm √D
    u = torch.nn.functional.normalize(a.double(), dim=1)
    v = torch.nn.functional.normalize(b.double(), dim=1)
    assert_close(kid_of_features(a, b), kid(u * math.sqrt(3), v * math.sqrt(3)))
    # unbiased: near 0 for two samples of one distribution, clearly positive after a shift
    big = torch.randn(400, 8, generator=gen)
    same, shifted = torch.randn(400, 8, generator=gen), torch.randn(400, 8, generator=gen) + 1.0
    assert abs(kid(big, same)) < 0.02 < kid(big, shifted)
    with pytest.raises(ValueError, match="at least 2"):
        kid(x[:1], y)


def test_composition_and_hps_delta_by_hand():
    assert composition_min([0.3, 0.5]) == 0.3
    assert math.isnan(composition_min([0.3, math.nan]))
    ref = torch.tensor([[1.0, 0.0]])
    single, combined = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.6, 0.8]])
    assert_close(composition_drop(ref, single, combined), 0.4)
    texts = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    tuned = torch.tensor([[1.0, 0.0], [0.6, 0.8]])  # HPS 1, 0.8
    base = torch.tensor([[0.0, 1.0], [0.0, 1.0]])  # HPS 0, 1
    assert_close(hps_per_pair(tuned, base, texts), torch.tensor([1.0, -0.2], dtype=torch.float64))
    assert_close(hps_delta(tuned, base, texts), 0.4)


def test_registry_entries_point_at_their_functions():
    m = METRICS["intrusion"]
    assert (m.criterion, m.higher_is_better, m.needs, m.prompt_classes) == (
        "preservation",
        False,
        ("reference", "base", "generated"),
        ("agnostic",),
    )
    assert (
        METRICS["composition_drop"].reports == ("combine",)
        and "trigger" in METRICS["composition_drop"].prompt_classes
    )
    assert METRICS["hps_delta"].encoders == ("hps",) and not METRICS["hps_delta"].default
    assert {n for n, m in METRICS.items() if m.per_image} == {
        "image_similarity", "text_similarity", "style_loss_base", "clip_iqa", "intrusion", "drift", "hps_delta",
    }  # fmt: skip


# --- the HPS encoder ----------------------------------------------------------------------------
def test_hps_preprocess_longest_side_padded_no_crop():
    # 50 × 30 → longest side 32: 32 × 19 (30·0.64 = 19.2), 13 rows of padding: 6 above, 7 below
    image = Image.new("RGB", (50, 30), (255, 255, 255))
    x = hps_preprocess(image, size=32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    assert x.shape == (3, 32, 32)
    rows = x[0].mean(1)
    assert (rows[:6] == 0).all() and (rows[25:] == 0).all() and (rows[6:25] > 0.99).all()
    # nothing is cropped: a wide image keeps both ends
    wide = Image.new("RGB", (64, 16), (0, 0, 0))
    wide.paste((255, 0, 0), (0, 0, 8, 16))
    wide.paste((0, 0, 255), (56, 0, 64, 16))
    y = hps_preprocess(wide, size=32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    assert y[0, 16, 0] > 0.9 and y[2, 16, 31] > 0.9 and y[:, :12].abs().max() == 0
    # normalization with the model's mean/std
    z = hps_preprocess(image, size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert_close(z[:, 0, 0], torch.full((3,), -2.0))
    assert_close(z[:, 16, 16], torch.full((3,), 2.0))


def test_hps_encoder_loads_the_checkpoint_through_the_real_loader(tiny_encoders, tmp_path):
    import open_clip

    settings = EncoderSettings(**tiny_encoders)
    pool = EncoderPool(settings)
    hps = pool.get("hps")
    assert isinstance(hps, HpsEncoder) and pool.label("hps") == "hps:hps/hps-v2.1.pt"
    assert pool.id("hps").startswith("hps:hps@") and ":p" in pool.id("hps")
    # by hand: the architecture, the checkpoint's state dict, the HPS transform, cosine
    model = open_clip.create_model(f"local-dir:{tiny_encoders['hps']}", load_weights=False)
    state = torch.load(tiny_encoders["hps_checkpoint"], weights_only=True)["state_dict"]
    model.load_state_dict(state)
    model.eval()
    images = [noise_image(3, (40, 24)), noise_image(4, (32, 32))]
    cfg = open_clip.get_model_preprocess_cfg(model)
    x = torch.stack([hps_preprocess(im, size=32, mean=cfg["mean"], std=cfg["std"]) for im in images])
    with torch.no_grad():
        img = torch.nn.functional.normalize(model.encode_image(x), dim=-1)
        tokens = open_clip.get_tokenizer(f"local-dir:{tiny_encoders['hps']}")(["a cat"])
        txt = torch.nn.functional.normalize(model.encode_text(tokens), dim=-1)
    assert_close(hps.encode_images(images, "crop"), img, rtol=1e-5, atol=1e-6)  # the mode is ignored
    assert_close(hps.encode_texts(["a cat"]), txt, rtol=1e-5, atol=1e-6)
    # the checkpoint matters: the tiny CLIP's own weights are not HPS's
    assert not torch.allclose(
        hps.encode_images(images[:1]), pool.get("clip").encode_images(images[:1], "resize")
    )
    # the same weights from safetensors
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "hps.safetensors"))
    again = HpsEncoder(tiny_encoders["hps"], str(tmp_path / "hps.safetensors"), device="cpu")
    assert_close(again.encode_images(images), img, rtol=1e-5, atol=1e-6)


class _Marker:
    """Unpickling this would create a file: a checkpoint must never be unpickled in general."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_hps_checkpoint_is_never_unpickled_in_general(tiny_encoders, tmp_path):
    state = torch.load(tiny_encoders["hps_checkpoint"], weights_only=True)["state_dict"]
    marker = tmp_path / "unpickled"
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": state, "hook": _Marker(marker)}, evil)
    with pytest.raises(BadInput, match="encoder hps .*evil.pt.*refused: it holds pickled objects") as info:
        HpsEncoder(tiny_encoders["hps"], str(evil), device="cpu")
    assert "weights_only" not in str(info.value) and "trust" not in str(info.value)  # no advice to unpickle
    assert not marker.exists()
    # a state dict for another architecture, a non-state-dict and a missing hub file
    torch.save({"state_dict": {"visual.proj": torch.zeros(2, 2)}}, tmp_path / "other.pt")
    with pytest.raises(BadInput, match="does not fit"):
        HpsEncoder(tiny_encoders["hps"], str(tmp_path / "other.pt"), device="cpu")
    torch.save({"state_dict": {"a": 1}}, tmp_path / "ints.pt")
    with pytest.raises(BadInput, match="not a state dict of tensors"):
        load_state_file(tmp_path / "ints.pt", what="hps")
    with pytest.raises(BadInput, match="not <owner>/<repo>/<file>"):
        HpsEncoder(tiny_encoders["hps"], "nowhere.pt", device="cpu")


# --- scoring end to end -------------------------------------------------------------------------
def _generation_rows() -> list[dict]:
    rows = [
        _row("agnostic", "", "", "unrelated", 0, s, prompt="a photo of a lake") for s in (1000, 1001, 1002)
    ]
    rows += [_row("agnostic", "shapes", "", "class", 0, s, prompt="a shape") for s in (1000, 1001)]
    rows += [_row("agnostic", "shapes", "", "", 1, s, prompt="a thing") for s in (1000, 1001)]  # no twin
    rows += [_row("trigger", "shapes", "circle", "", 0, s) for s in (1000, 1001)]
    rows += [_row("trigger", "patterns", "checker", "", 0, s) for s in (1000, 1001)]
    both = "shapes/circle+patterns/checker"
    rows += [
        _row("combine", "shapes+patterns", "circle+checker", "", 0, s, concepts=both)
        for s in (1000, 1001, 1002)
    ]
    return rows


@pytest.fixture(scope="module")
def leak(tmp_path_factory, demo_dataset_dir, tiny_encoders):
    root = tmp_path_factory.mktemp("leak")
    rows = _generation_rows()
    images = write_generation(root / "ck", rows, seed=5)
    twins = [
        dict(r, checkpoint="base")
        for r in rows
        if r["prompt_class"] == "agnostic" and r["prompt"] != "a thing"
    ]
    twins += [dict(r, checkpoint="base") for r in rows if r["prompt_class"] == "trigger"]
    base = write_generation(root / "base", twins, seed=6)
    settings = EncoderSettings(**{**tiny_encoders, "modes": ["resize", "padding"]})
    names = [
        "image_similarity",
        "intrusion",
        "drift",
        "kid",
        "composition_min",
        "composition_drop",
        "hps_delta",
    ]
    passes: dict[str, int] = {}
    scored = score(
        images_dir=images, dataset=demo_dataset_dir, base_images_dir=base, encoders=settings,
        cache_dir=root / "cache", metrics=names, encoder_passes=passes,
    )  # fmt: skip
    return {"root": root, "images": images, "base": base, "rows": scored, "settings": settings,
            "passes": passes, "names": names}  # fmt: skip


def _one(rows, **where) -> pd.Series:
    mask = pd.Series(True, index=rows.index)
    for key, value in where.items():
        mask &= rows[key] == value
    assert mask.sum() == 1, (where, rows[mask])
    return rows[mask].iloc[0]


def _feats(encoder, paths, mode="resize"):
    return encoder.encode_images([open_image(Path(p)) for p in paths], mode)


def _pairs(leak, prompt_class, prompt):
    manifest = pd.read_parquet(leak["images"] / "manifest.parquet")
    base = pd.read_parquet(leak["base"] / "manifest.parquet")
    sel = manifest[(manifest["prompt_class"] == prompt_class) & (manifest["prompt"] == prompt)]
    pairs = sel.merge(base[["prompt", "seed", "file", "prompt_class"]], on=["prompt_class", "prompt", "seed"],
                      suffixes=("", "_base"))  # fmt: skip
    return (
        [leak["images"] / f for f in pairs["file"]],
        [leak["base"] / f for f in pairs["file_base"]],
        pairs["clip_text"].tolist(),
    )


def test_tiers_are_rows_and_leakage_matches_direct_computation(leak, demo_dataset_dir, tiny_encoders):
    from lyco_bench.data import load_dataset
    from lyco_bench.metrics.encoders import DinoV2Encoder

    rows = leak["rows"]
    dino = DinoV2Encoder(tiny_encoders["dino"], device="cpu", image_size=tiny_encoders["dino_image_size"])
    tuned, base, _ = _pairs(leak, "agnostic", "a photo of a lake")
    t, b = _feats(dino, tuned), _feats(dino, base)
    d = _one(rows, prompt_class="agnostic", category="", subclass="unrelated", metric="drift")
    assert d["n_images"] == 3 and d["mode"] == "" and d["encoder"] == "dinov2:dinov2"
    assert_close(d["value"], drift(b, t), rtol=1e-5, atol=1e-7)
    assert_close(d["std"], sample_std(drift_per_pair(b, t)), rtol=1e-4, atol=1e-7)
    k = _one(rows, prompt_class="agnostic", category="", subclass="unrelated", metric="kid")
    assert_close(k["value"], kid_of_features(b, t), rtol=1e-4, atol=1e-7) and math.isnan(k["std"])
    # intrusion: one row per concept of the dataset (global prompt), the tier before the key
    (leaf,) = load_dataset(demo_dataset_dir).find("shapes", "circle")
    ref = _feats(dino, [i.path for i in leaf.images], "padding")
    row = _one(rows, prompt_class="agnostic", category="", subclass="unrelated:shapes/circle", metric="intrusion",
               mode="padding")  # fmt: skip
    assert_close(row["value"], intrusion(ref, t, b), rtol=1e-5, atol=1e-7)
    assert_close(row["std"], sample_std(intrusion_per_pair(ref, t, b)), rtol=1e-4, atol=1e-7)
    keys = rows[(rows["metric"] == "intrusion") & (rows["category"] == "") & (rows["mode"] == "resize")][
        "subclass"
    ]
    assert sorted(keys) == [f"unrelated:{k}" for k in
                            ("patterns/checker", "patterns/stripes", "shapes/circle", "shapes/triangle")]  # fmt: skip
    # the category's tiers: "class" compared within the category; the untiered prompt has no twin
    cls = rows[(rows["metric"] == "intrusion") & (rows["category"] == "shapes") & (rows["mode"] == "resize")]
    assert sorted(cls["subclass"]) == ["class:shapes/circle", "class:shapes/triangle", "shapes/circle",
                                       "shapes/triangle"]  # fmt: skip
    lone = _one(rows, prompt_class="agnostic", category="shapes", subclass="", metric="drift")
    assert math.isnan(lone["value"]) and lone["reason"] == "no base-model image with the same prompt and seed"
    assert _pick_empty(rows, prompt_class="agnostic", metric="image_similarity")


def _pick_empty(rows, **where) -> bool:
    mask = pd.Series(True, index=rows.index)
    for key, value in where.items():
        mask &= rows[key] == value
    return not mask.any()


def test_composition_from_the_image_similarity_rows(leak):
    rows = leak["rows"]
    for mode in ("resize", "padding"):
        sims = {
            key: _one(
                rows,
                prompt_class="combine",
                concept="circle+checker",
                subclass=key,
                mode=mode,
                metric="image_similarity",
            )["value"]  # fmt: skip
            for key in ("shapes/circle", "patterns/checker")
        }
        low = _one(rows, prompt_class="combine", concept="circle+checker", subclass="", mode=mode,
                   metric="composition_min")  # fmt: skip
        assert low["value"] == min(sims.values()) and low["n_images"] == 3 and math.isnan(low["std"])
        for key, (cat, concept) in {"shapes/circle": ("shapes", "circle"),
                                    "patterns/checker": ("patterns", "checker")}.items():  # fmt: skip
            single = _one(rows, prompt_class="trigger", category=cat, concept=concept, subclass="", mode=mode,
                          metric="image_similarity")["value"]  # fmt: skip
            drop = _one(rows, prompt_class="combine", concept="circle+checker", subclass=key, mode=mode,
                        metric="composition_drop")  # fmt: skip
            assert_close(drop["value"], single - sims[key], rtol=1e-9, atol=1e-12)
    assert not (
        rows["metric"].isin(["composition_min", "composition_drop"]) & (rows["prompt_class"] != "combine")
    ).any()


def test_hps_delta_paired_for_the_base_models_classes(leak, tiny_encoders):
    rows = leak["rows"]
    hps_rows = rows[rows["metric"] == "hps_delta"]
    # the base model drew <agnostic> and <trigger> images only: no <combine> row
    assert set(hps_rows["prompt_class"]) == {"agnostic", "trigger"}
    assert set(hps_rows["encoder"]) == {"hps:hps/hps-v2.1.pt"}
    hps = HpsEncoder(tiny_encoders["hps"], tiny_encoders["hps_checkpoint"], device="cpu")
    tuned, base, texts = _pairs(leak, "agnostic", "a photo of a lake")
    t, b, txt = _feats(hps, tuned), _feats(hps, base), hps.encode_texts(texts)
    row = _one(rows, prompt_class="agnostic", category="", subclass="unrelated", metric="hps_delta")
    assert_close(row["value"], hps_delta(t, b, txt), rtol=1e-5, atol=1e-7)
    assert_close(row["std"], sample_std(hps_per_pair(t, b, txt)), rtol=1e-4, atol=1e-7)
    assert row["n_images"] == 3


def test_new_metrics_encode_only_what_they_read(leak, demo_dataset_dir):
    """DINOv2: the combine and trigger images, the agnostic ones with a base twin, those twins and
    the dataset (once per canonical mode); HPS: each paired image, its twin and its text."""
    from lyco_bench.data import load_dataset

    manifest = pd.read_parquet(leak["images"] / "manifest.parquet")
    base = pd.read_parquet(leak["base"] / "manifest.parquet")
    twins = manifest.merge(base[["prompt_class", "prompt", "seed"]], on=["prompt_class", "prompt", "seed"])
    tuned = (manifest["prompt_class"].isin(["combine", "trigger"])).sum() + (
        twins["prompt_class"] == "agnostic"
    ).sum()
    sizes = [Image.open(item.path).size for _, item in load_dataset(demo_dataset_dir).items()]
    dataset = sum(1 if w == h else 2 for w, h in sizes)  # resize and padding
    passes = leak["passes"]
    assert set(passes) == {"dinov2", "hps", "hps-text"}  # no VGG, no CLIP
    assert passes["dinov2"] == tuned + (base["prompt_class"] == "agnostic").sum() + dataset
    assert passes["hps"] == 2 * len(twins)  # every test image is distinct noise
    assert passes["hps-text"] == len(set(twins["clip_text"]))


def test_without_base_images_paired_metrics_are_nan_with_a_reason(leak, demo_dataset_dir, tmp_path):
    rows = score(
        images_dir=leak["images"], dataset=demo_dataset_dir, encoders=leak["settings"], cache_dir=tmp_path,
        metrics=["intrusion", "drift", "kid", "hps_delta"],
    )  # fmt: skip
    assert rows["value"].isna().all()
    own = rows[rows["reason"] != "no concept with a defined value"]  # category rows: means of those
    assert set(own["reason"]) == {"no base-model images (--base-images)"}
    assert set(own["metric"]) == {"intrusion", "drift", "kid", "hps_delta"}
    assert not list(tmp_path.rglob("*hps*"))  # nothing was encoded


def test_planner_selection_follows_the_registry():
    """The sweep asks the registry: paired metrics read base images with their encoders (in every
    reference mode only when compared with the dataset); hps_delta is not a default."""

    from lyco_bench.sweep.inputs import needed_kinds, resolve_metrics
    from lyco_bench.sweep.planner import base_modes

    defaults = resolve_metrics(None, source="study.yaml")
    assert "hps_delta" not in defaults and {"intrusion", "drift", "kid", "composition_min"} <= set(defaults)
    assert needed_kinds(["drift", "hps_delta", "style_loss_base"], ("dinov2",), reads="base") == [
        "dinov2", "vgg19", "hps",
    ]  # fmt: skip
    assert needed_kinds(["composition_drop", "kid"], ("dinov2",), reads="reference") == ["dinov2"]
    scoring = {"image_encoders": ["dinov2"], "modes": ["resize", "padding"]}
    assert base_modes(["drift", "kid"], "dinov2", scoring) == ["resize"]
    assert base_modes(["drift", "intrusion"], "dinov2", scoring) == ["resize", "padding"]
    assert base_modes(["hps_delta"], "hps", scoring) == ["native"]
