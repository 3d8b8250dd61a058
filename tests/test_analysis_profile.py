"""Figures say which evaluation profile produced their numbers (the paper's published CSV, or a
study scored under ``paper`` / ``lyco``); the profile column is not a configuration setting."""

from __future__ import annotations

import matplotlib.figure
import pandas as pd
import pytest

from lyco_bench.analysis.plots import category_values, epoch_curves, figure_caption
from lyco_bench.analysis.results import (
    PROFILE_CAPTIONS,
    profile_caption,
    read_paper_csv,
    setting_columns,
)


def test_profile_captions_name_the_profile(paper_dir):
    table = read_paper_csv(paper_dir / "ddim_sd15_metrics_mean.csv", paper_dir / "config_mapping.csv")
    assert set(table["profile"]) == {"paper-published"}
    assert profile_caption(table) == PROFILE_CAPTIONS["paper-published"]
    assert "published" in profile_caption(table)
    assert "profile" not in setting_columns(table)  # not a SHAP feature nor a leaderboard column
    assert "`paper`" in profile_caption(pd.DataFrame({"profile": ["paper"]}))
    assert "`lyco`" in profile_caption(pd.DataFrame({"profile": ["lyco"]}))
    assert "not recorded" in profile_caption(pd.DataFrame({"value": [1.0]}))


def test_figures_carry_the_caption(tmp_path, monkeypatch):
    texts: list[str] = []
    save = matplotlib.figure.Figure.savefig

    def spy(fig, *args, **kwargs):
        texts.extend(t.get_text() for t in fig.texts)
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    from tests.helpers import synthetic_results

    values = category_values(synthetic_results(tmp_path / "in", {"A": 0.0, "B": 0.1}))
    with figure_caption(PROFILE_CAPTIONS["paper"]):
        epoch_curves(values, label=values["label"].iloc[0], path=tmp_path / "a.png")
    assert texts == [PROFILE_CAPTIONS["paper"]]
    texts.clear()
    epoch_curves(values, label=values["label"].iloc[0], path=tmp_path / "b.png")  # outside: no caption
    assert texts == []


@pytest.mark.e2e
@pytest.mark.parametrize("profile", ["paper", "lyco"])
def test_run_analysis_captions_every_figure(tmp_path, monkeypatch, profile):
    from lyco_bench.analysis.pipeline import run_analysis
    from tests.helpers import hand_results

    captions: list[list[str]] = []
    save = matplotlib.figure.Figure.savefig

    def spy(fig, *args, **kwargs):
        captions.append([t.get_text() for t in fig.texts])
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    results = hand_results(tmp_path / "in").assign(profile=profile)
    outputs = run_analysis(results, tmp_path / "out", shap_refits=0)
    assert outputs.figures and len(captions) == len(outputs.figures)
    assert all(PROFILE_CAPTIONS[profile] in c for c in captions)
