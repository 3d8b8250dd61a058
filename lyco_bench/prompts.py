"""Prompt sets: versioned YAML files expanded into the images to generate.

The shipped sets live in the package (``lyco_bench/prompt_sets/*.yaml``: ``lyco-v1``, ``demo``);
a ``./prompts/<name>.yaml`` in the working folder is found first, so a set can be copied and edited.
A prompt set names, per dataset category, the prompts of each prompt class of the paper (§4):

- ``train``: the concept's training captions (caption strategy of the set), cycled over the images;
- ``trigger``: the trigger alone, plus a per-category suffix (the paper's "rune woman, realistic");
- ``alter``: content-changing templates (``{}`` = trigger), per category or per concept, inline or
  read from a text file with one template per line (the paper's ``prompt-templates/`` work as is);
- ``style``: "{} in the style of …" templates, skipped for categories marked ``is_style``;
- ``agnostic``: prompts without any trigger, global and per category, to measure concept leakage
  and drift; an entry is a string or ``{prompt, tier}``, the tier saying how close the prompt is
  to the concepts (``class``: their class words, ``related``, ``unrelated``) — it becomes the
  item's ``subclass``, so each tier is scored as its own group;
- ``combine``: two concepts in one image (``{a}``/``{b}``), from one model or, with
  ``combine_with``, from two datasets whose adapters are merged together at generation.

Seeds follow the paper: the i-th image of a prompt gets ``seed_base + i``, so the base model and
every checkpoint sample the same noise for the same item. For ``train`` the "prompt" is the
concept's whole caption list (the paper's per-concept prompt file): image j uses caption
j mod n and seed ``seed_base + j``.
"""

from __future__ import annotations

import itertools
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from lyco_bench.config import StrictModel, read_yaml, validate
from lyco_bench.errors import BadInput

PromptClass = Literal["train", "trigger", "alter", "style", "agnostic", "combine", "class"]
"""``class``: a concept's class prompt, drawn by the base model for prior preservation (not in
prompt sets; the sweep makes these items itself)."""
PROMPT_CLASSES: tuple[str, ...] = ("train", "trigger", "alter", "style", "agnostic", "combine")
PROMPTS_DIR = Path(__file__).resolve().parent / "prompt_sets"
"""The prompt sets shipped with the package (inside it, so a wheel install has them too)."""
LOCAL_PROMPTS_DIR = "prompts"
"""Looked up first, relative to the working folder: ``./prompts/<name>.yaml``."""
DEFAULT_PROMPT_SET = "lyco-v1"
"""What the name ``default`` stands for."""


class TemplateSource(StrictModel):
    """Alter templates, given inline (``alter``) or as a file (``templates_file``), not both."""

    alter: list[str] | None = None
    """Templates with one ``{}`` where the trigger goes."""
    templates_file: str | None = None
    """A text file with one template per line; relative paths are relative to the YAML file."""

    @model_validator(mode="after")
    def _one_source(self) -> TemplateSource:
        if self.alter is not None and self.templates_file is not None:
            raise ValueError("give either alter or templates_file, not both")
        return self


AgnosticTier = Literal["class", "related", "unrelated"]


class AgnosticPrompt(StrictModel):
    """A concept-agnostic prompt with its tier (how close it is to the concepts)."""

    prompt: str
    tier: AgnosticTier
    """``class``: the concepts' class words ("a woman"); ``related``: the same domain; ``unrelated``."""


AgnosticEntry = str | AgnosticPrompt


def agnostic_entries(entries: list[AgnosticEntry]) -> list[tuple[str, str]]:
    """(prompt, tier) of each entry; "" for a plain string (no tier)."""
    return [(e, "") if isinstance(e, str) else (e.prompt, e.tier) for e in entries]


class CategoryPrompts(TemplateSource):
    """The prompts of one dataset category (or of ``default_category``)."""

    trigger_suffix: str = ""
    """Appended to the trigger in ``trigger`` prompts (the paper: ", realistic" for people)."""
    is_style: bool = False
    """A style category: no ``style`` prompts (a style cannot be restyled)."""
    agnostic: list[AgnosticEntry] = Field(default_factory=list)
    """Category-level prompts without a trigger (leakage within the category), optionally tiered."""
    concepts: dict[str, TemplateSource] = Field(default_factory=dict)
    """Per-concept alter templates replacing the category's (the paper had one file per scene)."""


class ImageCounts(StrictModel):
    """Images per prompt of each class (``train``: per concept, cycling its captions)."""

    train: int = Field(100, ge=1)
    trigger: int = Field(100, ge=1)
    alter: int = Field(10, ge=1)
    style: int = Field(20, ge=1)
    agnostic: int = Field(10, ge=1)
    combine: int = Field(10, ge=1)


class CombineSettings(StrictModel):
    """Two concepts in one image."""

    templates: list[str] = Field(default_factory=lambda: ["{a} and {b}"])
    """Templates with ``{a}`` and ``{b}`` where the two triggers go."""
    pairs: list[tuple[str, str]] = Field(default_factory=list)
    """Concept keys ``category/concept[/subclass]``; empty: the first concept of each non-style
    category paired with that of every other one (cross-model: every first concept of A with
    every first concept of B)."""


class PromptSet(StrictModel):
    """A versioned prompt set; ``version`` is copied into every manifest and result row."""

    name: str
    version: str
    description: str = ""
    classes: list[PromptClass] = Field(default_factory=lambda: ["train", "trigger", "alter", "style"])
    """Classes generated when the caller names none."""
    images_per_prompt: ImageCounts = Field(default_factory=ImageCounts)
    caption_strategy: Literal["tags", "trigger", "all-tags"] = "tags"
    """How ``train`` prompts are captioned (lyco_bench.data.caption_for)."""
    style_templates: list[str] = Field(default_factory=list)
    agnostic: list[AgnosticEntry] = Field(default_factory=list)
    """Prompts without a trigger, for every dataset (leakage), optionally tiered."""
    categories: dict[str, CategoryPrompts] = Field(default_factory=dict)
    default_category: CategoryPrompts | None = None
    """Used for dataset categories not listed under ``categories``."""
    combine: CombineSettings = Field(default_factory=CombineSettings)
    source: str = ""
    """The YAML file it was read from (set by load_prompt_set)."""

    def category(self, name: str) -> CategoryPrompts:
        if name in self.categories:
            return self.categories[name]
        if self.default_category is not None:
            return self.default_category
        raise BadInput(f"{self.source or self.name}: categories: no entry for dataset category {name!r}")

    def alter_templates(self, category: str, concept: str) -> list[str]:
        cat = self.category(category)
        src = cat.concepts.get(concept, cat)
        return list(src.alter or [])


class PromptItem(StrictModel):
    """One image to generate (internals.md); ``relpath`` is where generation stores it."""

    prompt: str
    clip_text: str
    """The prompt with each trigger replaced by its concept's descriptive words (docs/protocol.md §5.1)."""
    prompt_class: PromptClass
    category: str
    """Category of the concept ("" for global agnostic prompts; "a+b" for combine if they differ)."""
    concept: str
    """Concept name ("" for agnostic prompts; "a+b" for combine)."""
    subclass: str | None
    prompt_index: int
    image_index: int
    seed: int
    group: str
    """Images scored together per prompt: ``<class>/<concept folder>/<prompt_index>`` (train:
    ``train/<concept folder>``, the whole caption list)."""
    concepts: tuple[str, ...] = ()
    """Keys ``category/concept[/subclass]`` of the concepts in the image (two for combine)."""

    @property
    def folder(self) -> str:
        return self.group.rsplit("/", 1)[0] if self.prompt_class != "train" else self.group

    @property
    def relpath(self) -> str:
        return f"{self.folder}/{self.prompt_index:03d}-{self.seed}.png"

    def with_seed_base(self, seed_base: int) -> PromptItem:
        return self.model_copy(update={"seed": seed_base + self.image_index})


# --- loading ------------------------------------------------------------------------------


def _template_file(path: str, *, base_dir: Path, field: str) -> list[str]:
    file = Path(path) if Path(path).is_absolute() else base_dir / path
    if not file.is_file():
        raise BadInput(f"{field}: templates_file {file}: no such file")
    lines = [line.strip() for line in file.read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines:
        raise BadInput(f"{file}: no templates")
    return lines


def _check_templates(templates: list[str], *, field: str, marks: tuple[str, ...]) -> None:
    for i, text in enumerate(templates):
        for mark in marks:
            if text.count(mark) != 1:
                raise BadInput(f"{field}.{i}: template {text!r} needs exactly one {mark} for the trigger")
        if not marks and "{}" in text:
            raise BadInput(f"{field}.{i}: {text!r} is concept-agnostic and must not contain {{}}")


def _resolve_source(src: TemplateSource, *, base_dir: Path, field: str) -> TemplateSource:
    if src.templates_file is None:
        return src
    lines = _template_file(src.templates_file, base_dir=base_dir, field=field)
    return src.model_copy(update={"alter": lines, "templates_file": None})


def _resolve_category(cat: CategoryPrompts, *, base_dir: Path, field: str) -> CategoryPrompts:
    cat = _resolve_source(cat, base_dir=base_dir, field=field)
    if not cat.alter:
        raise BadInput(f"{field}: no alter templates (give alter or templates_file)")
    _check_templates(cat.alter, field=f"{field}.alter", marks=("{}",))
    _check_templates([t for t, _ in agnostic_entries(cat.agnostic)], field=f"{field}.agnostic", marks=())
    concepts = {}
    for name, src in cat.concepts.items():
        sub = f"{field}.concepts.{name}"
        src = _resolve_source(src, base_dir=base_dir, field=sub)
        if not src.alter:
            raise BadInput(f"{sub}: no alter templates")
        _check_templates(src.alter, field=f"{sub}.alter", marks=("{}",))
        concepts[name] = src
    return cat.model_copy(update={"concepts": concepts})


def find_prompt_set(name_or_path: str | os.PathLike) -> Path:
    """A path as given, or a bare name: ``./prompts/<name>.yaml``, then the package's prompt sets."""
    text = str(name_or_path)
    path = Path(text)
    if path.suffix in (".yaml", ".yml") or os.sep in text or path.is_file():
        if not path.is_file():
            raise BadInput(f"{path}: no such prompt set file")
        return path
    if text == "default":
        text = DEFAULT_PROMPT_SET
    for folder in (Path.cwd() / LOCAL_PROMPTS_DIR, PROMPTS_DIR):
        candidate = folder / f"{text}.yaml"
        if candidate.is_file():
            return candidate
    known = ", ".join(sorted(p.stem for p in PROMPTS_DIR.glob("*.yaml"))) or "none"
    raise BadInput(f"prompt set {text!r}: not found (known: {known})")


def load_prompt_set(name_or_path: str | os.PathLike) -> PromptSet:
    """Read and check a prompt set; template files are read in, so the result is self-contained."""
    path = find_prompt_set(name_or_path)
    data: Any = read_yaml(path)
    if isinstance(data, dict) and "source" in data:
        raise BadInput(f"{path}: source: unknown key")
    ps = validate(PromptSet, data, source=str(path))
    base_dir = path.parent
    cats = {
        name: _resolve_category(cat, base_dir=base_dir, field=f"{path}: categories.{name}")
        for name, cat in ps.categories.items()
    }
    default = ps.default_category
    if default is not None:
        default = _resolve_category(default, base_dir=base_dir, field=f"{path}: default_category")
    _check_templates(ps.style_templates, field=f"{path}: style_templates", marks=("{}",))
    _check_templates([t for t, _ in agnostic_entries(ps.agnostic)], field=f"{path}: agnostic", marks=())
    _check_templates(ps.combine.templates, field=f"{path}: combine.templates", marks=("{a}", "{b}"))
    if "style" in ps.classes and not ps.style_templates:
        raise BadInput(f"{path}: style_templates: empty, but the style class is requested")
    return ps.model_copy(update={"categories": cats, "default_category": default, "source": str(path)})


# --- expansion ----------------------------------------------------------------------------


def concept_key(concept: Any) -> str:
    parts = [concept.category, concept.name] + ([concept.subclass] if concept.subclass else [])
    return "/".join(parts)


def _trigger(concept: Any, dataset: Any) -> str:
    trigger = (concept.trigger or "").strip()
    if not trigger:
        where = getattr(dataset, "root", None) or getattr(dataset, "name", "dataset")
        raise BadInput(f"{where}: concept {concept_key(concept)}: no trigger")
    return trigger


def to_clip_text(prompt: str, replacements: list[tuple[str, str]]) -> str:
    """Replace each trigger by its descriptive words; tidy the spaces and commas left behind."""
    # Longest first: one trigger may begin another ("vrm shape" / "vrm shape, plo variant").
    for trigger, descriptive in sorted(replacements, key=lambda r: -len(r[0])):
        prompt = prompt.replace(trigger, descriptive or "")
    prompt = re.sub(r"\s+", " ", prompt)
    prompt = re.sub(r"\s+([,.])", r"\1", prompt)
    return prompt.strip(" ,")


def _items(prompts: list[str], *, n_images: int, seed_base: int, make: dict[str, Any], clip: list) -> list:
    out = []
    for p_idx, text in enumerate(prompts):
        group = f"{make['folder']}/{p_idx}"
        for i in range(n_images):
            out.append(
                PromptItem(
                    prompt=text,
                    clip_text=to_clip_text(text, clip),
                    prompt_index=p_idx,
                    image_index=i,
                    seed=seed_base + i,
                    group=group,
                    **{k: v for k, v in make.items() if k != "folder"},
                )
            )
    return out


def _concept_fields(prompt_class: str, concept: Any) -> dict[str, Any]:
    folder = f"{prompt_class}/{concept_key(concept)}"
    return {
        "folder": folder,
        "prompt_class": prompt_class,
        "category": concept.category,
        "concept": concept.name,
        "subclass": concept.subclass or None,
        "concepts": (concept_key(concept),),
    }


def _train_items(ps: PromptSet, concept: Any, dataset: Any, *, seed_base: int) -> list[PromptItem]:
    from lyco_bench.data import caption_for

    trigger = _trigger(concept, dataset)
    captions = [caption_for(img, concept, strategy=ps.caption_strategy) for img in concept.images]
    if not captions:
        raise BadInput(f"{getattr(dataset, 'root', 'dataset')}: concept {concept_key(concept)}: no images")
    fields = _concept_fields("train", concept)
    folder = fields.pop("folder")
    clip = [(trigger, concept.descriptive)]
    return [
        PromptItem(
            prompt=captions[j % len(captions)],
            clip_text=to_clip_text(captions[j % len(captions)], clip),
            prompt_index=j % len(captions),
            image_index=j,
            seed=seed_base + j,
            group=folder,
            **fields,
        )
        for j in range(ps.images_per_prompt.train)
    ]


def _concept_items(ps: PromptSet, prompt_class: str, concept: Any, dataset: Any, *, seed_base: int) -> list:
    trigger = _trigger(concept, dataset)
    cat = ps.category(concept.category)
    if prompt_class == "trigger":
        templates = ["{}" + cat.trigger_suffix]
    elif prompt_class == "alter":
        templates = ps.alter_templates(concept.category, concept.name)
    elif prompt_class == "style":
        templates = [] if cat.is_style else ps.style_templates
    else:
        raise AssertionError(prompt_class)
    prompts = [t.replace("{}", trigger) for t in templates]
    n = getattr(ps.images_per_prompt, prompt_class)
    make = _concept_fields(prompt_class, concept)
    return _items(prompts, n_images=n, seed_base=seed_base, make=make, clip=[(trigger, concept.descriptive)])


def _agnostic_items(ps: PromptSet, dataset: Any, *, seed_base: int) -> list[PromptItem]:
    n = ps.images_per_prompt.agnostic
    base = {"prompt_class": "agnostic", "concept": "", "subclass": None, "concepts": ()}
    out = []
    for category, entries in [("", ps.agnostic)] + [(c, ps.category(c).agnostic) for c in dataset.categories]:
        pairs = agnostic_entries(entries)
        make = {**base, "folder": f"agnostic/{category or '_all'}", "category": category}
        items = _items([p for p, _ in pairs], n_images=n, seed_base=seed_base, make=make, clip=[])
        # The tier goes to ``subclass``; paths and groups stay those of an untiered prompt.
        out += [i.model_copy(update={"subclass": pairs[i.prompt_index][1] or None}) for i in items]
    return out


def _first_concepts(ps: PromptSet, dataset: Any) -> list[Any]:
    firsts: dict[str, Any] = {}
    for concept in dataset.concepts:
        if not ps.category(concept.category).is_style:
            firsts.setdefault(concept.category, concept)
    return list(firsts.values())


def _lookup(dataset: Any, key: str, *, field: str) -> Any:
    for concept in dataset.concepts:
        if concept_key(concept) == key:
            return concept
    raise BadInput(f"{field}: no concept {key!r} in dataset {getattr(dataset, 'root', '')}")


def _combine_pairs(ps: PromptSet, dataset: Any, other: Any | None) -> list[tuple[Any, Any]]:
    field = f"{ps.source or ps.name}: combine.pairs"
    if ps.combine.pairs:
        second = other if other is not None else dataset
        return [
            (_lookup(dataset, a, field=field), _lookup(second, b, field=field)) for a, b in ps.combine.pairs
        ]
    if other is None:
        return list(itertools.combinations(_first_concepts(ps, dataset), 2))
    return list(itertools.product(_first_concepts(ps, dataset), _first_concepts(ps, other)))


def _combine_items(ps: PromptSet, dataset: Any, other: Any | None, *, seed_base: int) -> list[PromptItem]:
    out = []
    for a, b in _combine_pairs(ps, dataset, other):
        ta, tb = _trigger(a, dataset), _trigger(b, other if other is not None else dataset)
        keys = (concept_key(a), concept_key(b))
        prompts = [t.replace("{a}", ta).replace("{b}", tb) for t in ps.combine.templates]
        make = {
            "folder": "combine/" + "+".join(k.replace("/", ".") for k in keys),
            "prompt_class": "combine",
            "category": a.category if a.category == b.category else f"{a.category}+{b.category}",
            "concept": f"{a.name}+{b.name}",
            "subclass": None,
            "concepts": keys,
        }
        clip = [(ta, a.descriptive), (tb, b.descriptive)]
        out += _items(
            prompts, n_images=ps.images_per_prompt.combine, seed_base=seed_base, make=make, clip=clip
        )
    return out


def expand_prompts(
    ps: PromptSet,
    dataset: Any,
    classes: list[str] | None = None,
    *,
    seed_base: int = 1000,
    images_per_prompt: int | None = None,
    combine_with: Any | None = None,
    caption_strategy: str | None = None,
) -> list[PromptItem]:
    """Every image to generate for ``dataset``, in a fixed order (class, concept, prompt, image).

    ``classes``: prompt classes (default: the set's ``classes``); ``images_per_prompt`` overrides
    every class's count; ``combine_with``: a second dataset for cross-model ``combine`` prompts;
    ``caption_strategy`` overrides the set's for ``train`` prompts (e.g. a study's own).
    """
    classes = list(classes or ps.classes)
    for name in classes:
        if name not in PROMPT_CLASSES:
            raise BadInput(f"classes: unknown prompt class {name!r} (known: {', '.join(PROMPT_CLASSES)})")
    if images_per_prompt is not None:
        if images_per_prompt < 1:
            raise BadInput(f"images_per_prompt: must be at least 1, got {images_per_prompt}")
        counts = ImageCounts(**dict.fromkeys(PROMPT_CLASSES, images_per_prompt))
        ps = ps.model_copy(update={"images_per_prompt": counts})
    if caption_strategy is not None:
        ps = ps.model_copy(update={"caption_strategy": caption_strategy})
    if "style" in classes and not ps.style_templates:
        raise BadInput(f"{ps.source or ps.name}: style_templates: empty, but the style class is requested")
    for concept in dataset.concepts:
        _trigger(concept, dataset)
    items: list[PromptItem] = []
    for name in PROMPT_CLASSES:
        if name not in classes:
            continue
        if name == "agnostic":
            items += _agnostic_items(ps, dataset, seed_base=seed_base)
        elif name == "combine":
            items += _combine_items(ps, dataset, combine_with, seed_base=seed_base)
        else:
            for concept in dataset.concepts:
                if name == "train":
                    items += _train_items(ps, concept, dataset, seed_base=seed_base)
                else:
                    items += _concept_items(ps, name, concept, dataset, seed_base=seed_base)
    return items


def budget_items(
    items: list[PromptItem], *, prompts_per_class: int, images_per_prompt: int
) -> list[PromptItem]:
    """A small fixed subset of ``items`` (a checkpoint trajectory's prompt budget): in each unit
    (prompt class, category, concept, subclass) the first ``prompts_per_class`` prompts, each with
    its first ``images_per_prompt`` images (seeds ``seed_base + i``, so the subset's images are the
    same as the full set's); ``train`` (image j uses caption j mod n): its first
    ``prompts_per_class × images_per_prompt`` images. Agnostic tiers share their category's prompt
    numbering. The subset keeps the items' order."""
    if prompts_per_class < 1 or images_per_prompt < 1:
        raise BadInput("trajectory: prompts_per_class and images_per_prompt must be at least 1")
    train_images = prompts_per_class * images_per_prompt
    return [
        item
        for item in items
        if (item.image_index < train_images if item.prompt_class == "train"
            else item.prompt_index < prompts_per_class and item.image_index < images_per_prompt)
    ]  # fmt: skip
