"""DyLoRA: one block trained per step at the sampled rank, a plain LoRA file at full rank, and
evaluation at truncated ranks (A1111's ``dyn=``) — in the adapter API, the CLI and a study."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from lyco_bench.adapters import ALGORITHMS, AdapterSpec, inject, load_adapter
from lyco_bench.adapters.algorithms.dylora import DyLoRAModule
from lyco_bench.adapters.ops import delta_weights, truncate_adapter
from lyco_bench.errors import BadInput
from tests.helpers import perturb, run_models, tiny_models

F64 = torch.float64


def module(layer: nn.Module, **settings) -> DyLoRAModule:
    torch.manual_seed(0)
    m = DyLoRAModule(layer.to(F64).requires_grad_(False), **settings)
    for block in m.up_blocks:
        nn.init.normal_(block)
    return m


def dense(m: DyLoRAModule, rank: int) -> torch.Tensor:
    """(α/rank)·B[:, :rank]·A[:rank], flattened like the base weight (the definition)."""
    down = torch.cat(list(m.down_blocks)).flatten(1)[:rank]
    up = torch.cat(list(m.up_blocks), dim=1).flatten(1)[:, :rank]
    return (m.alpha / rank * up @ down).view_as(m.base.weight)


def test_options_and_validation():
    assert AdapterSpec(algo="dylora").options == {"dim": 32, "alpha": 16.0, "block_size": 4}
    assert AdapterSpec(algo="dylora", dim=8).options["alpha"] == 8.0  # α = dim when only dim is given
    with pytest.raises(BadInput, match="dim 6 is not a multiple of block_size 4"):
        DyLoRAModule(nn.Linear(4, 4), dim=6)
    with pytest.raises(BadInput, match="factor"):
        DyLoRAModule(nn.Linear(4, 4), factor=4)


@pytest.mark.parametrize("layer", [nn.Linear(12, 10), nn.Conv2d(6, 5, 3, padding=1)], ids=["linear", "conv"])
def test_training_step_uses_the_sampled_rank_and_trains_one_block(layer):
    m = module(layer, dim=6, alpha=3.0, block_size=2).train()
    x = torch.randn(4, 12, dtype=F64) if isinstance(layer, nn.Linear) else torch.randn(2, 6, 5, 5, dtype=F64)
    generator = torch.Generator().manual_seed(3)
    seen = set()
    for _ in range(12):
        m.before_step(generator)
        k = m.active_blocks
        seen.add(k)
        m.zero_grad(set_to_none=True)
        y = m(x)
        want = m.base_op(x, m.base.weight + dense(m, 2 * k), m.base.bias)
        assert_close(y, want)
        y.square().sum().backward()
        # only block k (1-based) moves; the lower ones take part with their gradients stopped
        grads = [p.grad is not None for p in m.down_blocks]
        assert grads == [i == k - 1 for i in range(3)]
        assert [p.grad is not None for p in m.up_blocks] == grads
    assert seen == {1, 2, 3}  # k uniform over the blocks
    m.eval()
    assert_close(m.delta_weight(), dense(m, 6))  # outside training: the full-rank LoRA, α/r


def test_rank_samples_repeat_for_the_same_seed_and_step():
    def draws(seed: int) -> list[int]:
        unet, te = tiny_models(0)
        torch.manual_seed(0)
        net = inject(unet, te, AdapterSpec(algo="dylora", dim=8, block_size=2, preset="attn-only"))
        out = []
        for step in range(3):
            net.before_step(step, seed=seed)
            out += [m.active_blocks for m in net.adapters.values()]
        return out

    assert draws(5) == draws(5) and draws(5) != draws(6)


def test_file_is_a_plain_lora_told_apart_by_metadata(tmp_path):
    unet, te = tiny_models(0)
    torch.manual_seed(0)
    net = inject(unet, te, AdapterSpec(algo="dylora", dim=4, block_size=2, preset="attn-only"))
    perturb(net, scale=0.1)
    net.eval()
    want = run_models(unet, te)
    path = tmp_path / "dylora.safetensors"
    net.save(path)
    file = load_adapter(path)
    assert file.algorithms() == {"dylora": len(net.adapters)}
    assert all(
        set(file.module_tensors(k)) == {"lora_down.weight", "lora_up.weight", "alpha"} for k in file.modules
    )
    # Without the metadata every reader sees a LoRA of the same ΔW (what A1111, ComfyUI apply).
    from lyco_bench.adapters.fileformat import adapter_file_from_tensors

    plain = adapter_file_from_tensors(file.tensors)
    assert plain.algorithms() == {"lora": len(net.adapters)}
    unet2, te2 = tiny_models(0)
    for key, (dw, _) in delta_weights(plain, unet2, te2).items():
        assert_close(dw, net.adapters[key].delta_weight().detach(), rtol=1e-5, atol=1e-7)
    from lyco_bench.adapters import merge_adapters

    merge_adapters(unet2, te2, [(path, 1.0)])
    for got, expected in zip(run_models(unet2, te2), want, strict=True):
        assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_truncation_keeps_the_first_components_at_scale_alpha_over_rank(tmp_path):
    m = module(nn.Linear(12, 10), dim=6, alpha=3.0, block_size=2).float()
    tensors = {f"lora_unet_x.{k}": v for k, v in m.file_tensors().items()}
    from lyco_bench.adapters.fileformat import adapter_file_from_tensors, save_tensors

    save_tensors(tmp_path / "d.safetensors", tensors, {"lyco_bench.algo": "dylora"})
    for rank in (2, 4, 6):
        cut = truncate_adapter(tmp_path / "d.safetensors", rank)
        kept = cut.module_tensors("lora_unet_x")
        assert kept["lora_down.weight"].shape == (rank, 12) and float(kept["alpha"]) == 3.0
        layer = cut.modules["lora_unet_x"].from_file_tensors(m.base.float(), kept, name="x")
        assert_close(layer.delta_weight(), dense(m, rank).float(), rtol=1e-5, atol=1e-6)
    with pytest.raises(BadInput, match="rank 7 is outside 1..6"):
        truncate_adapter(tmp_path / "d.safetensors", 7)
    lokr = {
        f"lora_unet_x.{k}": v for k, v in ALGORITHMS["lokr"](nn.Linear(8, 8), factor=2).file_tensors().items()
    }
    with pytest.raises(BadInput, match="lokr factors are not ordered by rank"):
        truncate_adapter(adapter_file_from_tensors(lokr), 2)


def test_cli_inspect_and_merge_take_a_rank(tmp_path, tiny_model_dir, capsys):
    from lyco_bench.cli import main

    unet, te = tiny_models(0)
    torch.manual_seed(0)
    net = inject(unet, te, AdapterSpec(algo="dylora", dim=4, block_size=2, preset="attn-only"))
    perturb(net, scale=0.1)
    path = tmp_path / "d.safetensors"
    net.save(path)
    assert main(["adapter", "inspect", str(path), "--rank", "2", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["modules"]
    assert {r["rank_bound"] for r in rows} == {2}
    assert main(["adapter", "merge", "--base", str(tiny_model_dir), "--adapter", f"{path}:1:dyn=9",
                 "--out", str(tmp_path / "m")]) == 2  # fmt: skip
    assert "rank 9 is outside 1..4" in capsys.readouterr().err and not (tmp_path / "m").exists()


@pytest.mark.e2e
def test_training_resumes_to_the_same_bytes(tmp_path, tiny_model_dir):
    """The rank drawn at each step depends on (seed, step) only: a resumed run matches."""
    from lyco_bench.data import make_demo_dataset
    from lyco_bench.training import checkpoint_path, train
    from tests.helpers import run_config

    data = make_demo_dataset(tmp_path / "data", seed=0, images_per_concept=2)
    adapter = {"algo": "dylora", "dim": 4, "alpha": 2, "block_size": 2}
    cfg = run_config(
        tiny_model_dir, data, tmp_path / "cache", adapter=adapter, epochs=2, checkpoint_epochs=[1]
    )
    train(cfg, tmp_path / "full")

    class Killed(Exception):
        pass

    def kill(epoch: int) -> None:
        if epoch == 1:
            raise Killed

    with pytest.raises(Killed):
        train(cfg, tmp_path / "resumed", on_epoch_end=kill)
    train(cfg, tmp_path / "resumed")
    for name in ("full", "resumed"):
        assert set(load_adapter(checkpoint_path(tmp_path / name, 2)).algorithms()) == {"dylora"}
    assert (
        checkpoint_path(tmp_path / "full", 2).read_bytes()
        == checkpoint_path(tmp_path / "resumed", 2).read_bytes()
    )


@pytest.mark.e2e
def test_a_study_evaluates_one_training_at_several_ranks(tmp_path, tiny_model_dir, demo_dataset_dir, capsys):
    import pandas as pd
    import yaml

    from lyco_bench.cli import main
    from lyco_bench.metrics.tiny import make_tiny_encoders
    from tests.helpers import micro_study

    encoders = make_tiny_encoders(tmp_path / "enc", seed=0)
    path = micro_study(tmp_path, model=str(tiny_model_dir), dataset=str(demo_dataset_dir), encoders=encoders)
    spec = yaml.safe_load(path.read_text())
    spec["algorithms"] = {"dylora": {"adapter": {"dim": 4, "alpha": 4, "block_size": 2}, "default": "dyl",
                                     "eval_ranks": [2, 4], "training": {"lr": 1e-3}}}  # fmt: skip
    path.write_text(yaml.safe_dump(spec))
    store = tmp_path / "store"
    assert main(["run", str(path), "--store", str(store), "--no-analysis"]) == 0
    table = pd.read_parquet(store / "micro" / "results.parquet")
    runs = table[table["algo"] != "base"].drop_duplicates("config").set_index("config")
    assert sorted(runs.index) == ["dyl-r2", "dyl-r4"] and runs["eval_rank"].to_dict() == {
        "dyl-r2": 2,
        "dyl-r4": 4,
    }
    assert (store / "micro" / "runs" / "dyl").is_dir()  # one training, two evaluations
    # ranks on an algorithm whose factors have no rank order, or above the trained rank: refused
    for block, said in ((
        {"adapter": {"algo": "lokr", "factor": 4}, "default": "k", "eval_ranks": [2]},
        "eval_ranks: lokr factors are not ordered by rank"), (
        {"adapter": {"algo": "dylora", "dim": 4, "block_size": 2}, "default": "d", "eval_ranks": [8]},
        "eval_ranks: rank 8 is above the trained rank 4")):  # fmt: skip
        spec["algorithms"] = {"x": block}
        path.write_text(yaml.safe_dump(spec))
        capsys.readouterr()
        assert main(["plan", str(path), "--store", str(tmp_path / "s2")]) == 2
        assert said in capsys.readouterr().err
