"""The report's first view (one metric per criterion, the costs in human units, the Pareto marks
with a cost), the settings results record per plug-in, readable figure ticks."""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
import pytest

from lyco_bench.analysis.board import compute_leaderboard
from lyco_bench.analysis.choices import report_choices
from lyco_bench.analysis.results import setting_columns
from lyco_bench.analysis.uncertainty import BootstrapSettings
from lyco_bench.analysis.units import human_bytes, human_count, human_seconds
from lyco_bench.analysis.views import (
    cost_table,
    full_columns,
    pareto_points,
    pareto_view_marks,
    view_columns,
    view_rows,
)
from lyco_bench.errors import BadInput
from tests.helpers import IMG, TXT, hand_results, synthetic_results

matplotlib.use("Agg")
FAST = BootstrapSettings(n_resamples=200, seed=0)


def test_human_units():
    assert [human_count(v) for v in (0, 980, 11580, 215040, 999960, 1158000, np.nan)] == [
        "0", "980", "11.6 k", "215 k", "1.00 M", "1.16 M", "–",
    ]  # fmt: skip
    assert [human_bytes(v) for v in (512, 70810, 903584, 3.2e6, 999_700, None)] == [
        "512 B", "71 kB", "904 kB", "3.2 MB", "1.0 MB", "–",
    ]  # fmt: skip
    assert [human_seconds(v) for v in (4.21, 42, 210, 3600 * 1.23)] == ["4.2 s", "42 s", "3.5 min", "1.2 h"]


def _labels(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    """A results-like table of (metric, prompt class, label) rows."""
    return pd.DataFrame(rows, columns=["metric", "prompt_class", "label"])


def test_view_columns_one_metric_per_criterion():
    table = _labels(
        [
            ("squared_centroid_distance", "alter", "SCD (alter)"),
            ("image_similarity", "trigger", "IS (trigger)"),
            ("image_similarity", "alter", "IS (alter)"),
            ("text_similarity", "train", "TS (train)"),
            ("text_similarity", "alter", "TS (alter)"),
            ("vendi", "train", "Vendi (train)"),
            ("drift", "agnostic", "Drift (agnostic)"),  # preservation, not a headline
            ("intrusion", "agnostic", "Intrusion (agnostic)"),  # its own column: leakage
            ("clip_iqa", "alter", "CLIP-IQA (alter)"),  # quality, no headline: the first present
        ]
    )
    columns = view_columns(table, report_choices())
    # fidelity: image similarity (the first headline in registry order) in its first declared
    # class present; preservation: drift (no headline present); leakage and quality when present
    assert columns == [
        ("fidelity", "IS (alter)"), ("controllability", "TS (alter)"), ("diversity", "Vendi (train)"),
        ("preservation", "Drift (agnostic)"), ("leakage", "Intrusion (agnostic)"), ("quality", "CLIP-IQA (alter)"),
    ]  # fmt: skip
    # a study's analysis.headline override: squared centroid distance stands for fidelity
    chosen = view_columns(table, report_choices(headline=["squared_centroid_distance", "text_similarity"]))
    assert chosen[0] == ("fidelity", "SCD (alter)") and chosen[1] == ("controllability", "TS (alter)")


def test_first_view_costs_in_human_units(tmp_path):
    results = hand_results(tmp_path)
    board = compute_leaderboard(results, bootstrap=FAST)
    # measured per checkpoint (two seeds each); A: 80 and 100 s → 90 s on average
    runs = results.drop_duplicates("checkpoint")
    runs = runs[runs["algo"] != "base"]
    offset = np.where(runs["seed"] == 23, -10.0, 10.0)
    costs = pd.DataFrame({"config": runs["config"], "seed": runs["seed"], "epoch": runs["epoch"],
                          "train_seconds": runs["trainable_params"] * 0.09 + offset, "peak_memory_bytes": 2.5e9})  # fmt: skip
    table = cost_table(costs)
    assert table.set_index("config").loc["A", "train_seconds"] == pytest.approx(90.0)
    assert table["n_checkpoints"].tolist() == [2, 2, 2, 2]
    columns = view_columns(board.table, report_choices())
    header, rows = view_rows(board, columns, costs=table)
    names = [h["text"] for h in header]
    assert names == ["config", "epoch", "fidelity", "controllability", "params", "size", "train time",
                     "peak memory", "Pareto", "mean rank"]  # fmt: skip
    assert header[2]["sub"] == "Image Similarity (alter)" and "dinov2" in header[2]["title"]
    assert "higher is better" in header[2]["title"]
    by_config = {r[0]["text"]: r for r in rows}
    a = by_config["A"]  # 1000 params, 4000 bytes, 90 s
    assert a[0]["sub"] == "lora"  # the algorithm under the configuration's name
    assert [c["text"] for c in a[4:8]] == ["1.00 k", "4.0 kB", "1.5 min", "2.5 GB"]
    assert a[4]["sort"] == 1000.0 and a[5]["sort"] == 4000.0  # the page sorts on raw values
    assert by_config["base"][4]["text"] == "–"  # the base model has no adapter
    # without measured costs the columns are left out, not shown empty
    names = [h["text"] for h in view_rows(board, columns)[0]]
    assert "train time" not in names and "peak memory" not in names and "params" in names
    with pytest.raises(BadInput, match="costs: no column epoch"):
        cost_table(costs.drop(columns="epoch"))
    # the full table: every label, the settings the algorithms declare
    full_header, _ = view_rows(
        board, full_columns(board), settings=["preset", "lr", "dim"], full=True, costs=table
    )
    assert (
        len(full_header) == 3 + 3 + len(set(results["label"])) + 4 + 2
    )  # ids, settings, labels, costs, marks
    image = next(h for h in full_header if h["text"] == "Image Similarity (alter)")
    assert image["sub"] == "dinov2-resize"  # variants of one metric told apart


def test_pareto_marks_with_file_size(tmp_path):
    # "big" is better on both axes; "small" is worse but ships a smaller file
    results = synthetic_results(tmp_path, {"big": 0.1, "small": 0.0, "worse": -0.1})
    sizes = {"big": 9000, "small": 1000, "worse": 5000}
    results["file_bytes"] = results["config"].map(sizes)
    board = compute_leaderboard(results, bootstrap=FAST)
    assert set(board.pareto_axes) == {
        lb for lb in results["label"].unique() if lb.startswith(("Image Similarity", "Text Similarity"))
    }
    points = pareto_points(board).set_index("config")
    assert points["front"].to_dict() == {"big": True, "small": False, "worse": False}
    assert points["front_cost"].to_dict() == {"big": True, "small": True, "worse": False}
    marks = dict(zip(board.configs()["config"], pareto_view_marks(board), strict=True))
    assert marks == {"big": "★", "small": "☆", "worse": ""}
    assert IMG and TXT  # the helpers' metric names the axes come from


def test_results_record_settings_each_plugin_declares():
    from lyco_bench.sweep.collect import _adapter_columns

    lora = _adapter_columns({"algo": "lora", "dim": 4, "preset": "attn-only"})
    assert lora["preset"] == "attn-only" and lora["dim"] == 4
    for method in ("textual_inversion", "hypernetwork"):  # model-level: no layers, no preset
        columns = _adapter_columns({"algo": method})
        assert columns["preset"] is None and "dim" not in columns
    table = pd.DataFrame(
        columns=["checkpoint", "config", "preset", "dim", "train_seconds", "peak_memory_bytes"]
    )
    assert setting_columns(table) == ["dim"]  # costs are not settings


def _overlaps(ax) -> bool:
    ax.figure.canvas.draw()
    renderer = ax.figure.canvas.get_renderer()
    for labels in (ax.get_xticklabels(), ax.get_yticklabels()):
        boxes = [t.get_window_extent(renderer) for t in labels if t.get_text() and t.get_visible()]
        if any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :]):
            return True
    return False


def test_tradeoff_ticks_do_not_overlap():
    import matplotlib.pyplot as plt

    from lyco_bench.analysis.plots import _scatter, legend_label

    # values that differ in the 4th digit, the case that ran into one unreadable string
    points = pd.DataFrame(
        {"x": [0.97215, 0.97221, 0.97228, 0.97233], "y": [0.31412, 0.31418, 0.31425, 0.31409],
         "algo": ["lora", "lora", "textual_inversion", "loha"], "Preset": ["attn-mlp", "full", "", "attn-mlp"],
         "Epoch": [10.0, 10.0, 10.0, 10.0]}
    )  # fmt: skip
    plain = plt.figure(figsize=(5, 4.5))
    plain.subplots().scatter(points["x"], points["y"])
    assert _overlaps(plain.axes[0])  # matplotlib's defaults: the labels collide
    fig = plt.figure(figsize=(5, 4.5))
    ax = fig.subplots()
    _scatter(ax, points, x="x", y="y", factor="Preset", cmap=plt.get_cmap("viridis"))
    assert not _overlaps(ax)
    assert ax.xaxis.get_offset_text().get_text()  # the shared digits moved to the offset
    legend = sorted(t.get_text() for t in ax.get_legend().get_texts())
    assert legend == ["loha Preset=attn-mlp", "lora Preset=attn-mlp", "lora Preset=full", "textual_inversion"]
    assert legend_label("hypernetwork", "Preset", np.nan) == "hypernetwork"
    plt.close("all")


@pytest.mark.parametrize("bad", [{"group_by": ("missing",)}, {"columns": ("nope",)}])
def test_variant_grids_name_missing_columns(tmp_path, bad):
    from lyco_bench.analysis.grids import GridSet
    from lyco_bench.errors import BadInput

    sets = pd.DataFrame({"config": ["a"], "multiplier": [1.0], "manifest": [tmp_path / "m.parquet"]})
    spec = {"columns": ("multiplier",), "group_by": ("config",), **bad}
    with pytest.raises(BadInput, match="no column"):
        GridSet(sets, spec["columns"], spec["group_by"]).loaded()


def test_report_cli_costs(tmp_path):
    import argparse

    from lyco_bench.analysis.cli import register_cli
    from lyco_bench.analysis.results import write_results

    results = hand_results(tmp_path / "scores")
    write_results(results, tmp_path / "results.parquet")
    pd.DataFrame(
        {"config": ["A", "A"], "seed": [23, 24], "epoch": [10, 10], "train_seconds": [30.0, 50.0]}
    ).to_csv(tmp_path / "costs.csv", index=False)
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers())
    argv = ["report", str(tmp_path / "results.parquet"), "--out", str(tmp_path / "r"), "--resamples", "200"]
    args = parser.parse_args([*argv, "--costs", str(tmp_path / "costs.csv")])
    assert args.func(args) == 0
    written = pd.read_csv(tmp_path / "r" / "costs.csv")
    row = written.iloc[0]  # the two seeds averaged; costs a table lacks stay empty
    assert len(written) == 1 and (row["config"], row["epoch"], row["train_seconds"]) == ("A", 10.0, 40.0)
    assert row["n_checkpoints"] == 2 and pd.isna(row["peak_memory_bytes"])
    assert "40 s" in (tmp_path / "r" / "index.html").read_text()
    (tmp_path / "bad.csv").write_bytes(b"\xff\xfe\x00garbage")
    for bad, message in (
        (tmp_path / "missing.csv", "not a readable costs.csv"),
        (tmp_path / "bad.csv", "--costs"),
    ):
        args = parser.parse_args([*argv[:3], str(tmp_path / "r2"), "--costs", str(bad)])
        with pytest.raises(BadInput, match=message):
            args.func(args)
        assert not (tmp_path / "r2" / "index.html").exists()
