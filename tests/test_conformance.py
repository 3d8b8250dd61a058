"""The conformance kit (lyco_bench.testing) over every registered plug-in, and the kit itself: each
check fails on a plug-in that breaks the property it names.

The parametrization reads the registries, so a newly registered built-in is checked here with no
edit to this file.
"""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch

from lyco_bench.adapters.algorithms.lora import LoRAModule
from lyco_bench.adapters.base import ALGORITHMS, AdapterModule
from lyco_bench.adapters.presets import PRESETS, Preset
from lyco_bench.methods.base import is_model_method
from lyco_bench.metrics import METRICS
from lyco_bench.metrics.encoders import ENCODERS
from lyco_bench.metrics.values import MetricValue
from lyco_bench.testing import check_algorithm, check_encoder, check_method, check_metric, check_preset

LAYER_ALGORITHMS = sorted(n for n, c in ALGORITHMS.items() if issubclass(c, AdapterModule))
METHODS = sorted(n for n, c in ALGORITHMS.items() if is_model_method(c))


@pytest.mark.parametrize("name", LAYER_ALGORITHMS)
def test_every_layer_algorithm_conforms(name):
    check_algorithm(ALGORITHMS[name])


def _switches() -> list[tuple[str, str]]:
    """(algorithm, option) for every on/off option of every layer algorithm (Tucker, DoRA, …)."""
    return [
        (name, option)
        for name in LAYER_ALGORITHMS
        for option, info in ALGORITHMS[name].Options.model_fields.items()
        if info.annotation in (bool, bool | None) and not info.default
    ]


@pytest.mark.parametrize(("name", "option"), _switches())
def test_every_layer_algorithm_conforms_with_each_switch_on(name, option):
    check_algorithm(ALGORITHMS[name], {option: True})


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    from lyco_bench.models import load_pipeline

    return load_pipeline(str(tiny_model_dir))


@pytest.mark.parametrize("name", METHODS)
def test_every_method_conforms(name, pipe):
    check_method(ALGORITHMS[name], pipe=pipe)


@pytest.mark.parametrize("name", list(METRICS))
def test_every_metric_conforms(name):
    check_metric(METRICS[name])


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_conforms(name):
    check_preset(PRESETS[name])


@pytest.mark.parametrize("name", list(ENCODERS))
def test_every_encoder_conforms(name):
    check_encoder(ENCODERS[name])


def test_every_kind_has_built_ins():
    assert LAYER_ALGORITHMS and METHODS and list(METRICS) and list(PRESETS) and list(ENCODERS)


# --- the kit catches what it names -----------------------------------------------------------------


class _Variant(LoRAModule):
    """A LoRA variant with its own name; its file is a LoRA file, told apart by metadata only."""

    algo = "kit_variant"

    @classmethod
    def detects(cls, suffixes: set[str]) -> bool:
        return False


class _ScaledBypass(_Variant):
    algo = "kit_scaled_bypass"

    def bypass(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().bypass(x)  # forward no longer W0 + λ·ΔW


class _DoubledGradients(_Variant):
    algo = "kit_doubled_gradients"

    def bypass(self, x: torch.Tensor) -> torch.Tensor:
        y = super().bypass(x)
        return y + (y - y.detach())  # the same value, twice the gradient


class _NonZeroInit(_Variant):
    algo = "kit_nonzero_init"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        with torch.no_grad():
            self.lora_up.fill_(0.1)


class _AlphaLost(_Variant):
    algo = "kit_alpha_lost"

    @classmethod
    def from_file_tensors(cls, base, tensors, *, name):
        return super().from_file_tensors(base, {k: v for k, v in tensors.items() if k != "alpha"}, name=name)


class _ResumeDropsUp(_Variant):
    algo = "kit_resume_drops_up"

    def load_state_dict(self, state_dict, strict=True, assign=False):
        kept = {k: v for k, v in state_dict.items() if k != "lora_up"}
        return super().load_state_dict(kept, strict=False, assign=assign)


@pytest.mark.parametrize(
    ("cls", "prop"),
    [
        (_ScaledBypass, "delta vs forward"),
        (_DoubledGradients, "gradients"),
        (_NonZeroInit, "zero init"),
        (_AlphaLost, "file round trip"),
        (_ResumeDropsUp, "resume"),
        (LoRAModule, None),  # the unbroken parent (its own registered name)
    ],
)
def test_check_algorithm_names_the_broken_property(cls, prop):
    with registered(cls):
        if prop is None:
            check_algorithm(cls)
            return
        with pytest.raises(AssertionError, match=rf"^algorithm {cls.algo} \[linear\]: {prop}: "):
            check_algorithm(cls)


@contextlib.contextmanager
def registered(cls):
    """``cls`` in the algorithm registry for the test (a file names its algorithm by ``algo``)."""
    known = cls.algo in ALGORITHMS
    ALGORITHMS.register(cls.algo, cls)
    try:
        yield cls
    finally:
        if not known:
            ALGORITHMS.unregister(cls.algo)


def test_a_subclass_detected_by_its_parents_keys_is_caught():
    class SameKeys(LoRAModule):  # claims LoRA's detect keys: a file of it reads back as LoRA
        algo = "kit_same_keys"

    with registered(SameKeys), pytest.raises(AssertionError, match=r"detection by keys: without metadata"):
        check_algorithm(SameKeys)


def test_declared_exemptions_are_read_and_checked():
    class Exempt(_NonZeroInit):
        algo = "kit_exempt"
        conformance_exempt = {"zero init": "starts from a pretrained ΔW"}

    with registered(Exempt):
        check_algorithm(Exempt)  # everything but the zero init holds

    class Unknown(LoRAModule):
        algo = "kit_unknown_exemption"
        conformance_exempt = {"speed": "fast"}

    with pytest.raises(AssertionError, match=r"conformance_exempt: unknown property 'speed'"):
        check_algorithm(Unknown)


def test_check_algorithm_reports_bad_settings_and_leaves_the_rng_alone():
    first = ALGORITHMS[LAYER_ALGORITHMS[0]]
    with pytest.raises(AssertionError, match=rf"^algorithm {first.algo}: settings: .*no_such_option"):
        check_algorithm(first, {"no_such_option": 1})
    state = torch.get_rng_state()
    check_algorithm(first)
    assert torch.equal(torch.get_rng_state(), state)


def test_check_algorithm_refuses_a_non_algorithm():
    with pytest.raises(AssertionError, match="not an AdapterModule subclass"):
        check_algorithm(torch.nn.Linear)


def test_check_preset_names_the_broken_property():
    with pytest.raises(AssertionError, match=r"^preset nothing: selects: "):
        check_preset(Preset("nothing", lambda info: False, lambda path: False, "selects nothing"))
    with pytest.raises(AssertionError, match=r"^preset vague: answers: unet\("):
        check_preset(Preset("vague", lambda info: 1, lambda path: False, "answers 1"))


# Metrics with a known answer on the toy (they compare with references, the base model or text, or
# measure diversity): a flipped direction must be caught.
KNOWN = [
    n
    for n, m in METRICS.items()
    if {"reference", "base", "text"} & set(m.needs) or m.criterion == "diversity"
]


@pytest.mark.parametrize("name", KNOWN)
def test_check_metric_catches_a_flipped_direction(name):
    metric = METRICS[name]
    flipped = dataclasses.replace(metric, higher_is_better=not metric.higher_is_better)
    with pytest.raises(AssertionError, match=rf"^metric {name}: known answer: "):
        check_metric(flipped)


def test_check_metric_catches_bad_rows_and_declarations():
    def nan_rows(view):
        yield MetricValue(float("nan"), view.n, reason="")

    base = METRICS["image_similarity"]
    with pytest.raises(AssertionError, match=r"rows well formed: value nan"):
        check_metric(dataclasses.replace(base, name="nan", compute=nan_rows))
    with pytest.raises(AssertionError, match=r"declarations: prompt_classes"):
        check_metric(dataclasses.replace(base, name="odd", prompt_classes=("nowhere",)))
    with pytest.raises(AssertionError, match=r"declarations: higher_is_better"):
        check_metric(dataclasses.replace(base, name="undirected", higher_is_better=None))


@pytest.mark.parametrize("name", METHODS)
def test_check_method_catches_a_file_that_loads_other_weights(name, pipe):
    class Lossy(ALGORITHMS[name]):
        @classmethod
        def from_file(cls, path):
            method = super().from_file(path)
            with torch.no_grad():
                for param in method.parameters():
                    param.mul_(0.5)
            return method

    with pytest.raises(AssertionError, match=rf"^method {name}: file round trip: save → from_file"):
        check_method(Lossy, pipe=pipe)


@pytest.mark.parametrize("name", METHODS)
def test_check_method_catches_a_detach_that_restores_nothing(name, tiny_model_dir):
    from lyco_bench.models import load_pipeline

    class Sticky(ALGORITHMS[name]):
        def detach(self) -> None:
            pass  # the pipeline keeps the method's hooks, tokens or rows

    with pytest.raises(AssertionError, match=rf"^method {name}: attach/detach: after detach"):
        check_method(Sticky, pipe=load_pipeline(str(tiny_model_dir)))  # a pipeline of its own


def test_the_readme_walk_through_algorithm_passes_its_kit_step(monkeypatch):
    """The README's OutScale (its first python block) and its step-4 test (the block that calls the
    kit), as written; the entry point a pip install would add is a registration here."""
    import sys
    import types
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = text.split("## Adding an algorithm", 1)[1].split("\n## ", 1)[0]
    blocks = [b.split("\n", 1)[1] for b in section.split("```")[1::2] if b.startswith("python\n")]
    kit_block = next(b for b in blocks if "lyco_bench.testing" in b)
    package = types.ModuleType("lyco_outscale")
    exec(compile(blocks[0], "lyco_outscale.py", "exec"), package.__dict__)  # noqa: S102 - the README's code
    monkeypatch.setitem(sys.modules, "lyco_outscale", package)
    tests: dict = {}
    exec(compile(kit_block, "test_outscale.py", "exec"), tests)  # noqa: S102
    with registered(package.OutScaleModule):
        tests["test_outscale_conforms"]()


def _vgg_loaded_as(settings_update: dict):
    """VGG19's loader, handed settings changed by ``settings_update`` (what a loader that ignores
    a field does)."""
    load = ENCODERS["vgg19"].load
    return lambda s: load(s.model_copy(update=settings_update))


@pytest.mark.parametrize(
    ("change", "prop"),
    [
        ({"feature_dim": lambda fields, tiny: 7}, "feature size"),
        ({"check_source": lambda s: None}, "source check"),
        ({"identity": lambda s: "vgg19:always-the-same"}, "identity"),
        ({"load": _vgg_loaded_as({"precision": "float32"})}, "precision"),
        ({"settings": ENCODERS["dinov2"].settings}, "settings"),
    ],
    ids=["feature-size", "source-check", "identity", "precision", "settings"],
)
def test_check_encoder_names_the_broken_property(change, prop):
    broken = dataclasses.replace(ENCODERS["vgg19"], **change)
    with pytest.raises(AssertionError, match=rf"^encoder vgg19: {prop}: "):
        check_encoder(broken)


def test_check_encoder_catches_nondeterministic_features():
    import itertools

    calls = itertools.count()
    load = ENCODERS["vgg19"].load

    class Drifting:  # each load scales its features differently
        def __init__(self, settings):
            self.inner, self.scale = load(settings), 1.0 + next(calls)

        def prepare(self, image, mode):
            return self.inner.prepare(image, mode)

        def forward(self, inputs):
            return self.inner.forward(inputs) * self.scale

    with pytest.raises(AssertionError, match=r"^encoder vgg19: deterministic: image features differ"):
        check_encoder(dataclasses.replace(ENCODERS["vgg19"], load=Drifting))
    with pytest.raises(AssertionError, match=r"^encoder vgg19: exempt: unknown property 'speed'"):
        check_encoder(ENCODERS["vgg19"], exempt={"speed": "fast"})


@pytest.mark.e2e  # a fresh interpreter: the toy's fields join EncoderSettings as an installed plug-in's do
def test_the_readme_walk_through_encoder_passes_its_kit_step(tmp_path):
    """The README's toy encoder (its first python block of "Adding an encoder") registered as an
    outside package's entry point would, and its kit block run as written."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    text = (root / "README.md").read_text(encoding="utf-8")
    section = text.split("### Adding an encoder", 1)[1].split("\n## ", 1)[0]
    blocks = [b.split("\n", 1)[1] for b in section.split("```")[1::2] if b.startswith("python\n")]
    kit_block = next(b for b in blocks if "lyco_bench.testing" in b)
    (tmp_path / "lyco_meanrgb.py").write_text(blocks[0], encoding="utf-8")
    (tmp_path / "test_meanrgb.py").write_text(kit_block + "\n\ntest_meanrgb_conforms()\n", encoding="utf-8")
    code = "import lyco_meanrgb, runpy; runpy.run_path('test_meanrgb.py'); print('CONFORMS')"
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{root}"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip().endswith("CONFORMS"), out.stderr[-3000:]
