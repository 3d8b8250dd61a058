"""The real CLIP BPE tokenizer, built offline from the vocabulary open_clip ships (every CLIP-based
family's tokenizer: SD1.x's, both of SDXL's, FLUX's CLIP-L)."""

from __future__ import annotations

import functools
import gzip
from pathlib import Path


@functools.lru_cache(maxsize=1)
def _clip_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's vocabulary and merges, rebuilt from the BPE file open_clip ships (as CLIP's
    ``SimpleTokenizer`` does): 256 byte characters, their ``</w>`` forms, one token per merge,
    then the two special tokens — 49,408 entries."""
    import open_clip

    bpe_path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(bpe_path, "rt", encoding="utf-8").read().split("\n")
    # Line 0 is a version header; CLIP keeps the first 49152 - 256 - 2 merges.
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    byte_chars = list(_bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def clip_tokenizer(*, model_max_length: int = 77):
    """The real CLIP BPE tokenizer (SD1.x's), built offline from open_clip's vocabulary.

    Built with ``vocab=``/``merges=``: on transformers 5.x ``vocab_file=``/``merges_file=`` are
    silently ignored and give a three-token tokenizer (docs/protocol.md §10).
    """
    from transformers import CLIPTokenizer

    vocab, merges = _clip_bpe()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=model_max_length)
