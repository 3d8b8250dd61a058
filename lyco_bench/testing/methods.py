"""The conformance check of a model-level method (:class:`~lyco_bench.methods.base.ModelMethod`).

:func:`check_method` runs the method's life cycle on a tiny Stable Diffusion pipeline (built by
``make_tiny_model`` unless one is given). The pipeline's output is the UNet's noise prediction for
fixed latents and timesteps, conditioned on ``pipe.encode_prompt`` of the method's rewrite of a
prompt naming each concept (so a method acting on the text, like Textual Inversion, and one acting
in the UNet, like a hypernetwork, are both seen). It checks:

* attach/detach: after its parameters are moved away from their init the attached method changes
  the output; detaching restores the UNet's and text encoder's state dicts, the tokenizer and the
  output bit for bit;
* file round trip: ``save`` → ``from_file`` → attach gives the same output, and ``load_weights``
  into a freshly built method (resume) too;
* merge: where ``merges_exactly``, ``merge`` gives the attached output and ``unmerge`` restores the
  pipeline bit for bit.

A method exempts itself from ``file round trip`` or ``merge`` for a documented reason with the
ClassVar ``conformance_exempt`` (property → reason), as a layer algorithm does.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from lyco_bench.methods.base import ModelMethod
from lyco_bench.testing.common import Failure, exempt, perturb

# float32 UNet: the same computation reordered (a merged weight) differs by round-off only.
RTOL, ATOL = 1e-4, 1e-5
PROPERTIES = ("attach/detach", "file round trip", "merge")


def toy_concepts() -> list[Any]:
    """One concept, as a dataset gives it (a trigger, descriptive words)."""
    from lyco_bench.data.dataset import Concept

    return [Concept("toys", "plush", None, "zqx plush", "plush toy", [], 1)]


def tiny_pipeline(folder: str | Path) -> Any:
    """The tiny random-weight pipeline of ``make-tiny-model``, built in ``folder`` and loaded."""
    from lyco_bench.models import load_pipeline, make_tiny_model

    return load_pipeline(str(make_tiny_model(Path(folder) / "tiny-sd", seed=0)))


def check_method(
    cls: type[ModelMethod],
    settings: Mapping[str, Any] | None = None,
    *,
    pipe: Any = None,
    concepts: Sequence[Any] | None = None,
) -> None:
    """Check the properties of the module docstring; AssertionError naming the method and the
    failed property. The pipeline is left as it was found."""
    if not (isinstance(cls, type) and issubclass(cls, ModelMethod)):
        raise AssertionError(f"{cls!r}: not a ModelMethod subclass")
    concepts = list(concepts) if concepts is not None else toy_concepts()
    with tempfile.TemporaryDirectory() as folder, torch.random.fork_rng(devices=[]):
        run = _Run(cls, dict(settings or {}), pipe or tiny_pipeline(folder), concepts, Path(folder))
        run.check()


class _Run:
    """One method on one pipeline: snapshots, outputs and the three checks."""

    def __init__(self, cls: type[ModelMethod], settings: dict, pipe: Any, concepts: list, folder: Path):
        self.cls, self.settings, self.pipe, self.concepts, self.folder = cls, settings, pipe, concepts, folder
        self.fail = Failure(f"method {cls.algo}")
        self.skipped = exempt(cls, PROPERTIES, self.fail)
        gen = torch.Generator().manual_seed(0)
        self.latents = torch.randn(1, pipe.unet.config.in_channels, 8, 8, generator=gen)
        self.timestep = torch.tensor([500])

    def snapshot(self) -> tuple[dict, dict, int]:
        unet = {k: v.clone() for k, v in self.pipe.unet.state_dict().items()}
        text = {k: v.clone() for k, v in self.pipe.text_encoder.state_dict().items()}
        return unet, text, len(self.pipe.tokenizer)

    def output(self, method: ModelMethod | None) -> torch.Tensor:
        """UNet noise prediction for each concept's prompt, rewritten by ``method``."""
        outs = []
        with torch.no_grad():
            for concept in self.concepts:
                text = f"a photo of {concept.trigger}"
                text = method.prompt(text) if method is not None else text
                embeds, _ = self.pipe.encode_prompt(text, "cpu", 1, False)
                outs.append(self.pipe.unet(self.latents, self.timestep, embeds).sample)
        return torch.cat(outs)

    def same_pipeline(self, before: tuple[dict, dict, int], fail: Failure, when: str) -> None:
        unet, text, vocab = self.snapshot()
        for name, old, new in (("UNet", before[0], unet), ("text encoder", before[1], text)):
            if old.keys() != new.keys():
                fail(
                    f"{when}, the {name}'s state dict has other keys ({sorted(old.keys() ^ new.keys())[:3]})"
                )
            changed = [k for k in old if not torch.equal(old[k], new[k])]
            if changed:
                fail(f"{when}, the {name}'s {changed[0]} is not restored bit for bit")
        if vocab != before[2]:
            fail(f"{when}, the tokenizer has {vocab} tokens, {before[2]} before")

    def close(self, got: torch.Tensor, want: torch.Tensor, fail: Failure, message: str) -> None:
        if not torch.allclose(got, want, rtol=RTOL, atol=ATOL):
            fail(f"{message} (max |difference| {float((got - want).abs().max()):.3g})")

    def check(self) -> None:
        before, base = self.snapshot(), self.output(None)
        torch.manual_seed(0)
        method = self.cls(self.settings).attach(self.pipe, concepts=self.concepts)
        try:
            perturb(method, seed=1, std=0.1)
            attached = self.output(method)
        finally:
            method.detach()
        fail = self.fail.prop("attach/detach")
        if bool((attached - base).abs().max() <= ATOL):
            fail("the attached method (parameters away from init) does not change the output")
        self.same_pipeline(before, fail, "after detach")
        if not torch.equal(self.output(None), base):
            fail("after detach, the output differs from the pipeline's own")
        if "file round trip" not in self.skipped:
            self.check_files(method, attached, before)
        if method.merges_exactly and "merge" not in self.skipped:
            self.check_merge(method, attached, before)

    def check_files(self, method: ModelMethod, attached: torch.Tensor, before: tuple) -> None:
        fail = self.fail.prop("file round trip")
        path = self.folder / f"{self.cls.algo}.safetensors"
        method.save(path)
        for how in ("from_file", "load_weights"):
            if how == "from_file":
                loaded = self.cls.from_file(path)
            else:
                torch.manual_seed(1)  # another init: the file must carry every trained number
                loaded = self.cls(method.options)
            loaded.attach(self.pipe, concepts=self.concepts)
            try:
                if how == "load_weights":
                    loaded.load_weights(path)
                got = self.output(loaded)
            finally:
                loaded.detach()
            self.close(got, attached, fail, f"save → {how} → attach gives another output")
        self.same_pipeline(before, fail, "after the loaded methods detach")

    def check_merge(self, method: ModelMethod, attached: torch.Tensor, before: tuple) -> None:
        fail = self.fail.prop("merge")
        handle = method.merge(self.pipe)
        try:
            merged = self.output(method)
        finally:
            method.unmerge(handle)
        self.close(merged, attached, fail, "the merged pipeline's output ≠ the attached method's")
        self.same_pipeline(before, fail, "after unmerge")
