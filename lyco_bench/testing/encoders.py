"""The conformance check of an encoder kind (:class:`~lyco_bench.metrics.encoders.EncoderKind`).

:func:`check_encoder` builds the kind's tiny random weights (``make_tiny``, what ``tiny:`` builds)
into a temporary folder, loads them through the kind's own loader via the pipeline's
:class:`~lyco_bench.metrics.features.EncoderPool`, encodes a few drawn pictures of different shapes
with :func:`~lyco_bench.metrics.features.image_features` (and texts, for a text tower), and checks:

* settings: its settings model builds with its defaults, names its weights field and path fields,
  and the study-level ``EncoderSettings`` takes the tiny build's fields and refuses a wrong type;
* identity: the same settings give the same id (twice, and from a copy); other weights (the tiny
  build of another seed) and another precision give other ids;
* loads: the tiny build loads and encodes through the same loader as real weights;
* feature size: features are (N, ``feature_dim(fields, tiny=True)``), texts too for a text tower;
* finite and deterministic: no NaN/inf, and a second pool (a fresh load, an empty cache) gives
  the same features bit for bit;
* precision: under ``precision: bfloat16`` the forward runs in bfloat16 autocast (its features
  differ from float32's, and stay close: cosine ≥ 0.9);
* source check: weights that do not exist are refused by ``check_source`` with one line naming
  the path (and ``pin`` asks nothing of local weights).

A property a kind cannot meet for a documented reason is passed in ``exempt`` (property → reason).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from lyco_bench.testing.common import Failure

PROPERTIES = (
    "settings", "identity", "loads", "feature size", "finite", "deterministic", "precision", "source check",
)  # fmt: skip
PICTURES = ((40, 40), (48, 32), (30, 45))  # (width, height): square, landscape, portrait
TEXTS = ("a photo of a red circle", "a blue square on a plain background")


def check_encoder(
    kind: Any, *, fields: Mapping[str, Any] | None = None, exempt: Mapping[str, str] | None = None
) -> None:
    """Check the properties of the module docstring; AssertionError naming the encoder and the
    failed property. ``fields``: settings fields of small weights to check instead of the kind's
    tiny build (for a kind without ``make_tiny``)."""
    from lyco_bench.metrics.encoders import EncoderKind

    if not isinstance(kind, EncoderKind):
        raise AssertionError(f"{kind!r}: not an EncoderKind")
    fail = Failure(f"encoder {kind.name}")
    skip = _exempt(exempt or {}, fail)
    with _as_registered(kind), tempfile.TemporaryDirectory(prefix="lyco-bench-encoder-check-") as tmp:
        root = Path(tmp)
        own = _tiny_fields(kind, root / "seed0", 0, fields, fail.prop("loads"))
        _check_settings(kind, own, fail.prop("settings"))
        settings = _settings(own, precision="float32")
        if "identity" not in skip:
            other = (
                _tiny_fields(kind, root / "seed1", 1, None, fail.prop("identity")) if fields is None else None
            )
            _check_identity(kind, settings, other, "precision" not in skip, fail.prop("identity"))
        pictures = _pictures(root / "pictures")
        feats = _encode(kind, settings, pictures, root / "cache-a", fail.prop("loads"))
        _check_features(kind, own, feats, fail, skip)
        if "deterministic" not in skip:
            again = _encode(kind, settings, pictures, root / "cache-b", fail.prop("loads"))
            for what, a in feats.items():
                if not torch.equal(a, again[what]):
                    fail.prop("deterministic")(
                        f"{what} features differ between two loads of the same weights"
                    )
        if "precision" not in skip:
            _check_precision(kind, own, pictures, feats["image"], root / "cache-c", fail.prop("precision"))
        if "source check" not in skip:
            _check_source(kind, settings, root / "missing", fail.prop("source check"))


@contextlib.contextmanager
def _as_registered(kind: Any) -> Iterator[None]:
    """The pipeline finds encoders by name: ``kind`` stands for its name during the check (a
    registered kind of that name is put back afterwards)."""
    from lyco_bench.metrics.encoders import ENCODERS

    known = ENCODERS.get(kind.name)
    if known is kind:
        yield
        return
    ENCODERS.unregister(kind.name)
    ENCODERS.register(kind.name, kind)
    try:
        yield
    finally:
        ENCODERS.unregister(kind.name)
        if known is not None:
            ENCODERS.register(kind.name, known)


def _exempt(exempt: Mapping[str, str], fail: Failure) -> set[str]:
    for name, reason in exempt.items():
        if name not in PROPERTIES:
            fail.prop("exempt")(f"unknown property {name!r} (known: {', '.join(PROPERTIES)})")
        if not str(reason).strip():
            fail.prop("exempt")(f"{name!r} is exempt without a reason")
    return set(exempt)


def _tiny_fields(kind: Any, folder: Path, seed: int, given: Mapping[str, Any] | None, fail: Failure) -> dict:
    if given is not None:
        return dict(given)
    if kind.make_tiny is None:
        fail("no tiny build (make_tiny) and no fields given to check with")
    folder.mkdir(parents=True)
    made = dict(kind.make_tiny(folder, seed))
    if kind.weights_field not in made:
        fail(f"make_tiny returned {sorted(made)}, without the weights field {kind.weights_field!r}")
    return made


def _settings(fields: Mapping[str, Any], **extra: Any) -> Any:
    from lyco_bench.metrics.features import EncoderSettings

    return EncoderSettings(**{**fields, "device": "cpu", "batch_size": 2, **extra})


def _check_settings(kind: Any, fields: Mapping[str, Any], fail: Failure) -> None:
    from pydantic import ValidationError

    own = kind.settings.model_fields
    try:
        kind.settings()
    except ValidationError as exc:
        fail(f"its settings model does not build with its defaults ({exc.errors()[0]['msg']})")
    if kind.weights_field not in own:
        fail(f"weights field {kind.weights_field!r} is not one of its settings {sorted(own)}")
    stray = [f for f in kind.path_fields if f not in own]
    if stray:
        fail(f"path fields {stray} are not among its settings {sorted(own)}")
    try:
        _settings(fields)
    except ValidationError as exc:
        fail(f"EncoderSettings refuses the tiny build's fields ({exc.errors()[0]['msg']})")
    try:
        _settings(fields, **{kind.weights_field: ["not", "a", "path"]})
    except ValidationError:
        pass
    else:
        fail(f"EncoderSettings takes a list as {kind.weights_field!r}: the field is not validated")


def _check_identity(
    kind: Any, settings: Any, other: Mapping[str, Any] | None, precision: bool, fail: Failure
) -> None:
    first = kind.identity(settings)
    if not isinstance(first, str) or not first:
        fail(f"identity is {first!r}, not a non-empty string")
    if kind.identity(settings) != first or kind.identity(settings.model_copy(deep=True)) != first:
        fail("the same settings give another id on a second call")
    if other is not None and kind.identity(_settings(other, precision="float32")) == first:
        fail(f"other weights (the tiny build of another seed) keep the id {first!r}")
    if precision and kind.identity(settings.model_copy(update={"precision": "bfloat16"})) == first:
        fail(f"precision bfloat16 keeps the float32 id {first!r} (cached features would mix)")


def _pictures(folder: Path) -> list[Path]:
    """Seeded random pictures of three shapes, as PNG files (what the pipeline reads)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate(PICTURES):
        path = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _encode(kind: Any, settings: Any, pictures: list[Path], cache_dir: Path, fail: Failure) -> dict:
    """Image (and text) features through a fresh pool and an empty cache."""
    from lyco_bench.metrics.cache import FeatureCache
    from lyco_bench.metrics.features import EncoderPool, image_features, text_features

    pool = EncoderPool(settings)
    cache = FeatureCache(cache_dir)
    try:
        out = {"image": image_features(pool, kind.name, pictures, mode="resize", cache=cache)}
        if kind.text:
            out["text"] = text_features(pool, list(TEXTS), cache=cache, kind=kind.name)
    except Exception as exc:  # noqa: BLE001 - whatever the plug-in raises is its failure
        fail(f"encoding its tiny build failed: {type(exc).__name__}: {exc}")
    if pool.loads != [kind.name]:
        fail(f"the pool loaded {pool.loads}, expected the kind once")
    return out


def _check_features(kind: Any, fields: Mapping[str, Any], feats: dict, fail: Failure, skip: set[str]) -> None:
    dim = kind.feature_dim(dict(fields), True)
    for what, f in feats.items():
        n = len(PICTURES) if what == "image" else len(TEXTS)
        if "feature size" not in skip and tuple(f.shape) != (n, dim):
            fail.prop("feature size")(f"{what} features have shape {tuple(f.shape)}, declared ({n}, {dim})")
        if "finite" not in skip and not torch.isfinite(f).all():
            fail.prop("finite")(f"{what} features hold NaN or inf")


def _check_precision(
    kind: Any, fields: Mapping[str, Any], pictures: list[Path], full: torch.Tensor, cache: Path, fail: Failure
) -> None:
    half = _encode(kind, _settings(fields, precision="bfloat16"), pictures, cache, fail)["image"]
    if torch.equal(half.float(), full.float()):
        fail("bfloat16 gives the float32 features bit for bit: the forward ignores encoders.precision")
    cos = torch.nn.functional.cosine_similarity(half.double(), full.double(), dim=1)
    if not bool((cos >= 0.9).all()):
        fail(f"bfloat16 features are far from float32's (cosine {float(cos.min()):.3f} < 0.9)")


def _check_source(kind: Any, settings: Any, missing: Path, fail: Failure) -> None:
    from lyco_bench.errors import BadInput

    if kind.pin is not None and kind.pin(settings):
        fail(f"pin asks to rewrite local weights: {kind.pin(settings)}")
    gone = settings.model_copy(update={kind.weights_field: str(missing)})
    try:
        kind.check_source(gone)
    except BadInput as exc:
        message = str(exc)
        if "\n" in message or str(missing) not in message:
            fail(f"the refusal is not one line naming {missing}: {message!r}")
        return
    fail(f"weights {missing} that do not exist are accepted")
