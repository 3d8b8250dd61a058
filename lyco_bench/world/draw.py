"""The world's pictures: one big plain shape (or a composite character) on a plain background.

Everything is drawn from a :class:`Scene` (what is in the picture, in pixels), so a picture and its
labels (for the classifier, the evaluators and the captions) never disagree. Drawing is NumPy +
SciPy + Pillow arithmetic at 4× supersampling, box-filtered down: the same scene gives the same
bytes on every machine with the same Pillow/NumPy/SciPy.

The base world (what the base model is pretrained on): 4 shapes × 5 colours × 2 sizes × 3
backgrounds × 3 renderings, and pairs of two small objects anywhere on the canvas (so the base
model knows pictures with two differently coloured parts, as SD knows the parts its characters
are made of). Held out (the demo's fine-tuning concepts, never shown to the base
UNet or text encoder): two composite characters — the robot (a red circle head on a blue square
body) and the doll (a yellow face with two eyes under a hat, in two outfits: red hat, blue hat) —
and a rendering, the comic style (cream paper, shapes filled and ringed in black).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

CANVAS = 64
"""Side of every world picture in pixels (the demo's bucket resolution)."""
SUPERSAMPLE = 4

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {
    "red": (220, 40, 40),
    "yellow": (240, 200, 30),
    "green": (40, 160, 60),
    "blue": (40, 80, 220),
    "purple": (150, 60, 190),
}
BACKGROUNDS = {"white": (240, 240, 240), "grey": (128, 128, 128), "black": (25, 25, 25)}
SIZES = {"large": (38, 50), "small": (20, 28)}  # shape side in pixels, inclusive range
CHARACTER_SIZES = {"large": (46, 56), "small": (28, 34)}
# Base renderings: their tags, and how often each is drawn.
STYLES = {"flat": "flat color", "outline": "outline drawing", "shadow": "drop shadow"}
STYLE_WEIGHTS = {"flat": 0.5, "outline": 0.25, "shadow": 0.25}
SHADOW_RGB = (70, 70, 70)

# Held-out concepts.
KINDS = ("object", "pair", "robot", "doll")  # object: one shape, pair: two; then the characters
PAIR_SIZES = (16, 24)  # two boxes of the largest size still fit apart
PAIR_SHARE = 0.3  # of base-world pictures
# Pairs that look like a character's parts are never drawn in the base world.
HELD_OUT_PAIRS = {
    frozenset({("red", "circle"), ("blue", "square")}),
    frozenset({("yellow", "circle"), ("red", "triangle")}),
    frozenset({("yellow", "circle"), ("blue", "triangle")}),
}
HELD_OUT_STYLE = "comic"
COMIC_PAPER_RGB = (245, 228, 180)
INK_RGB = (15, 15, 15)
HATS = {"red": (220, 40, 40), "blue": (40, 80, 220)}
ROBOT_HEAD, ROBOT_BODY = COLOURS["red"], COLOURS["blue"]
DOLL_FACE = COLOURS["yellow"]

ALL_STYLES = (*STYLES, HELD_OUT_STYLE)
ALL_BACKGROUNDS = (*BACKGROUNDS, "cream")


@dataclass(frozen=True)
class Scene:
    """What one picture shows. ``side`` is the object's (or character's) height in pixels and
    (cx, cy) its centre; ``shape``/``colour`` describe an object (empty for characters), ``hat``
    the doll's outfit (empty otherwise); a pair's second object is ``shape2``/``colour2``/
    ``side2``/(``cx2``, ``cy2``), the first being the one further left."""

    kind: str = "object"
    shape: str = ""
    colour: str = ""
    size: str = "large"
    background: str = "white"
    style: str = "flat"
    side: int = 40
    cx: float = 32.0
    cy: float = 32.0
    hat: str = ""
    shape2: str = ""
    colour2: str = ""
    side2: int = 0
    cx2: float = 0.0
    cy2: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


# --- sampling scenes -------------------------------------------------------------------------
def _position(rng: np.random.Generator, side: int, width: float) -> tuple[float, float]:
    """A centre that keeps a side×side box (width×side for characters) 2 px inside the canvas."""
    half_w, half_h = width / 2, side / 2
    cx = float(rng.uniform(half_w + 2, CANVAS - half_w - 2))
    cy = float(rng.uniform(half_h + 2, CANVAS - half_h - 2))
    return round(cx, 2), round(cy, 2)


def sample_object(rng: np.random.Generator, *, style: str | None = None) -> Scene:
    """A base-world object scene (or one in ``style``, e.g. the held-out comic style)."""
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
    size = list(SIZES)[int(rng.integers(len(SIZES)))]
    lo, hi = SIZES[size]
    side = int(rng.integers(lo, hi + 1))
    if style is None:
        names = list(STYLE_WEIGHTS)
        style = names[int(rng.choice(len(names), p=list(STYLE_WEIGHTS.values())))]
    background = (
        "cream" if style == HELD_OUT_STYLE else list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    )
    extra = side / 8 if style == "shadow" else 0.0  # the shadow sticks out down-right
    cx, cy = _position(rng, int(round(side + extra)), side + extra)
    if extra:
        cx, cy = round(cx - extra / 2, 2), round(cy - extra / 2, 2)
    return Scene("object", shape, colour, size, background, style, side, cx, cy)


def sample_pair(rng: np.random.Generator) -> Scene:
    """Two small objects of different colours, apart, anywhere (never a character's two parts)."""
    names = list(COLOURS)
    while True:
        (s1, s2), (c1, c2) = rng.integers(len(SHAPES), size=2), rng.choice(len(names), size=2, replace=False)
        parts = frozenset({(names[int(c1)], SHAPES[int(s1)]), (names[int(c2)], SHAPES[int(s2)])})
        if parts not in HELD_OUT_PAIRS:
            break
    sides = rng.integers(PAIR_SIZES[0], PAIR_SIZES[1] + 1, size=2)
    weights = list(STYLE_WEIGHTS.values())
    style = list(STYLE_WEIGHTS)[int(rng.choice(len(weights), p=weights))]
    background = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    extra = 1.125 if style == "shadow" else 1.0
    while True:  # the second box must not touch the first (1 px apart)
        a = _position(rng, int(round(sides[0] * extra)), sides[0] * extra)
        b = _position(rng, int(round(sides[1] * extra)), sides[1] * extra)
        gap = (sides[0] + sides[1]) * extra / 2 + 1
        if abs(a[0] - b[0]) >= gap or abs(a[1] - b[1]) >= gap:
            break
    objs = sorted(
        [
            (a, int(sides[0]), SHAPES[int(s1)], names[int(c1)]),
            (b, int(sides[1]), SHAPES[int(s2)], names[int(c2)]),
        ],
        key=lambda o: (o[0][0], o[0][1]),
    )
    (p1, side1, shape1, colour1), (p2, side2, shape2, colour2) = objs
    size = "small"
    return Scene("pair", shape1, colour1, size, background, style, side1, p1[0], p1[1], "",
                 shape2, colour2, side2, p2[0], p2[1])  # fmt: skip


def sample_base(rng: np.random.Generator) -> Scene:
    """A base-world picture: an object, or a pair (PAIR_SHARE of the time)."""
    return sample_pair(rng) if rng.random() < PAIR_SHARE else sample_object(rng)


def sample_character(rng: np.random.Generator, kind: str, *, hat: str | None = None) -> Scene:
    """A held-out character scene (robot or doll) on a base background, drawn flat."""
    if kind not in ("robot", "doll"):
        raise ValueError(f"kind {kind!r}: expected robot or doll")
    size = list(CHARACTER_SIZES)[int(rng.integers(len(CHARACTER_SIZES)))]
    lo, hi = CHARACTER_SIZES[size]
    side = int(rng.integers(lo, hi + 1))
    background = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    if kind == "doll" and hat is None:
        hat = list(HATS)[int(rng.integers(len(HATS)))]
    width = side * (0.56 if kind == "robot" else 0.62)
    cx, cy = _position(rng, side, width)
    return Scene(kind, "", "", size, background, "flat", side, cx, cy, hat or "")


# --- drawing ---------------------------------------------------------------------------------
def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    # Pixel centres of the supersampled canvas, in canvas pixel units.
    c = (np.arange(n, dtype=np.float64) + 0.5) / SUPERSAMPLE
    return np.meshgrid(c, c, indexing="xy")  # x, y: (n, n)


def shape_mask(shape: str, cx: float, cy: float, side: float, n: int) -> np.ndarray:
    """Boolean (n, n) mask of a shape of bounding side ``side`` centred at (cx, cy)."""
    x, y = _grid(n)
    h = side / 2
    if shape == "circle":
        return (x - cx) ** 2 + (y - cy) ** 2 <= h * h
    if shape == "square":
        return (np.abs(x - cx) <= h) & (np.abs(y - cy) <= h)
    if shape == "triangle":  # apex up, base at the bottom of the box
        top, bottom = cy - h, cy + h
        frac = (y - top) / side  # 0 at the apex, 1 at the base
        return (y >= top) & (y <= bottom) & (np.abs(x - cx) <= h * frac)
    if shape == "cross":
        arm = side / 6
        box = (np.abs(x - cx) <= h) & (np.abs(y - cy) <= h)
        return box & ((np.abs(x - cx) <= arm) | (np.abs(y - cy) <= arm))
    raise ValueError(f"shape {shape!r}: expected one of {', '.join(SHAPES)}")


def _inner(mask: np.ndarray, width_px: float) -> np.ndarray:
    """Points of ``mask`` deeper than ``width_px`` canvas pixels from its edge (a round erosion)."""
    from scipy.ndimage import distance_transform_edt

    return distance_transform_edt(mask) > width_px * SUPERSAMPLE


def _paint(canvas: np.ndarray, mask: np.ndarray, rgb) -> None:
    canvas[mask] = np.asarray(rgb, dtype=np.float64)


def _ring_width(side: float) -> float:
    return max(3.0, side / 7)


def _draw_object(
    canvas: np.ndarray, shape: str, colour: str, style: str, s: float, cx: float, cy: float
) -> None:
    n = canvas.shape[0]
    rgb = COLOURS[colour]
    mask = shape_mask(shape, cx, cy, s, n)
    if style == "flat":
        _paint(canvas, mask, rgb)
    elif style == "outline":
        _paint(canvas, mask & ~_inner(mask, _ring_width(s)), rgb)
    elif style == "shadow":
        d = s / 8
        _paint(canvas, shape_mask(shape, cx + d, cy + d, s, n), SHADOW_RGB)
        _paint(canvas, mask, rgb)
    elif style == HELD_OUT_STYLE:
        _paint(canvas, mask, rgb)
        _paint(canvas, mask & ~_inner(mask, _ring_width(s) * 0.7), INK_RGB)
    else:
        raise ValueError(f"style {style!r}: expected one of {', '.join(ALL_STYLES)}")


def draw_scene(scene: Scene):
    """The scene as a 64×64 RGB PIL image."""
    from PIL import Image

    n = CANVAS * SUPERSAMPLE
    bg = COMIC_PAPER_RGB if scene.background == "cream" else BACKGROUNDS[scene.background]
    canvas = np.empty((n, n, 3), dtype=np.float64)
    canvas[:] = np.asarray(bg, dtype=np.float64)
    s, cx, cy = float(scene.side), scene.cx, scene.cy
    if scene.kind == "object":
        _draw_object(canvas, scene.shape, scene.colour, scene.style, s, cx, cy)
    elif scene.kind == "pair":
        _draw_object(canvas, scene.shape, scene.colour, scene.style, s, cx, cy)
        _draw_object(
            canvas, scene.shape2, scene.colour2, scene.style, float(scene.side2), scene.cx2, scene.cy2
        )
    elif scene.kind == "robot":
        # A red round head on a blue square body, stacked in a side-tall box.
        body, head = 0.56 * s, 0.44 * s
        top = cy - s / 2
        _paint(canvas, shape_mask("square", cx, top + head + body / 2, body, n), ROBOT_BODY)
        _paint(canvas, shape_mask("circle", cx, top + head / 2 + 0.02 * s, head, n), ROBOT_HEAD)
    elif scene.kind == "doll":
        # A yellow face with two dark eyes under a triangular hat.
        face, hat_h = 0.62 * s, 0.38 * s
        top = cy - s / 2
        fy = top + hat_h + face / 2
        _paint(canvas, shape_mask("circle", cx, fy, face, n), DOLL_FACE)
        x, y = _grid(n)
        hat_base = top + hat_h + 0.06 * s  # the brim overlaps the face a little
        frac = (y - top) / (hat_base - top)
        hat_mask = (y >= top) & (y <= hat_base) & (np.abs(x - cx) <= (face / 2) * frac)
        _paint(canvas, hat_mask, HATS[scene.hat])
        eye = max(2.2, 0.075 * s)
        for dx in (-0.14 * s, 0.14 * s):
            _paint(canvas, shape_mask("circle", cx + dx, fy + 0.02 * s, eye, n), INK_RGB)
    else:
        raise ValueError(f"kind {scene.kind!r}: expected one of {', '.join(KINDS)}")
    small = canvas.reshape(CANVAS, SUPERSAMPLE, CANVAS, SUPERSAMPLE, 3).mean(axis=(1, 3))
    return Image.fromarray(np.clip(np.round(small), 0, 255).astype(np.uint8), "RGB")


def image_array(scene: Scene) -> np.ndarray:
    """(64, 64, 3) uint8 pixels of the scene."""
    return np.asarray(draw_scene(scene))
