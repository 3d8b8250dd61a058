"""Training, generation and the sweep's view of a model family: the tiny SDXL trained, sampled
and planned like SD1.x; SD1.x job ids unchanged by the family contract."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from lyco_bench.errors import BadInput
from lyco_bench.families import FAMILIES, family_identity, get_family
from tests.helpers import run_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sdxl_pipe(tiny_sdxl_dir):
    from lyco_bench.models import load_pipeline

    return load_pipeline(tiny_sdxl_dir)


def test_built_in_families_are_registered():
    assert {"sd1", "sdxl"} <= set(FAMILIES)
    assert family_identity("sd1") == {}
    assert family_identity("sdxl") == {"family": f"sdxl.v{get_family('sdxl').version}"}
    with pytest.raises(BadInput, match="unknown model family 'sd9'"):
        get_family("sd9")


def test_sdxl_loss_is_epsilon_mse_with_size_conditioning(tiny_sdxl_dir, small_dataset, cache_dir, sdxl_pipe):
    """The loss by hand: SDXL's VAE scale, DDPM noising, diffusers' own prompt embeddings and
    add_time_ids from each image's size, its centre crop and its bucket."""
    from lyco_bench.training.session import Session

    pipe = sdxl_pipe
    cfg = run_config(
        tiny_sdxl_dir, small_dataset, cache_dir, captions={"strategy": "all-tags", "dropout": 0.0}
    )
    session = Session(cfg, device=torch.device("cpu"), pipeline=pipe)
    try:
        batch = session.epoch_batches()[0]
        noise_state = session.generators["noise"].get_state()
        with torch.no_grad():
            got = session.loss(batch)
        gen = torch.Generator().set_state(noise_state)
        x0 = torch.stack([session.latents[i].sample(gen) for i in batch]) * 0.13025
        eps = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, 1000, (len(batch),), generator=gen)
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float32) ** 2
        abar = torch.cumprod(1.0 - betas, dim=0)[t].view(-1, 1, 1, 1)
        x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
        captions = [session.pairs[i][0].trigger + ", " + ", ".join(session.pairs[i][1].tags) for i in batch]
        time_ids = []
        for i in batch:
            item, (bw, bh) = session.pairs[i][1], session.latents[i].bucket
            scale = max(bw / item.width, bh / item.height)  # cover the bucket, crop the centre
            new_w, new_h = max(bw, round(item.width * scale)), max(bh, round(item.height * scale))
            crop = ((new_h - bh) // 2, (new_w - bw) // 2)
            time_ids.append(
                pipe._get_add_time_ids((item.height, item.width), crop, (bh, bw), torch.float32, 40)[0]
            )
        with torch.no_grad():
            embeds, _, pooled, _ = pipe.encode_prompt(captions, do_classifier_free_guidance=False)
            added = {"text_embeds": pooled, "time_ids": torch.stack(time_ids)}
            pred = pipe.unet(x_t, t, embeds, added_cond_kwargs=added).sample
        want = ((pred - eps) ** 2).mean()
    finally:
        session.close()
    assert session.scaling == 0.13025 and session.prediction_type == "epsilon"
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.e2e  # training runs and sampling on the tiny SDXL: seconds of CPU each
@pytest.mark.parametrize("algo", ["lora", "lokr"])
def test_sdxl_trains_both_encoders_and_generates(
    tmp_path, tiny_sdxl_dir, small_dataset, cache_dir, demo_dataset_dir, sdxl_pipe, algo
):
    """A checkpoint adapts the UNet (SGM keys) and both encoders; the base stays frozen; images
    sampled with it differ from the base model's."""
    from lyco_bench.adapters import load_adapter
    from lyco_bench.data import load_dataset
    from lyco_bench.generation import SamplerSettings, generate
    from lyco_bench.prompts import expand_prompts, load_prompt_set
    from lyco_bench.training import record_path, train

    before = {k: v.clone() for k, v in sdxl_pipe.unet.state_dict().items()}
    adapter = {"algo": algo, "dim": 4, "alpha": 2} if algo == "lora" else {"algo": "lokr", "factor": 4}
    cfg = run_config(tiny_sdxl_dir, small_dataset, cache_dir, adapter=adapter)
    [ckpt] = train(cfg, tmp_path / "run", pipeline=sdxl_pipe)
    record = json.loads(record_path(tmp_path / "run", 1).read_text())
    assert math.isfinite(record["epoch_mean_loss"]) and record["family"] == "sdxl"
    keys = load_adapter(ckpt).modules
    for prefix in ("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_te1_", "lora_te2_"):
        assert any(k.startswith(prefix) for k in keys), prefix
    assert all(torch.equal(v, sdxl_pipe.unet.state_dict()[k]) for k, v in before.items())
    sampler = SamplerSettings(steps=2, width=64, height=64, batch_size=2)
    items = expand_prompts(
        load_prompt_set("demo"), load_dataset(demo_dataset_dir), ["trigger"], images_per_prompt=1
    )
    images = {}
    for name, adapters in (("base", []), ("tuned", [(ckpt, 1.0)])):
        out = tmp_path / name
        generate(
            model=tiny_sdxl_dir,
            adapters=adapters,
            items=items[:1],
            out_dir=out,
            sampler=sampler,
            pipeline=sdxl_pipe,
        )
        images[name] = next(out.rglob("*.png")).read_bytes()
    assert images["base"] != images["tuned"]


def test_sdxl_prior_preservation(tiny_sdxl_dir, dataset_with_class_folders, cache_dir, sdxl_pipe):
    """DreamBooth's class samples join each batch on SDXL too, each with its own size conditioning
    (its file's size, its crop into the batch's bucket), and the step trains."""
    from lyco_bench.training.session import Session

    cfg = run_config(
        tiny_sdxl_dir, dataset_with_class_folders, cache_dir, categories=None, prior_loss_weight=0.5
    )
    session = Session(cfg, device=torch.device("cpu"), pipeline=sdxl_pipe)
    try:
        batch = session.epoch_batches()[0]
        state = session.generators["prior"].get_state()
        captions, x_t, _, _, geometry = session._inputs(batch)
        n = len(batch)
        assert len(geometry) == x_t.shape[0] == 2 * n and captions[n:] == [
            session.prior.prompts[session.pairs[i][0].key] for i in batch
        ]
        session.generators["prior"].set_state(state)
        for i, g in zip(batch, geometry[n:], strict=True):
            _, latent, size = session.prior.sample(
                session.pairs[i][0].key, geometry[0].target, session.generators["prior"]
            )
            assert g.original == size and g.target == latent.bucket == geometry[0].target
        assert math.isfinite(session.step(batch))
    finally:
        session.close()


def test_sd1_job_ids_do_not_depend_on_the_family_contract(tmp_path, monkeypatch):
    """The paper study on the SD1 stand-in: ids with the family code path equal ids planned with
    no family in any spec (what the planner hashed before families existed); an SDXL model's
    train and generate ids carry its family."""
    from lyco_bench.sweep import planner
    from lyco_bench.sweep.store import StudyStore
    from lyco_bench.sweep.study import load_study

    local = [
        "model=tiny:",
        "dataset=demo:",
        "encoders.dino=tiny:",
        "encoders.clip=tiny:",
        "encoders.vgg=tiny:",
    ]
    shrink = ["seeds=[23]", "checkpoint_epochs=[10]"]

    def ids(overrides: list[str], folder: str) -> dict[tuple[str, str], str]:
        study = load_study(ROOT / "experiments" / "paper.yaml", [*local, *shrink, *overrides])
        plan = planner.build_plan(study, StudyStore.open(tmp_path / folder, study.name))
        return {(job.kind, job.name): job.id for job in plan.jobs}

    with_family = ids([], "a")
    monkeypatch.setattr(planner, "family_identity", lambda name: {})
    assert ids([], "b") == with_family
    sdxl_without = ids(["model=tiny:sdxl"], "c")
    monkeypatch.undo()
    sdxl = ids(["model=tiny:sdxl"], "d")
    changed = {kind for (kind, name), value in sdxl.items() if value != sdxl_without[(kind, name)]}
    # Everything made by the model changes (base-image features too); the assets do not.
    assert changed == {"train", "generate", "encode", "score"}
    assert not any(sdxl[k] != sdxl_without[k] for k in sdxl if k[0] == "prepare")


def test_tiny_model_values(tmp_path):
    from lyco_bench.sweep.study import tiny_model

    assert tiny_model("tiny:") == ("sd1", 0)
    assert tiny_model("tiny:3") == ("sd1", 3)
    assert tiny_model("tiny:sdxl") == ("sdxl", 0)
    assert tiny_model("tiny:sdxl:7") == ("sdxl", 7)
    with pytest.raises(BadInput, match="model 'tiny:nope': family: unknown model family 'nope'"):
        tiny_model("tiny:nope")


def test_make_tiny_model_cli_and_the_sweep_resolve_sdxl(tmp_path):
    from lyco_bench.cli import main
    from lyco_bench.sweep.hashing import FileHasher
    from lyco_bench.sweep.sources import resolve_model

    assert main(["make-tiny-model", str(tmp_path / "xl"), "--family", "sdxl"]) == 0
    index = json.loads((tmp_path / "xl" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    source = resolve_model(str(tmp_path / "xl"), hasher=FileHasher())
    assert (source.family, source.arch, source.where) == ("sdxl", "sdxl", "folder")


def test_a_family_sets_the_default_sampler_and_refuses_others():
    """A study that names no sampler gets its family's ``eval_sampler``; one the family does not
    have is refused at planning, naming the key (a temporary family whose sampler is Euler)."""
    from lyco_bench.families import FAMILIES
    from lyco_bench.families.sd1 import SD1Family
    from lyco_bench.generation import SamplerSettings
    from lyco_bench.sweep.inputs import _family_sampler

    class EulerOnly(SD1Family):
        name = "euler-only"
        pipeline_classes = ("EulerOnlyPipeline",)
        eval_sampler = "euler"
        samplers = ("euler",)

    FAMILIES.register("euler-only", EulerOnly())
    try:
        assert _family_sampler(SamplerSettings(), {}, "euler-only", source="s.yaml").sampler == "euler"
        assert _family_sampler(SamplerSettings(), {}, "sd1", source="s.yaml") == SamplerSettings()
        with pytest.raises(
            BadInput, match=r"s\.yaml: sampler\.sampler: 'ddim' is not a sampler of the euler-only"
        ):
            _family_sampler(SamplerSettings(), {"sampler": "ddim"}, "euler-only", source="s.yaml")
    finally:
        FAMILIES.unregister("euler-only")
