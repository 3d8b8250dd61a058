"""A T5 tokenizer built offline with the ``tokenizers`` library, for the tiny FLUX model.

FLUX.1's second text encoder is T5-XXL, whose tokenizer is a SentencePiece Unigram model of 32,100
pieces from the hub. The tiny model needs one that works offline and byte-identically: a Unigram
model over single characters (each also with SentencePiece's word-start mark ``▁``), with T5's
special tokens (``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2), its whitespace + Metaspace pre-tokenizer
and its post-processor (``</s>`` appended); case is kept, as T5's vocabulary does. It is saved as ``tokenizer.json``, which transformers'
``T5TokenizerFast`` (what ``FluxPipeline`` loads) reads without sentencepiece.
"""

from __future__ import annotations

import string

SPACE = "\u2581"  # SentencePiece's word-start mark
SPECIALS = (("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0))
CHARACTERS = string.ascii_letters + string.digits + string.punctuation
MAX_LENGTH = 128
"""The tiny tokenizer's ``model_max_length`` (FLUX.1-dev's T5 reads 512 tokens, schnell 256)."""


def pieces() -> list[tuple[str, float]]:
    """The vocabulary with Unigram log-probabilities (a word-start piece scores above a bare one,
    so ``"dog"`` → ``▁d o g``)."""
    vocab = list(SPECIALS)
    for char in CHARACTERS:
        vocab += [(SPACE + char, -2.0), (char, -3.0)]
    return [*vocab, (SPACE, -4.0)]


def t5_tokenizer(*, model_max_length: int = MAX_LENGTH):
    """The offline T5 tokenizer (module docstring) as a ``T5TokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    tokenizer = Tokenizer(models.Unigram(pieces(), unk_id=2, byte_fallback=False))
    # What transformers 5's T5Tokenizer rebuilds on loading (it keeps only the model and the
    # post-processor of tokenizer.json): no normalizer, whitespace split, then Metaspace. Set the
    # same here so the tokenizer behaves alike before and after saving.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="always"),
        ]
    )
    tokenizer.decoder = decoders.Metaspace(replacement=SPACE, prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return T5TokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_ids=0,
        model_max_length=model_max_length,
    )
