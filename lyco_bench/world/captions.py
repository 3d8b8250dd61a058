"""Tag captions for world pictures, in the kohya convention: comma-separated tags.

Base-world pictures are tagged ``red circle, large, white background, flat color`` (a pair:
``green cross, yellow square, small, …``). Held-out
pictures carry their concept tags first (stripped by the ``tags`` caption strategy, as a tagger's
concept-specific tags are) and then the generic ones. During pretraining every caption is varied
(tags dropped, shuffled, an article added, sometimes emptied for classifier-free guidance), so the
base model follows partial prompts in any order: ``a red circle``, ``black background, small blue
cross``.
"""

from __future__ import annotations

import numpy as np

from lyco_bench.world.draw import HELD_OUT_STYLE, STYLES, Scene

# Concept tags of the held-out concepts (what a tagger would say about them; stripped in training).
ROBOT_TAGS = ["robot", "red head", "blue body"]
DOLL_TAGS = ["doll", "yellow face"]
COMIC_TAGS = ["comic style", "cream background", "black outline"]


def object_tag(scene: Scene) -> str:
    return f"{scene.colour} {scene.shape}"


def concept_tags(scene: Scene) -> list[str]:
    """The tags specific to a held-out concept (empty for base-world pictures)."""
    if scene.kind == "robot":
        return list(ROBOT_TAGS)
    if scene.kind == "doll":
        return [*DOLL_TAGS, f"{scene.hat} hat"]
    if scene.style == HELD_OUT_STYLE:
        return list(COMIC_TAGS)
    return []


def object_tags(scene: Scene) -> list[str]:
    """The objects' tags: one for an object, two for a pair (left one first), none for a character."""
    if scene.kind == "object":
        return [object_tag(scene)]
    if scene.kind == "pair":
        return [object_tag(scene), f"{scene.colour2} {scene.shape2}"]
    return []


def generic_tags(scene: Scene) -> list[str]:
    """The tags any picture of the world gets: objects, size, background, rendering."""
    if scene.kind not in ("object", "pair"):
        return [scene.size, f"{scene.background} background"]
    if scene.style == HELD_OUT_STYLE:
        return [*object_tags(scene), scene.size]
    return [*object_tags(scene), scene.size, f"{scene.background} background", STYLES[scene.style]]


def caption_tags(scene: Scene) -> list[str]:
    """All tags of a picture, concept tags first (what a dataset .txt file holds)."""
    return [*concept_tags(scene), *generic_tags(scene)]


def descriptive_caption(scene: Scene) -> str:
    """A caption naming everything in plain words (the evaluators' training text)."""
    return ", ".join(caption_tags(scene))


def varied_caption(scene: Scene, rng: np.random.Generator, *, drop: float = 0.25, empty: float = 0.1) -> str:
    """A pretraining caption: each tag but the objects' (and a concept's first) dropped with
    probability ``drop``, the first object tag sometimes with an article, the order shuffled half
    of the time, the whole caption empty with probability ``empty`` (the unconditional branch of
    classifier-free guidance). Object tags are never dropped: ``a red circle`` means one object.

    Always 3 draws from ``rng`` plus two per tag, so captions of different pictures do not
    shift one another's draws.
    """
    tags = caption_tags(scene)
    u_empty, u_article, u_shuffle = rng.random(3)
    keep = rng.random(len(tags)) >= drop
    keys = rng.random(len(tags))
    if u_empty < empty:
        return ""
    # The objects (or the concept's first tag) are always said.
    always = {0, *range(len(concept_tags(scene)), len(concept_tags(scene)) + len(object_tags(scene)))}
    chosen = [i for i in range(len(tags)) if i in always or keep[i]]
    if u_shuffle < 0.5:
        chosen.sort(key=lambda i: keys[i])
    words = [f"a {tags[i]}" if i == 0 and u_article < 0.3 else tags[i] for i in chosen]
    return ", ".join(words)
