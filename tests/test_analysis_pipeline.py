"""The sweep's path through the analysis: score parquet files + run table → collect_results →
run_analysis → write_report, on a demo-sized study (tiny epochs and dims, all four algorithms)."""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd
import pytest

from lyco_bench.analysis import collect_results, run_analysis, write_report
from lyco_bench.analysis.report import check_report_files

CONFIGS = {  # config → (algo, dim, factor, lr, preset)
    "lora-d2": ("lora", 2, np.nan, 1e-3, "attn-mlp"),
    "lora-d4": ("lora", 4, np.nan, 1e-3, "attn-mlp"),
    "lora-attn": ("lora", 2, np.nan, 1e-3, "attn-only"),
    "loha-d2": ("loha", 2, np.nan, 1e-3, "attn-mlp"),
    "lokr-f4": ("lokr", 10000, 4, 1e-3, "attn-mlp"),
    "native": ("native", np.nan, np.nan, 1e-5, "attn-mlp"),
}
LEAVES = [("toys", "bear", ""), ("toys", "duck", ""), ("chars", "ann", "red"), ("chars", "ann", "blue")]


def _score_rows(config: str, seed: int, epoch: int) -> list[dict]:
    rows = []
    attn_only = config.endswith("attn")
    for category, concept, subclass in [*LEAVES, ("toys", "", ""), ("chars", "", "")]:
        jitter = (zlib.crc32(f"{config}{seed}{concept}{subclass}".encode()) % 100) / 1e5
        for metric, encoder, mode, value in (
            ("image_similarity", "dinov2", "resize", 0.2 + 0.1 * epoch - 0.1 * attn_only + jitter),
            ("text_similarity", "clip", "", 0.3 - 0.05 * epoch + jitter),
            ("vendi", "dinov2", "", 4.0 - 0.5 * epoch + jitter),
        ):
            rows.append(
                {"checkpoint": f"{config}-{seed}-e{epoch}", "category": category, "concept": concept,
                 "subclass": subclass, "prompt_class": "alter", "metric": metric, "encoder": encoder,
                 "mode": mode, "value": value, "n_images": 2, "prompt_set_version": "1", "reason": ""}
            )  # fmt: skip
    return rows


@pytest.mark.e2e
def test_sweep_results_to_report(tmp_path):
    files, runs = [], []
    for config, (algo, dim, factor, lr, preset) in CONFIGS.items():
        for seed in (1, 2):
            for epoch in (1, 2):
                path = tmp_path / "scores" / f"{config}-{seed}-e{epoch}.parquet"
                path.parent.mkdir(exist_ok=True)
                pd.DataFrame(_score_rows(config, seed, epoch)).to_parquet(path)
                files.append(path)
                runs.append(
                    {"checkpoint": f"{config}-{seed}-e{epoch}", "config": config, "algo": algo, "preset": preset,
                     "lr": lr, "dim": dim, "alpha": dim, "factor": factor, "seed": seed, "epoch": epoch,
                     "trainable_params": 100, "file_bytes": 1000}
                )  # fmt: skip
    results = collect_results(files[::-1], pd.DataFrame(runs))  # input order does not matter
    outputs = run_analysis(results, tmp_path / "analysis")
    assert outputs.n_fitted == 3
    levels = pd.read_csv(outputs.shap_levels, dtype={"level": str}).set_index(["metric", "feature", "level"])
    shap = levels["mean_shap"]
    img, text = "Image Similarity (dinov2-resize) (alter)", "Text Similarity (clip) (alter)"
    assert shap[(img, "Epoch", "2")] > 0 > shap[(img, "Epoch", "1")]
    assert shap[(text, "Epoch", "1")] > 0 > shap[(text, "Epoch", "2")]
    assert shap[(img, "Preset", "attn-only")] < 0
    # lora dims 2/4 are not the paper's: levels by order (2 → 2, 4 → 3); LoKr factor 4 is the
    # paper's level 3; native is 4
    assert set(levels.loc[(img, "Capacity")].index) == {"2", "3", "4"}
    assert levels.loc[(img, "Capacity", "4"), "mean_abs_shap"] == 0.0
    names = {p.name for p in outputs.figures}
    assert {"tradeoff_toys_epoch.png", "tradeoff_chars_capacity.png"} <= names
    assert all(p.is_file() for p in outputs.figures)

    index = write_report(study_name="demo", results=results, out_dir=tmp_path / "reports" / "demo",
                         figures=outputs.figures)  # fmt: skip
    assert check_report_files(index) == []
    assert index.read_text().count("<img") == len(outputs.figures) + 1  # and the Pareto view
