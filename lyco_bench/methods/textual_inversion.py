"""Textual Inversion (Gal et al. 2022): new tokens whose input embeddings are the only thing trained.

Each concept of the dataset gets one placeholder token of ``num_vectors`` vectors (``algo:
textual_inversion``). Its trigger, in training captions and in generation prompts, becomes that
placeholder; the UNet, the text encoder and every existing row of the embedding table stay frozen.

Tokens. The placeholder of a concept is the ``token`` option with ``{concept}`` replaced by the
concept's key in lower case, non-alphanumerics turned into ``-`` (default ``<{concept}>``:
``patterns/checker`` → ``<patterns-checker>``). With n > 1 vectors the tokens are ``<name>``,
``<name>_1`` … ``<name>_{n-1}`` (the A1111/diffusers multi-vector convention); a prompt names the
placeholder once and it expands to all n. Tokens are lower case (CLIP's tokenizer lowercases the
prompt before it matches added tokens). A token that already exists in the tokenizer, or two
concepts with the same token or trigger, is BadInput naming it.

Init. Each placeholder starts from the input embeddings of an init text, cycled or cut to n rows
(kohya's rule: vector i = token i mod len): the ``init_word`` option when given (the same for every
concept), else the concept's descriptive words (n = 1: their first token), else — no descriptive
words — the last token of its trigger (triggers are usually a rare word + the class noun, as in
"zqx shape"). The init is read from the frozen table, so it needs no random numbers.

Gradients reach only the new rows. The text encoder's token embedding module is wrapped while the
method is attached: ids of the placeholders are looked up in the method's own fp32 Parameter
(``vectors``, one row per token), every other id in the untouched, frozen table
(``torch.where`` per position). The table is never resized, written or given a gradient, so it
stays bit-identical; the optimizer holds only ``vectors`` (AdamW, lr 5e-3 as A1111, no weight
decay as A1111: decay pulls the vectors away from the embedding scale). The tokens are added to a
copy of the pipeline's tokenizer, which replaces it while attached; detaching restores both.

Merge = attach. The method adds tokens and rows and nothing runs per denoising step (the text
encoder runs once per prompt), so attaching already costs what the base model costs:
``merges_exactly`` is True and :meth:`merge` attaches. λ (``set_multiplier``) scales the vectors.

Files (safetensors). One concept is kohya's file, which A1111, ComfyUI and diffusers load:
``{"emb_params": [n, d]}``. Several concepts (one run trains every concept of the dataset) cannot
share one kohya file — A1111 and diffusers refuse a file with more than one tensor — so
lyco-bench's layout keeps the first concept under ``emb_params`` (ComfyUI, which takes a file's
first tensor, reads that one) and concept i ≥ 1 under ``emb_params.<i>``, all [n, d] float32.
Metadata: ``lyco_bench.algo`` = ``textual_inversion``, ``lyco_bench.embeddings`` (JSON list in file
order: ``key``, ``token``, ``vectors``, ``trigger``, ``concept``), ``lyco_bench.settings`` (the
options), plus the caller's keys (``lyco_bench.<key>``). :func:`export_embeddings` writes one
kohya file per concept (``<token without <>>.safetensors``: A1111's prompt word is the file
name), each again a valid one-concept lyco-bench file; training writes them beside every
multi-concept checkpoint (``ckpt-e010-embeddings/``, :meth:`TextualInversion.tool_files`).

Read as well, without ever running pickled code: kohya ``emb_params`` and diffusers
``learned_embeds`` (``{token: [d] or [n, d]}``) safetensors; A1111 ``.pt`` (``string_to_param``)
and diffusers ``.bin`` only through ``torch.load(weights_only=True)``: a pickled object it
refuses is BadInput naming the file. A foreign file has no trigger: its token (A1111/kohya: the
file name, diffusers: its key) is written in prompts as in those tools. A width that does not fit the
text encoder is BadInput at attach.

Several text encoders (SDXL; lyco_bench.families: each encoder's ``ti_key``): every placeholder has
one set of vectors per encoder, each initialised from and looked up in its own encoder's table
(and tokenizer), trained together. Files keep one tensor per encoder under its key: SDXL's layout
``{"clip_l": [n, 768], "clip_g": [n, 1280]}`` (kohya, A1111, ComfyUI and diffusers' SDXL loaders);
concept i ≥ 1 under ``clip_l.<i>``/``clip_g.<i>``. A file made for another set of encoders than
the pipeline's (an SDXL file on SD1.x, or the reverse) is BadInput at attach. Several methods may be attached at once; detach them in the
reverse order (generation does).
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, field_validator
from torch import nn

from lyco_bench.adapters.base import AlgorithmOptions, CapacityRule, register_algorithm
from lyco_bench.errors import BadInput
from lyco_bench.methods._ti_parts import (
    SDXL_KEYS,
    _is_sdxl,
    _load_pickle,
    _parent_of,
    _pickle_embedding,
    _slug,
    _token_pattern,
    _TokenEmbedding,
    _vectors,
)
from lyco_bench.methods.base import ModelMethod

KOHYA_KEY = "emb_params"
EMBEDDINGS_META = "lyco_bench.embeddings"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin")
MAX_VECTORS = 75  # CLIP's 77-token context less BOS/EOS


class TextualInversionOptions(AlgorithmOptions):
    num_vectors: int = Field(1, ge=1, le=MAX_VECTORS)
    """Vectors (tokens) per placeholder."""
    init_word: str | None = None
    """Text whose token embeddings start every placeholder (cycled/cut to num_vectors); None: the
    concept's descriptive words, else the last token of its trigger."""
    token: str = "<{concept}>"
    """Placeholder name; ``{concept}`` becomes the concept's key (``patterns-checker``)."""

    @field_validator("token")
    @classmethod
    def _one_word(cls, value: str) -> str:
        if not value.strip() or any(ch.isspace() for ch in value):
            raise ValueError("token must be one word (no spaces)")
        return value


@dataclass(frozen=True)
class Placeholder:
    """One trained (or loaded) embedding: its token, vector count and the trigger it replaces."""

    key: str
    token: str
    vectors: int
    trigger: str | None = None
    concept: str | None = None

    @property
    def tokens(self) -> list[str]:
        return [self.token] + [f"{self.token}_{i}" for i in range(1, self.vectors)]

    @property
    def expanded(self) -> str:
        return " ".join(self.tokens)


@register_algorithm
class TextualInversion(ModelMethod):
    """Textual Inversion (module docstring)."""

    algo = "textual_inversion"
    Options = TextualInversionOptions
    default_lr = 5e-3
    capacity = CapacityRule("num_vectors")
    text_encoder_gradients = True

    def __init__(self, options: Any = None, **settings: Any) -> None:
        super().__init__(options, **settings)
        self.placeholders: list[Placeholder] = []
        self.register_parameter("vectors", None)
        self.more_vectors = nn.ParameterDict()  # the other encoders' vectors, by their ti_key
        self.slots: tuple[str, ...] = ("",)  # each encoder's ti_key ("": one encoder, SD1.x)
        self.source = self.algo  # what messages name: the file it came from, once read
        self._attachment: dict[str, Any] | None = None
        self._pipe_expands = False

    # --- building ----------------------------------------------------------------------------
    def _build(self, encoders: list[tuple[str, Any, torch.Tensor]], concepts: Sequence[Any]) -> None:
        """Placeholders and their vectors from ``(ti_key, tokenizer, embedding table)`` per encoder."""
        self.slots = tuple(key for key, _, _ in encoders)
        vectors = [self._build_one(tokenizer, table, concepts) for _, tokenizer, table in encoders]
        self.vectors = nn.Parameter(vectors[0])
        self.more_vectors = nn.ParameterDict(
            {k: nn.Parameter(v) for k, v in zip(self.slots[1:], vectors[1:], strict=True)}
        )

    def _build_one(self, tokenizer: Any, table: torch.Tensor, concepts: Sequence[Any]) -> torch.Tensor:
        if not concepts:
            raise BadInput(f"{self.algo}: no concepts to train (its tokens are the dataset's concepts)")
        opts, n = self.options, self.options.num_vectors
        placeholders, rows = [], []
        by_token: dict[str, str] = {}
        by_trigger: dict[str, str] = {}
        for index, concept in enumerate(concepts):
            key, trigger = str(concept.key), str(concept.trigger).strip()
            token = opts.token.replace("{concept}", _slug(key)).lower()
            for seen, value, what in ((by_token, token, "token"), (by_trigger, trigger, "trigger")):
                if value in seen:
                    hint = "; put {concept} in adapter.token" if what == "token" else ""
                    raise BadInput(
                        f"{self.algo}: concepts {seen[value]} and {key} have the same {what} {value!r} "
                        f"(each concept needs its own{hint})"
                    )
                seen[value] = key
            ids = self._init_ids(tokenizer, concept)
            rows.append(table[[ids[i % len(ids)] for i in range(n)]].detach().float().clone())
            first = self.slots[0] or KOHYA_KEY
            key_name = first if index == 0 else f"{first}.{index}"
            placeholders.append(Placeholder(key_name, token, n, trigger, key))
        self.placeholders = placeholders
        return torch.cat(rows)

    def slot_vectors(self, slot: int) -> torch.Tensor:
        """The vectors of encoder ``slot`` (0: ``vectors``)."""
        return self.vectors if slot == 0 else self.more_vectors[self.slots[slot]]

    def slot_key(self, placeholder: Placeholder, slot: int) -> str:
        """A placeholder's file key for encoder ``slot`` (``clip_g.1`` beside ``clip_l.1``)."""
        _, dot, index = placeholder.key.partition(".")
        return (self.slots[slot] or KOHYA_KEY) + dot + index

    def _init_ids(self, tokenizer: Any, concept: Any) -> list[int]:
        def ids_of(text: str) -> list[int]:
            return list(tokenizer(text, add_special_tokens=False).input_ids) if text.strip() else []

        if self.options.init_word is not None:
            ids = ids_of(self.options.init_word)
            if not ids:
                raise BadInput(f"{self.algo}: init_word {self.options.init_word!r} has no tokens")
            return ids
        ids = ids_of(str(getattr(concept, "descriptive", "") or ""))
        return ids or ids_of(str(concept.trigger))[-1:]

    # --- life cycle ----------------------------------------------------------------------------
    def attach(self, pipe: Any, *, concepts: Sequence[Any] = ()) -> TextualInversion:
        from lyco_bench.families import family_of

        if self._attached:
            raise RuntimeError(f"{self.algo}: already attached")
        slots = [
            s
            for s in family_of(pipe).text_encoders
            if s.textual_inversion and getattr(pipe, s.attr, None) is not None
        ]
        if not slots or any(getattr(pipe, s.tokenizer, None) is None for s in slots):
            raise BadInput(f"{self.source}: the pipeline has no text encoder/tokenizer to add tokens to")
        keys = tuple(s.ti_key for s in slots) if len(slots) > 1 else ("",)
        embeddings = [getattr(pipe, s.attr).get_input_embeddings() for s in slots]
        if self.vectors is None:
            tables = [e.weight for e in embeddings]
            self._build(
                [(k, getattr(pipe, s.tokenizer), t) for k, s, t in zip(keys, slots, tables, strict=True)],
                concepts,
            )
        if keys != self.slots:
            have = " + ".join(self.slots) if len(self.slots) > 1 else "one text encoder"
            want = " + ".join(keys) if len(keys) > 1 else "one text encoder"
            raise BadInput(f"{self.source}: an embedding for {have}; this pipeline has {want}")
        attachment = []
        for index, (slot, embedding) in enumerate(zip(slots, embeddings, strict=True)):
            attachment.append(self._attach_one(pipe, slot, embedding, index))
        self._attachment = dict(pipe=pipe, parts=attachment)
        self._pipe_expands = callable(getattr(pipe, "maybe_convert_prompt", None))
        self._attached = True
        return self

    def _attach_one(self, pipe: Any, slot: Any, embedding: nn.Module, index: int) -> dict[str, Any]:
        tokenizer, table = getattr(pipe, slot.tokenizer), embedding.weight
        vectors = self.slot_vectors(index)
        if vectors.shape[-1] != table.shape[-1]:
            raise BadInput(
                f"{self.source}: embedding width {vectors.shape[-1]} does not fit the text "
                f"encoder (token embeddings of width {table.shape[-1]}); it was made for another model"
            )
        tokens = [t for p in self.placeholders for t in p.tokens]
        vocab = tokenizer.get_vocab()
        for token in tokens:
            if token in vocab:
                raise BadInput(
                    f"{self.source}: placeholder token {token!r} already exists in the tokenizer "
                    "(choose another name: adapter.token, or rename the file)"
                )
        extended = copy.deepcopy(tokenizer)
        extended.add_tokens(tokens)
        ids = extended.convert_tokens_to_ids(tokens)
        if ids != list(range(ids[0], ids[0] + len(tokens))):
            raise RuntimeError(f"{self.algo}: the tokenizer gave non-consecutive ids to new tokens: {ids}")
        parent, name = _parent_of(getattr(pipe, slot.attr), embedding)
        wrapper = _TokenEmbedding(embedding, self, ids[0], index)
        self.to(device=table.device)
        setattr(parent, name, wrapper)
        setattr(pipe, slot.tokenizer, extended)
        return dict(attr=slot.tokenizer, tokenizer=tokenizer, extended=extended, parent=parent, name=name, wrapper=wrapper)  # fmt: skip

    def detach(self) -> None:
        if not self._attached:
            return
        pipe, parts = self._attachment["pipe"], self._attachment["parts"]
        for a in parts:
            if (
                getattr(pipe, a["attr"]) is not a["extended"]
                or getattr(a["parent"], a["name"]) is not a["wrapper"]
            ):
                raise RuntimeError(f"{self.algo}: detach methods in the reverse order of attaching them")
        for a in parts:
            setattr(a["parent"], a["name"], a["wrapper"].inner)
            setattr(pipe, a["attr"], a["tokenizer"])
        self._attachment, self._attached, self._pipe_expands = None, False, False

    @property
    def merges_exactly(self) -> bool:
        return True  # attaching adds tokens and rows; nothing runs per denoising step

    def merge(self, pipe: Any) -> Any:
        return self.attach(pipe)

    def unmerge(self, handle: Any) -> None:
        self.detach()

    # --- text ------------------------------------------------------------------------------------
    def caption(self, text: str, concept: Any) -> str:
        """Triggers → every token of their placeholder (the trainer tokenizes captions directly)."""
        return self._rewrite(text, expand=True)

    def prompt(self, text: str) -> str:
        """Triggers → their placeholder; the pipeline expands it to its n tokens (diffusers'
        multi-vector convention), or this does where the pipeline would not."""
        return self._rewrite(text, expand=not self._pipe_expands)

    def _rewrite(self, text: str, *, expand: bool) -> str:
        replace: dict[str, str] = {}
        patterns: dict[str, str] = {}
        for p in self.placeholders:
            if expand and p.vectors > 1:  # a bare token, not the start of its own "_1" tokens
                replace[p.token], patterns[p.token] = p.expanded, _token_pattern(p.token)
            if p.trigger:
                replace[p.trigger] = p.expanded if expand else p.token
                patterns[p.trigger] = re.escape(p.trigger)
        if not replace:
            return text
        # One pass, longest first: a replacement is never rewritten again, and a trigger that
        # begins another ("vrm shape" / "vrm shape, plo variant") does not split it.
        pattern = "|".join(patterns[k] for k in sorted(patterns, key=len, reverse=True))
        return re.sub(pattern, lambda m: replace[m.group(0)], text)

    # --- training ---------------------------------------------------------------------------------
    def parameter_groups(self, *, lr: float, text_encoder_lr: float | None = None) -> list[dict]:
        params = self.trainable_parameters()
        return [{"params": params, "lr": lr, "weight_decay": 0.0, "name": self.algo}] if params else []

    # --- files ----------------------------------------------------------------------------------
    def file_tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for slot in range(len(self.slots)):
            vectors, start = self.slot_vectors(slot).detach().float().cpu(), 0
            for p in self.placeholders:
                out[self.slot_key(p, slot)] = vectors[start : start + p.vectors].clone()
                start += p.vectors
        return out

    def file_metadata(self, metadata: Mapping[str, Any] | None = None) -> dict[str, str]:
        from lyco_bench import __version__

        meta = {
            "lyco_bench.algo": self.algo,
            "lyco_bench.version": __version__,
            "lyco_bench.settings": json.dumps(self.options.model_dump(mode="json"), sort_keys=True),
            EMBEDDINGS_META: json.dumps([asdict(p) for p in self.placeholders], sort_keys=True),
        }
        for name, value in (metadata or {}).items():
            key = name if "." in name or name.startswith("ss_") else f"lyco_bench.{name}"
            meta[key] = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
        return meta

    def save(self, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> None:
        from lyco_bench.adapters.fileformat import save_tensors

        if self.vectors is None:
            raise RuntimeError(f"{self.algo}: nothing to save before the method is attached")
        save_tensors(path, self.file_tensors(), self.file_metadata(metadata))

    def load_weights(self, path: str | os.PathLike) -> None:
        other = type(self).from_file(path)
        if self.vectors is None:
            raise RuntimeError(f"{self.algo}: attach before loading weights into the method")
        theirs, ours = ([(p.token, p.vectors) for p in m.placeholders] for m in (other, self))
        shapes = [[tuple(m.slot_vectors(i).shape) for i in range(len(m.slots))] for m in (other, self)]
        if theirs != ours or other.slots != self.slots or shapes[0] != shapes[1]:
            names = ", ".join(f"{token}×{n}" for token, n in ours)
            raise BadInput(f"{path}: its embeddings do not match this run's ({names})")
        with torch.no_grad():
            for i in range(len(self.slots)):
                mine = self.slot_vectors(i)
                mine.copy_(other.slot_vectors(i).to(mine.device, mine.dtype))

    @classmethod
    def reads(cls, path: str | os.PathLike, metadata: Mapping[str, str], keys: set[str]) -> bool:
        if "lyco_bench.algo" in metadata:
            return metadata["lyco_bench.algo"] == cls.algo
        if keys:
            only = next(iter(keys)) if len(keys) == 1 else None
            return keys == SDXL_KEYS or only == KOHYA_KEY or (only is not None and "." not in only)
        if Path(path).suffix.lower() in PICKLE_SUFFIXES:
            try:
                data = _load_pickle(Path(path))
            except BadInput:
                return True  # refused (a pickled object) or unreadable: from_file says which
            return _pickle_embedding(data) is not None or _is_sdxl(data)
        return False

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> TextualInversion:
        from lyco_bench.adapters.fileformat import read_tensors

        path = Path(path)
        if not path.is_file():
            raise BadInput(f"{path}: no such file")
        if path.suffix.lower() in PICKLE_SUFFIXES:
            data = _load_pickle(path)
            if _is_sdxl(data):
                return cls._single_sdxl(path, path.stem, data)
            found = _pickle_embedding(data)
            if found is None:
                raise BadInput(
                    f"{path}: not a textual-inversion embedding (no string_to_param or single tensor)"
                )
            token, tensor = found
            return cls._single(path, token if token is not None else path.stem, tensor)
        tensors, metadata = read_tensors(path)
        if metadata.get("lyco_bench.algo") == cls.algo or EMBEDDINGS_META in metadata:
            return cls._own(path, tensors, metadata)
        if set(tensors) == SDXL_KEYS:
            return cls._single_sdxl(path, path.stem, tensors)
        if set(tensors) == {KOHYA_KEY}:
            return cls._single(path, path.stem, tensors[KOHYA_KEY])
        if len(tensors) == 1:
            ((token, tensor),) = tensors.items()
            return cls._single(path, token, tensor)
        raise BadInput(f"{path}: not a textual-inversion file (expected one tensor, e.g. emb_params)")

    @classmethod
    def _single(cls, path: Path, token: str, tensor: Any) -> TextualInversion:
        vectors = _vectors(path, token, tensor)
        token = token.strip().lower()
        if not token or any(ch.isspace() for ch in token):
            raise BadInput(f"{path}: token {token!r} is not one word")
        method = cls(num_vectors=min(vectors.shape[0], MAX_VECTORS))
        method._set(path, [Placeholder(KOHYA_KEY, token, vectors.shape[0])], vectors)
        return method

    @classmethod
    def _single_sdxl(cls, path: Path, token: str, data: Mapping[str, Any]) -> TextualInversion:
        """kohya/A1111's SDXL file: one concept, ``clip_l`` and ``clip_g`` vectors."""
        method = cls._single(path, token, data["clip_l"])
        other = _vectors(path, "clip_g", data["clip_g"])
        if other.shape[0] != method.vectors.shape[0]:
            raise BadInput(f"{path}: clip_l and clip_g have different numbers of vectors")
        method.slots = tuple(sorted(SDXL_KEYS, key=["clip_l", "clip_g"].index))
        method.placeholders = [Placeholder("clip_l", p.token, p.vectors) for p in method.placeholders]
        method.more_vectors = nn.ParameterDict({"clip_g": nn.Parameter(other.contiguous())})
        return method

    @classmethod
    def _own(cls, path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> TextualInversion:
        try:
            entries = json.loads(metadata[EMBEDDINGS_META])
            placeholders = [Placeholder(**entry) for entry in entries]
            settings = json.loads(metadata.get("lyco_bench.settings", "{}"))
        except (KeyError, ValueError, TypeError) as exc:
            raise BadInput(f"{path}: damaged {EMBEDDINGS_META} metadata ({type(exc).__name__})") from None
        if not placeholders:
            raise BadInput(f"{path}: the file holds no embeddings")
        first = placeholders[0].key.partition(".")[0]
        slots = ("clip_l", "clip_g") if first == "clip_l" else ("",)
        method = cls(cls.parse_options(settings))
        method.slots = slots
        keys = {method.slot_key(p, i): (p, i) for p in placeholders for i in range(len(slots))}
        unknown = set(tensors) - set(keys)
        if unknown:
            raise BadInput(f"{path}: unexpected tensor {sorted(unknown)[0]!r}")
        rows: list[list[torch.Tensor]] = [[] for _ in slots]
        for key, (p, i) in keys.items():
            if key not in tensors:
                raise BadInput(f"{path}: tensor {key!r} (token {p.token}) missing")
            vectors = _vectors(path, key, tensors[key])
            if vectors.shape[0] != p.vectors:
                raise BadInput(f"{path}: {key} has {vectors.shape[0]} vectors, the metadata says {p.vectors}")
            rows[i].append(vectors)
        if any(len({r.shape[-1] for r in slot_rows}) > 1 for slot_rows in rows):
            raise BadInput(f"{path}: its embeddings have different widths")
        tokens = [t for p in placeholders for t in p.tokens]
        if len(set(tokens)) < len(tokens):
            raise BadInput(f"{path}: a token is listed twice")
        method._set(path, placeholders, torch.cat(rows[0]))
        method.more_vectors = nn.ParameterDict(
            {k: nn.Parameter(torch.cat(r).contiguous()) for k, r in zip(slots[1:], rows[1:], strict=True)}
        )
        return method

    def _set(self, path: Path, placeholders: list[Placeholder], vectors: torch.Tensor) -> None:
        self.source = str(path)
        self.placeholders = list(placeholders)
        self.vectors = nn.Parameter(vectors.float().contiguous())

    def export(self, out_dir: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> list[Path]:
        """One kohya file per concept (``<out_dir>/<token without <>>.safetensors``)."""
        from lyco_bench.adapters.fileformat import save_tensors

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        tensors, paths = self.file_tensors(), []
        for p in self.placeholders:
            one = Placeholder(self.slots[0] or KOHYA_KEY, p.token, p.vectors, p.trigger, p.concept)
            meta = self.file_metadata(metadata)
            meta[EMBEDDINGS_META] = json.dumps([asdict(one)], sort_keys=True)
            path = out_dir / f"{_slug(p.token) or 'embedding'}.safetensors"
            if path in paths:
                raise BadInput(f"{self.source}: two tokens export to the same file {path.name}")
            own = {self.slot_key(one, i): tensors[self.slot_key(p, i)] for i in range(len(self.slots))}
            save_tensors(path, own, meta)
            paths.append(path)
        return paths

    def tool_files(self, checkpoint: Path, metadata: Mapping[str, Any] | None = None) -> list[Path]:
        """Several concepts: one kohya file per concept in ``<checkpoint stem>-embeddings/``, the
        layout A1111 (its ``embeddings`` folder; the prompt word is the file name), kohya and
        diffusers' ``load_textual_inversion`` (one embedding per file) read. One concept: the
        checkpoint already is that file."""
        if len(self.placeholders) < 2:
            return []
        return self.export(checkpoint.with_name(f"{checkpoint.stem}-embeddings"), metadata)

    def extra_repr(self) -> str:
        return ", ".join(f"{p.token}×{p.vectors}" for p in self.placeholders)


def export_embeddings(path: str | os.PathLike, out_dir: str | os.PathLike) -> list[Path]:
    """Split a textual-inversion file into one kohya ``emb_params`` file per concept (for A1111,
    ComfyUI, diffusers); the files' metadata keeps each token and trigger."""
    from lyco_bench.methods.base import tensor_file_keys

    method = TextualInversion.from_file(path)
    found = tensor_file_keys(path)
    own = {k: v for k, v in (found[0] if found else {}).items() if k not in method.file_metadata()}
    return method.export(out_dir, own)
