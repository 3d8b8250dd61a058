"""`lyco-bench adapter inspect|merge|extract` on the tiny pipeline, including bad input (exit 2)."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from lyco_bench.adapters import AdapterSpec, inject, load_adapter, merge_adapters
from lyco_bench.adapters.cli import parse_adapter_arg
from lyco_bench.adapters.fileformat import save_tensors
from lyco_bench.cli import main
from tests.helpers import one_thread, perturb  # noqa: F401 - autouse fixture


@pytest.fixture(scope="module")
def adapter_file(tiny_model_dir, tmp_path_factory):
    """A LoRA (attn-mlp) + LoHa (k×k convs) file trained, in effect, on the tiny pipeline."""
    from lyco_bench.models import load_pipeline

    pipe = load_pipeline(tiny_model_dir)
    torch.manual_seed(0)
    net = inject(
        pipe.unet,
        pipe.text_encoder,
        AdapterSpec(algo="lora", dim=4, conv_algo="loha", conv_dim=2, preset="full"),
    )
    perturb(net, scale=0.1)
    path = tmp_path_factory.mktemp("adapter") / "a.safetensors"
    net.save(path, metadata={"base_model": str(tiny_model_dir)})
    return path


def test_parse_adapter_arg():
    assert parse_adapter_arg("a.safetensors") == ("a.safetensors", 1.0, None)
    assert parse_adapter_arg("dir/a.safetensors:0.5") == ("dir/a.safetensors", 0.5, None)
    assert parse_adapter_arg("x:y.safetensors:-1") == ("x:y.safetensors", -1.0, None)
    assert parse_adapter_arg("x:y.safetensors") == ("x:y.safetensors", 1.0, None)
    assert parse_adapter_arg("d/a.safetensors:0.5:dyn=8") == ("d/a.safetensors", 0.5, 8)
    assert parse_adapter_arg("d/a.safetensors:dyn=4") == ("d/a.safetensors", 1.0, 4)


def test_inspect_prints_modules_totals_and_metadata(adapter_file, capsys):
    assert main(["adapter", "inspect", str(adapter_file), "--width", "250"]) == 0
    out = capsys.readouterr().out
    file = load_adapter(adapter_file)
    total = sum(t.numel() for k, t in file.tensors.items() if not k.endswith(".alpha"))
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q" in out
    assert "lora_down:4×32" in out and "hada_w1_a:" in out
    assert f"{total:,}" in out and "lyco_bench.settings" in out
    assert f"{len(file.modules)} modules" in out

    assert main(["adapter", "inspect", str(adapter_file), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    rows = {r["module"]: r for r in data["modules"]}
    q = rows["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"]
    assert (q["algo"], q["rank_bound"], q["params"], q["alpha"]) == ("lora", 4, 4 * 32 + 32 * 4, 4.0)
    conv = rows["lora_unet_down_blocks_0_resnets_0_conv1"]
    assert conv["algo"] == "loha" and conv["rank_bound"] == 4  # LoHa: rank ≤ r² = 4
    assert sum(r["params"] for r in data["modules"]) == total


def test_merge_writes_a_loadable_pipeline(tiny_model_dir, adapter_file, tmp_path, capsys):
    from diffusers import StableDiffusionPipeline

    from lyco_bench.models import load_pipeline

    out = tmp_path / "merged"
    args = ["adapter", "merge", "--base", str(tiny_model_dir), "--adapter", f"{adapter_file}:0.5"]
    assert main([*args, "--adapter", f"{adapter_file}:0.25", "--out", str(out)]) == 0
    assert "merged 0.5·a.safetensors + 0.25·a.safetensors" in capsys.readouterr().err.replace("\n", "")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]  # no temp folder left
    merged = StableDiffusionPipeline.from_pretrained(out, safety_checker=None, requires_safety_checker=False)
    want = load_pipeline(tiny_model_dir)
    merge_adapters(want.unet, want.text_encoder, [(adapter_file, 0.75)])
    for model in ("unet", "text_encoder"):
        got_state, want_state = getattr(merged, model).state_dict(), getattr(want, model).state_dict()
        for key, value in want_state.items():
            torch.testing.assert_close(got_state[key], value, rtol=1e-6, atol=1e-7, msg=key)
    assert main([*args, "--out", str(out)]) == 2  # exists
    assert "already exists" in capsys.readouterr().err


def test_extract_recovers_the_merged_adapter(tiny_model_dir, adapter_file, tmp_path, capsys):
    merged = tmp_path / "merged"
    assert (
        main(
            [
                "adapter",
                "merge",
                "--base",
                str(tiny_model_dir),
                "--adapter",
                str(adapter_file),
                "--out",
                str(merged),
            ]
        )
        == 0
    )
    out = tmp_path / "x.safetensors"
    # LoRA dim 4 → rank 4 recovers the linear layers exactly; LoHa dim 2 → rank ≤ 4 on the convs
    cmd = [
        "adapter",
        "extract",
        "--base",
        str(tiny_model_dir),
        "--tuned",
        str(merged),
        "--rank",
        "4",
        "--out",
        str(out),
    ]
    assert main([*cmd, "--width", "200"]) == 0
    captured = capsys.readouterr().out
    file = load_adapter(out)
    assert set(file.modules) == set(load_adapter(adapter_file).modules)
    assert set(file.algorithms()) == {"lora"}
    assert "relative error" in captured and "extracted 95 layers" in captured
    worst = float(captured.split("worst ")[1].split()[0])
    assert worst < 1e-4
    assert main(cmd) == 2  # exists
    assert main([*cmd[:-2], "--out", str(tmp_path / "y.safetensors"), "--rank", "0"]) == 2
    assert not (tmp_path / "y.safetensors").exists()


def test_bad_input_exits_2_and_writes_nothing(tiny_model_dir, adapter_file, tmp_path, capsys):
    pickled = tmp_path / "evil.safetensors"
    pickled.write_bytes(pickle.dumps({"lora_unet_conv_in.alpha": 1.0}))
    nomatch = tmp_path / "nomatch.safetensors"
    save_tensors(
        nomatch,
        {
            "lora_unet_nowhere.lora_down.weight": torch.zeros(2, 4),
            "lora_unet_nowhere.lora_up.weight": torch.zeros(4, 2),
        },
        {},
    )
    wrong = tmp_path / "wrong.safetensors"
    key = "lora_unet_conv_in"
    save_tensors(
        wrong,
        {
            f"{key}.lora_down.weight": torch.zeros(2, 5, 3, 3),
            f"{key}.lora_up.weight": torch.zeros(32, 2, 1, 1),
        },
        {},
    )
    out = tmp_path / "out"
    cases = [
        (["adapter", "inspect", str(pickled)], "not a safetensors file"),
        (["adapter", "inspect", str(tmp_path / "missing.safetensors")], "no such file"),
        (
            ["adapter", "merge", "--base", str(tiny_model_dir), "--adapter", str(pickled), "--out", str(out)],
            str(pickled),
        ),
        (
            [
                "adapter",
                "merge",
                "--base",
                str(tiny_model_dir),
                "--adapter",
                f"{adapter_file}:0.5",
                "--adapter",
                str(nomatch),
                "--out",
                str(out),
            ],
            "lora_unet_nowhere matches no layer",
        ),
        (
            ["adapter", "merge", "--base", str(tiny_model_dir), "--adapter", str(wrong), "--out", str(out)],
            "lora_unet_conv_in",
        ),
        (
            [
                "adapter",
                "merge",
                "--base",
                str(tmp_path / "no-model"),
                "--adapter",
                str(adapter_file),
                "--out",
                str(out),
            ],
            "no-model",
        ),
        (
            [
                "adapter",
                "extract",
                "--base",
                str(tiny_model_dir),
                "--tuned",
                str(tiny_model_dir),
                "--rank",
                "2",
                "--out",
                str(tmp_path / "e.safetensors"),
            ],
            "does not differ",
        ),
        (
            [
                "adapter",
                "extract",
                "--base",
                str(tiny_model_dir),
                "--tuned",
                str(tiny_model_dir),
                "--rank",
                "2",
                "--out",
                str(tmp_path / "e.bin"),
            ],
            "must end in .safetensors",
        ),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err, (argv, err)
        assert len(err.splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "evil.safetensors",
        "nomatch.safetensors",
        "wrong.safetensors",
    ]


def test_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["adapter", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "inspect" in out and "merge" in out and "extract" in out
