"""Textual Inversion on the tiny model: init, frozen table, files (ours, kohya, A1111, diffusers),
diffusers' loader as the oracle for prompt embeddings, and the real trainer and generation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lyco_bench.adapters import get_algorithm, save_tensors
from lyco_bench.data import Concept, load_dataset
from lyco_bench.errors import BadInput
from lyco_bench.methods import method_of_file
from lyco_bench.methods.textual_inversion import TextualInversion, export_embeddings

WIDTH = 32  # the tiny text encoder's hidden size


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    from lyco_bench.models import load_pipeline

    return load_pipeline(tiny_model_dir)


@pytest.fixture(scope="module")
def concepts(demo_dataset_dir) -> list[Concept]:
    return load_dataset(demo_dataset_dir).concepts


def _fresh_pipe(tiny_model_dir):
    from lyco_bench.models import load_pipeline

    return load_pipeline(tiny_model_dir)


def _ids(pipe, text: str) -> list[int]:
    return list(pipe.tokenizer(text, add_special_tokens=False).input_ids)


def _prompt_embeds(pipe, prompt: str) -> torch.Tensor:
    with torch.no_grad():
        return pipe.encode_prompt(prompt, "cpu", 1, False)[0]


def _concept(key="cat/thing", trigger="zzq dog", descriptive="") -> Concept:
    category, name = key.split("/")
    return Concept(category, name, None, trigger, descriptive, [], 1)


def test_registered_with_its_declarations():
    cls = get_algorithm("textual_inversion")
    assert cls is TextualInversion and cls.default_lr == 5e-3 and cls.text_encoder_gradients
    assert TextualInversion().merges_exactly
    with pytest.raises(BadInput, match="textual_inversion"):
        TextualInversion(num_vectors=0)
    with pytest.raises(BadInput, match="token"):
        TextualInversion(token="two words")


def test_init_tokens_and_detach(pipe, concepts):
    table = pipe.text_encoder.get_input_embeddings().weight.detach().clone()
    tokenizer, embedding = pipe.tokenizer, pipe.text_encoder.get_input_embeddings()
    checker = concepts[0]  # patterns/checker: trigger "kdl style", descriptive "checkerboard pattern"
    method = TextualInversion(num_vectors=3).attach(pipe, concepts=concepts)
    try:
        p = method.placeholders[0]
        assert (p.token, p.trigger, p.concept, p.vectors) == (
            "<patterns-checker>",
            "kdl style",
            checker.key,
            3,
        )
        assert [q.token for q in method.placeholders][3:] == [
            "<shapes-triangle-filled>",
            "<shapes-triangle-hollow>",
        ]
        # Automatic init: the descriptive words' tokens, cycled to n.
        words = list(tokenizer(checker.descriptive, add_special_tokens=False).input_ids)
        expected = table[[words[i % len(words)] for i in range(3)]]
        assert torch.equal(method.vectors[:3].detach(), expected)
        # Tokens are new, consecutive, and in the pipeline's tokenizer while attached.
        ids = _ids(pipe, p.expanded)
        assert ids == list(range(len(tokenizer), len(tokenizer) + 3))
        assert pipe.tokenizer is not tokenizer and len(pipe.tokenizer) == len(tokenizer) + 15
        # Captions get every token, prompts the placeholder (diffusers' pipeline expands it);
        # the longer trigger wins where one begins another.
        assert method.caption("kdl style, noise", checker) == f"{p.expanded}, noise"
        filled, hollow = method.placeholders[3:]
        assert method.prompt("vrm shape, plo variant and vrm shape, dax variant, vrm shape") == (
            f"{filled.token} and {hollow.token}, vrm shape"
        )
        assert method.prompt("a kdl style") == "a <patterns-checker>"
        assert method.caption("a <patterns-checker>, <patterns-checker>_1", checker) == (
            f"a {p.expanded}, <patterns-checker>_1"
        )
    finally:
        method.detach()
    assert pipe.tokenizer is tokenizer and pipe.text_encoder.get_input_embeddings() is embedding
    assert torch.equal(embedding.weight, table)

    # init_word for every concept; no descriptive words: the trigger's last token.
    word = TextualInversion(num_vectors=2, init_word="red").attach(pipe, concepts=concepts[:1])
    word.detach()
    assert torch.equal(word.vectors.detach(), table[_ids(pipe, "red") * 2])
    bare = TextualInversion().attach(pipe, concepts=[_concept(trigger="zzq dog")])
    bare.detach()
    assert torch.equal(bare.vectors.detach(), table[_ids(pipe, "dog")[-1:]])
    with pytest.raises(BadInput, match="init_word"):
        TextualInversion(init_word=" ").attach(pipe, concepts=concepts[:1])


def test_only_the_new_rows_train(pipe, concepts):
    te = pipe.text_encoder
    frozen = {name: p.detach().clone() for name, p in te.named_parameters()}
    te.requires_grad_(False)
    method = TextualInversion(num_vectors=2).attach(pipe, concepts=concepts[:2])
    try:
        groups = method.parameter_groups(lr=5e-2)
        assert [p for g in groups for p in g["params"]] == [method.vectors]
        assert groups[0]["weight_decay"] == 0.0 and method.num_trainable() == 2 * 2 * WIDTH
        optimizer = torch.optim.AdamW(groups, lr=5e-2, weight_decay=0.1)
        start = method.vectors.detach().clone()
        caption = method.caption("kdl style, a photo", concepts[0])  # only the first concept's tokens
        ids = pipe.tokenizer([caption], padding="max_length", max_length=77, return_tensors="pt").input_ids
        for _ in range(3):
            loss = te(ids)[0].pow(2).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        assert all(p.grad is None for p in te.parameters())
        moved = (method.vectors.detach() != start).any(dim=1)
        assert moved.tolist() == [True, True, False, False]  # the second concept had no gradient
    finally:
        method.detach()
    for name, param in te.named_parameters():
        assert torch.equal(param, frozen[name]), name  # bit-identical, the embedding table included


def test_file_layout_and_round_trip(pipe, concepts, tmp_path):
    method = TextualInversion(num_vectors=2).attach(pipe, concepts=concepts)
    method.detach()
    with torch.no_grad():
        method.vectors.add_(torch.randn(method.vectors.shape, generator=torch.Generator().manual_seed(0)))
    path = tmp_path / "ti.safetensors"
    method.save(path, metadata={"epoch": 3})
    from lyco_bench.adapters.fileformat import read_tensors

    tensors, meta = read_tensors(path)
    assert sorted(tensors) == ["emb_params", "emb_params.1", "emb_params.2", "emb_params.3", "emb_params.4"]
    assert all(t.shape == (2, WIDTH) and t.dtype == torch.float32 for t in tensors.values())
    assert meta["lyco_bench.algo"] == "textual_inversion" and meta["lyco_bench.epoch"] == "3"
    entries = json.loads(meta["lyco_bench.embeddings"])
    assert [(e["key"], e["token"], e["trigger"]) for e in entries][:2] == [
        ("emb_params", "<patterns-checker>", "kdl style"),
        ("emb_params.1", "<patterns-stripes>", "pgs style"),
    ]
    loaded = TextualInversion.from_file(path)
    assert method_of_file(path) is TextualInversion
    assert loaded.placeholders == method.placeholders and torch.equal(loaded.vectors, method.vectors)
    assert loaded.options == method.options
    # Same content → same bytes; load_weights restores in place.
    again = tmp_path / "again.safetensors"
    loaded.save(again, metadata={"epoch": 3})
    assert again.read_bytes() == path.read_bytes()
    fresh = TextualInversion(num_vectors=2).attach(pipe, concepts=concepts)
    fresh.detach()
    fresh.load_weights(path)
    assert torch.equal(fresh.vectors, method.vectors)
    other = TextualInversion(num_vectors=1).attach(pipe, concepts=concepts)
    other.detach()
    with pytest.raises(BadInput, match="do not match"):
        other.load_weights(path)


def test_diffusers_loads_our_files_with_the_same_prompt_embeddings(tiny_model_dir, concepts, tmp_path):
    ours = _fresh_pipe(tiny_model_dir)
    method = TextualInversion(num_vectors=3).attach(ours, concepts=concepts)
    method.detach()
    with torch.no_grad():
        method.vectors.mul_(1.5).add_(0.3)  # anything but an existing token's embedding
    single = TextualInversion(num_vectors=3).attach(ours, concepts=concepts[2:3])
    single.detach()
    with torch.no_grad():
        single.vectors.copy_(method.vectors[6:9])
    one_file = tmp_path / "circle.safetensors"
    single.save(one_file)
    from lyco_bench.adapters.fileformat import read_tensors

    assert list(read_tensors(one_file)[0]) == ["emb_params"]  # one concept: kohya's file
    multi = tmp_path / "all.safetensors"
    method.save(multi, metadata={"epoch": 1})
    exported = export_embeddings(multi, tmp_path / "export")
    assert [p.name for p in exported][:2] == ["patterns-checker.safetensors", "patterns-stripes.safetensors"]
    assert TextualInversion.from_file(exported[4]).placeholders[0].trigger == "vrm shape, dax variant"
    assert json.loads(read_tensors(exported[0])[1]["lyco_bench.epoch"]) == 1

    prompts = {"<shapes-circle>": "a zqx shape, red", "<shapes-triangle-hollow>": "vrm shape, dax variant"}
    loaded = TextualInversion.from_file(multi).attach(ours)
    try:
        expected = {token: _prompt_embeds(ours, loaded.prompt(text)) for token, text in prompts.items()}
        base_ids = _ids(ours, "a zqx shape, red")
    finally:
        loaded.detach()
    for file, token in ((one_file, "<shapes-circle>"), (exported[2], "<shapes-circle>"), (exported[4], "<shapes-triangle-hollow>")):  # fmt: skip
        theirs = _fresh_pipe(tiny_model_dir)
        theirs.load_textual_inversion(str(file), token=token)
        text = prompts[token].replace("zqx shape", token).replace("vrm shape, dax variant", token)
        assert torch.equal(_prompt_embeds(theirs, text), expected[token]), (file.name, token)
    # The base tokenizer is untouched and the prompt without the method differs.
    assert _ids(ours, "a zqx shape, red") == base_ids
    assert not torch.equal(_prompt_embeds(ours, "a zqx shape, red"), expected["<shapes-circle>"])


def test_ecosystem_formats_load(pipe, tmp_path):
    gen = torch.Generator().manual_seed(1)
    vec = torch.randn(2, WIDTH, generator=gen)
    a1111 = tmp_path / "charturner.pt"
    torch.save(
        {
            "string_to_token": {"*": 265},
            "string_to_param": {"*": vec.clone().requires_grad_(True)},
            "name": "x",
            "step": 10,
        },
        a1111,
    )
    learned = tmp_path / "learned_embeds.safetensors"
    save_tensors(learned, {"<cat-toy>": vec[0]}, {})
    learned_bin = tmp_path / "learned_embeds.bin"
    torch.save({"<dog-toy>": vec}, learned_bin)
    kohya = tmp_path / "MyStyle.safetensors"
    save_tensors(kohya, {"emb_params": vec.half()}, {"ss_output_name": "MyStyle"})
    cases = [(a1111, "charturner", 2), (learned, "<cat-toy>", 1), (learned_bin, "<dog-toy>", 2), (kohya, "mystyle", 2)]  # fmt: skip
    for path, token, n in cases:
        assert method_of_file(path) is TextualInversion, path.name
        method = TextualInversion.from_file(path)
        assert [(p.token, p.vectors, p.trigger) for p in method.placeholders] == [(token, n, None)]
        method.attach(pipe)
        try:
            assert method.prompt(f"a {token}") == f"a {token}"  # written in prompts as in A1111
            ids = pipe.tokenizer(method._rewrite(f"a {token}", expand=True), return_tensors="pt").input_ids
            rows = pipe.text_encoder.get_input_embeddings()(ids)[0, 2 : 2 + n]
            assert torch.equal(rows, vec[:n].half().float() if path == kohya else vec[:n]), path.name
        finally:
            method.detach()
    # λ scales the vectors.
    method = TextualInversion.from_file(a1111)
    method.set_multiplier(0.5)
    method.attach(pipe)
    try:
        ids = torch.tensor([[len(pipe.tokenizer) - 2]])
        assert torch.equal(pipe.text_encoder.get_input_embeddings()(ids)[0, 0], vec[0] * 0.5)
    finally:
        method.detach()
    # A file of layer adapters is not a TI file.
    lora = tmp_path / "lora.safetensors"
    save_tensors(lora, {"lora_unet_x.lora_down.weight": vec, "lora_unet_x.lora_up.weight": vec.T}, {})
    assert method_of_file(lora) is None


class _Payload:
    """A pickled object weights_only must refuse (unpickling it would run code)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickled_objects_are_refused(tmp_path):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    torch.save({"string_to_param": {"*": torch.zeros(1, WIDTH)}, "extra": _Payload(str(marker))}, evil)
    assert method_of_file(evil) is TextualInversion  # so generation reports the refusal below
    with pytest.raises(BadInput, match=r"evil\.pt: refused"):
        TextualInversion.from_file(evil)
    assert not marker.exists()
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(BadInput, match=r"junk\.pt: unreadable"):
        TextualInversion.from_file(junk)
    (tmp_path / "fake.safetensors").write_bytes(b"\x80\x04pickle")
    with pytest.raises(BadInput, match="not a safetensors file"):
        TextualInversion.from_file(tmp_path / "fake.safetensors")


def test_sdxl_width_and_collisions_are_refused(pipe, concepts, tmp_path):
    sdxl = tmp_path / "xl.safetensors"
    save_tensors(sdxl, {"clip_l": torch.zeros(2, 768), "clip_g": torch.zeros(2, 1280)}, {})
    sdxl_pt = tmp_path / "xl.pt"
    torch.save({"clip_l": torch.zeros(2, 768), "clip_g": torch.zeros(2, 1280)}, sdxl_pt)
    for path in (sdxl, sdxl_pt):  # read (SDXL's layout), refused by an SD1.x pipeline
        assert method_of_file(path) is TextualInversion
        method = TextualInversion.from_file(path)
        assert method.slots == ("clip_l", "clip_g")
        with pytest.raises(BadInput, match=r"an embedding for clip_l \+ clip_g; this pipeline has one text encoder"):
            method.attach(pipe)
    wide = tmp_path / "wide.safetensors"
    save_tensors(wide, {"emb_params": torch.zeros(1, 768)}, {})
    method = TextualInversion.from_file(wide)
    with pytest.raises(BadInput, match=r"wide\.safetensors: embedding width 768 does not fit"):
        method.attach(pipe)
    cat = tmp_path / "cat.safetensors"  # "cat" is a CLIP token
    save_tensors(cat, {"emb_params": torch.zeros(1, WIDTH)}, {})
    with pytest.raises(BadInput, match=r"cat\.safetensors: placeholder token 'cat' already exists"):
        TextualInversion.from_file(cat).attach(pipe)
    with pytest.raises(BadInput, match="token 'red' already exists"):
        TextualInversion(token="red").attach(pipe, concepts=concepts[:1])
    with pytest.raises(BadInput, match="same token '<sks>'"):
        TextualInversion(token="<sks>").attach(pipe, concepts=concepts[:2])
    with pytest.raises(BadInput, match="same trigger 'zzq dog'"):
        TextualInversion().attach(pipe, concepts=[_concept("a/b"), _concept("a/c")])
    # Nothing was left attached by the refusals.
    assert len(pipe.tokenizer) == 49408
    assert isinstance(pipe.text_encoder.get_input_embeddings(), torch.nn.Embedding)


# --- the real trainer and generation ----------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir):
    """Two TI runs of 3 epochs (one killed after epoch 2 and resumed) on 2 concepts × 2 images."""
    from lyco_bench.data import make_demo_dataset
    from lyco_bench.training import RunConfig, checkpoint_path, state_path, train

    root = tmp_path_factory.mktemp("ti-train")
    data = make_demo_dataset(root / "demo", seed=0, images_per_concept=2)
    cfg = RunConfig(
        model=str(tiny_model_dir),
        dataset=str(data),
        categories=["patterns"],
        adapter={"algo": "textual_inversion", "num_vectors": 2},
        resolution=64,
        buckets={"min": 32, "max": 96, "step": 16},
        batch_size=3,
        warmup_steps=1,
        epochs=3,
        checkpoint_epochs=[1],
        cache_dir=str(root / "latents"),
        seed=5,
    )
    assert cfg.lr == 5e-3
    full = train(cfg, root / "full")

    class Killed(Exception):
        pass

    def kill_after_epoch_2(epoch: int) -> None:
        if epoch == 2:
            raise Killed

    with pytest.raises(Killed):
        train(cfg, root / "resumed", on_epoch_end=kill_after_epoch_2)
    resumed = train(cfg, root / "resumed")
    files = {
        "full": [checkpoint_path(root / "full", 3), state_path(root / "full", 3)],
        "resumed": [checkpoint_path(root / "resumed", 3), state_path(root / "resumed", 3)],
    }
    return {"full": full, "resumed": resumed, "files": files, "dataset": data, "root": root}


def test_training_writes_a_file_and_resumes_to_the_same_bytes(trained, tiny_model_dir):
    full, resumed = trained["full"], trained["resumed"]
    assert (
        [p.name for p in full]
        == [p.name for p in resumed]
        == ["ckpt-e001.safetensors", "ckpt-e003.safetensors"]
    )
    for a, b in zip(trained["files"]["full"], trained["files"]["resumed"], strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name
    method = TextualInversion.from_file(full[-1])
    assert [p.token for p in method.placeholders] == ["<patterns-checker>", "<patterns-stripes>"]
    assert method.vectors.shape == (4, WIDTH)
    record = json.loads(full[-1].with_suffix(".json").read_text())
    assert record["trainable_params"] == 4 * WIDTH
    # Training moved the vectors away from their init.
    from lyco_bench.models import load_pipeline

    init = TextualInversion(num_vectors=2).attach(load_pipeline(tiny_model_dir), concepts=load_dataset(trained["dataset"], categories=["patterns"]).concepts)  # fmt: skip
    init.detach()
    assert not torch.equal(init.vectors.detach(), method.vectors)


def test_a_multi_concept_training_writes_one_file_per_concept_that_diffusers_loads(trained, tiny_model_dir):
    """diffusers' own load_textual_inversion refuses our multi-concept file (several tensors);
    training writes one kohya file per concept beside each checkpoint, which it loads: the
    prompt embeddings with each token equal ours with the trained file attached."""
    ckpt = trained["full"][-1]
    folder = ckpt.with_name("ckpt-e003-embeddings")
    assert sorted(p.name for p in folder.iterdir()) == [
        "patterns-checker.safetensors",
        "patterns-stripes.safetensors",
    ]
    with pytest.raises(ValueError, match="Loaded state dictionary is incorrect"):
        _fresh_pipe(tiny_model_dir).load_textual_inversion(str(ckpt), token="<patterns-checker>")
    ours = _fresh_pipe(tiny_model_dir)
    method = TextualInversion.from_file(ckpt).attach(ours)
    try:
        expected = {p.token: _prompt_embeds(ours, f"a photo of {p.token}") for p in method.placeholders}
    finally:
        method.detach()
    for token, want in expected.items():
        theirs = _fresh_pipe(tiny_model_dir)
        theirs.load_textual_inversion(str(folder / f"{token.strip('<>')}.safetensors"), token=token)
        assert torch.equal(_prompt_embeds(theirs, f"a photo of {token}"), want), token


def test_generation_with_the_trained_file_is_deterministic(trained, pipe, tmp_path):
    from lyco_bench.generation import SamplerSettings, generate
    from lyco_bench.prompts import expand_prompts, load_prompt_set

    items = expand_prompts(
        load_prompt_set("demo"), load_dataset(trained["dataset"], categories=["patterns"]), ["trigger"], images_per_prompt=1
    )  # fmt: skip
    sampler = SamplerSettings(steps=2, width=64, height=64, batch_size=2)
    ckpt = trained["full"][-1]

    def run(out: Path, adapters) -> dict[str, bytes]:
        generate(model="tiny", items=items, out_dir=out, sampler=sampler, pipeline=pipe, adapters=adapters)
        return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.png"))}

    tokenizer = pipe.tokenizer
    first = run(tmp_path / "a", [(ckpt, 1.0)])
    assert pipe.tokenizer is tokenizer and isinstance(
        pipe.text_encoder.get_input_embeddings(), torch.nn.Embedding
    )
    second = run(tmp_path / "b", [(ckpt, 1.0)])
    base = run(tmp_path / "base", [])
    assert first and first == second
    assert first.keys() == base.keys() and all(first[k] != base[k] for k in first)


def test_two_embeddings_attached_together(pipe, tmp_path):
    gen = torch.Generator().manual_seed(2)
    first, second = torch.randn(2, WIDTH, generator=gen), torch.randn(1, WIDTH, generator=gen)
    save_tensors(tmp_path / "onezq.safetensors", {"emb_params": first}, {})
    save_tensors(tmp_path / "two.safetensors", {"<two>": second}, {})
    tokenizer, embedding = pipe.tokenizer, pipe.text_encoder.get_input_embeddings()
    a = TextualInversion.from_file(tmp_path / "onezq.safetensors").attach(pipe)
    b = TextualInversion.from_file(tmp_path / "two.safetensors").attach(pipe)
    try:
        ids = pipe.tokenizer("onezq onezq_1 <two> red", return_tensors="pt").input_ids
        rows = pipe.text_encoder.get_input_embeddings()(ids)[0]
        assert torch.equal(rows[1:3], first) and torch.equal(rows[3], second[0])
        assert torch.equal(rows[4], embedding.weight[_ids(pipe, "red")[0]])
        with pytest.raises(RuntimeError, match="reverse order"):
            a.detach()
    finally:
        b.detach()
        a.detach()
    assert pipe.tokenizer is tokenizer and pipe.text_encoder.get_input_embeddings() is embedding
