"""The best-checkpoint rule and the overfitting flag on synthetic curves (exact picks), and the
trajectory table built from a results table (means and paired differences derived by hand)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from lyco_bench.analysis import collect_results
from lyco_bench.analysis.trajectory import (
    BestCheckpointRule,
    Curve,
    CurvePoint,
    curves_of,
    pick_checkpoint,
    picks_table,
    trajectory_table,
    write_csv,
)
from lyco_bench.analysis.trajectory_plot import trajectory_figures
from lyco_bench.analysis.uncertainty import BootstrapSettings

NAN = math.nan
RULE = BestCheckpointRule()  # tolerance: controllability 0.01, diversity 0.1, leakage 0.01


def curve(criterion, means, *, cis=None, deltas=None, higher=True, epochs=None):
    """A curve with the given means; cis: (lo, hi) per epoch; deltas: (Δ, lo, hi) vs the first."""
    epochs = epochs or list(range(1, len(means) + 1))
    cis = cis or [(NAN, NAN)] * len(means)
    deltas = deltas or [(m - means[0], NAN, NAN) for m in means]
    points = tuple(
        CurvePoint(e, m, lo, hi, d, dl, dh)
        for e, m, (lo, hi), (d, dl, dh) in zip(epochs, means, cis, deltas, strict=True)
    )
    return Curve(criterion, f"{criterion} label", higher, points)


def fidelity(means, half=0.05, **kw):
    return curve("fidelity", means, cis=[(m - half, m + half) for m in means], **kw)


def test_earliest_epoch_within_the_maximum_interval_and_ties():
    # max at e3 (0.70, ci_low 0.65): e3 and e4 (0.68) qualify; e2 (0.60) does not
    pick = pick_checkpoint({"fidelity": fidelity([0.5, 0.6, 0.7, 0.68])}, RULE)
    assert (pick.best_epoch, pick.tied_epochs, pick.max_epochs, pick.fallback) == (3, (4,), (3,), False)
    # an earlier epoch at 0.66 is within the interval too: it is picked, the later ones tie with it
    pick = pick_checkpoint({"fidelity": fidelity([0.5, 0.66, 0.7, 0.68])}, RULE)
    assert (pick.best_epoch, pick.tied_epochs) == (2, (3, 4))
    assert "e2 0.66 vs max e3 0.7 [0.65, 0.75]" in pick.evidence


def test_equal_maxima_are_reported_as_a_tie():
    pick = pick_checkpoint({"fidelity": fidelity([0.5, 0.7, 0.7], half=0.0)}, RULE)
    assert (pick.best_epoch, pick.tied_epochs, pick.max_epochs) == (2, (3,), (2, 3))
    assert "max e2=3" in pick.evidence


def test_no_interval_only_the_maximum_qualifies():
    pick = pick_checkpoint({"fidelity": curve("fidelity", [0.5, 0.69, 0.7])}, RULE)
    assert (pick.best_epoch, pick.tied_epochs) == (3, ())


def test_lower_is_better_fidelity():
    # centroid distance: the minimum 0.10 at e3 (ci_high 0.15): e2 (0.14) qualifies, e1 does not
    pick = pick_checkpoint({"fidelity": fidelity([0.3, 0.14, 0.10], higher=False)}, RULE)
    assert (pick.best_epoch, pick.tied_epochs, pick.max_epochs) == (2, (3,), (3,))


def test_guards_controllability_and_leakage_against_the_first_checkpoint():
    fid = fidelity([0.5, 0.68, 0.7, 0.69])  # candidates e2, e3, e4
    # controllability falls 0.02 at e2 (beyond 0.01), 0.005 at e3 (within the tolerance)
    ctrl = curve("controllability", [0.30, 0.28, 0.295, 0.25])
    pick = pick_checkpoint({"fidelity": fid, "controllability": ctrl}, RULE)
    assert (pick.best_epoch, pick.tied_epochs, pick.fallback) == (3, (), False)
    # leakage (lower is better) rising 0.03 at e3 excludes it too; e4 fails controllability
    leak = curve("leakage", [0.0, 0.0, 0.03, 0.0], higher=False)
    pick = pick_checkpoint({"fidelity": fid, "controllability": ctrl, "leakage": leak}, RULE)
    assert (pick.best_epoch, pick.fallback) == (1, True)  # only e1 passes: the fallback
    assert "e2 controllability worse by 0.02" in pick.evidence
    # a looser tolerance lets e2 through
    loose = BestCheckpointRule(tolerance={"controllability": 0.05, "leakage": 0.05})
    assert pick_checkpoint({"fidelity": fid, "controllability": ctrl, "leakage": leak}, loose).best_epoch == 2


def test_fallback_takes_the_best_fidelity_among_passing_epochs():
    fid = fidelity([0.5, 0.6, 0.7], half=0.01)  # only e3 is a candidate
    ctrl = curve("controllability", [0.30, 0.30, 0.20])
    pick = pick_checkpoint({"fidelity": fid, "controllability": ctrl}, RULE)
    assert (pick.best_epoch, pick.fallback) == (2, True)


def test_overfitting_flag():
    fid = fidelity([0.5, 0.6, 0.7])
    falling = [(0.0, 0.0, 0.0), (-0.01, -0.02, 0.0), (-0.05, -0.08, -0.02)]
    ctrl = curve("controllability", [0.30, 0.29, 0.25], deltas=falling)
    pick = pick_checkpoint({"fidelity": fid, "controllability": ctrl}, RULE)
    assert pick.overfitting is True
    assert "controllability label: -0.05 [-0.08, -0.02] (tolerance 0.01, beyond)" in pick.overfitting_evidence
    # the fall's interval includes zero: not flagged
    unsure = curve("controllability", [0.30, 0.29, 0.25], deltas=[*falling[:2], (-0.05, -0.08, 0.01)])
    assert pick_checkpoint({"fidelity": fid, "controllability": unsure}, RULE).overfitting is False
    # a significant fall within the tolerance: not flagged
    small = curve("controllability", [0.30, 0.30, 0.295], deltas=[*falling[:2], (-0.005, -0.008, -0.002)])
    assert pick_checkpoint({"fidelity": fid, "controllability": small}, RULE).overfitting is False
    # fidelity no longer above the first checkpoint's: not flagged
    flat = fidelity([0.5, 0.6, 0.5])
    assert pick_checkpoint({"fidelity": flat, "controllability": ctrl}, RULE).overfitting is False
    # diversity (tolerance 0.1) counts as controllability does
    div = curve("diversity", [3.0, 2.9, 2.5], deltas=[(0, 0, 0), (-0.1, -0.2, 0.0), (-0.5, -0.7, -0.3)])
    assert pick_checkpoint({"fidelity": fid, "diversity": div}, RULE).overfitting is True
    # without controllability or diversity, or with one epoch: cannot be judged
    assert pick_checkpoint({"fidelity": fid}, RULE).overfitting is None
    one = pick_checkpoint(
        {"fidelity": fidelity([0.5]), "controllability": curve("controllability", [0.3])}, RULE
    )
    assert (one.best_epoch, one.overfitting) == (1, None)


def test_rule_parameters():
    assert BestCheckpointRule(tolerance=0.2).tolerance == {
        "controllability": 0.2,
        "diversity": 0.2,
        "leakage": 0.2,
    }
    assert BestCheckpointRule(tolerance={"leakage": 0.0}).tolerance["controllability"] == 0.01
    with pytest.raises(ValidationError, match="'fidelity' is not one of"):
        BestCheckpointRule(tolerance={"fidelity": 0.1})
    with pytest.raises(ValidationError, match="≥ 0"):
        BestCheckpointRule(tolerance=-1)
    assert BestCheckpointRule(diversity=None, leakage=None).metrics() == {
        "fidelity": "image_similarity", "controllability": "text_similarity"
    }  # fmt: skip
    assert pick_checkpoint({"controllability": curve("controllability", [0.3])}, RULE) is None


# --- from a results table --------------------------------------------------------------------
# per (config, epoch): image similarity and text similarity; concepts a1/a2 (category a) and
# b1 (category b) add fixed offsets, seeds 1 and 2 add ±0.01
FIDELITY = {"A": {1: 0.50, 2: 0.60, 3: 0.70}, "B": {1: 0.40, 2: 0.60, 3: 0.599}}
CONTROL = {"A": {1: 0.30, 2: 0.295, 3: 0.20}, "B": {1: 0.30, 2: 0.30, 3: 0.30}}
CONCEPTS = {("a", "a1"): 0.02, ("a", "a2"): -0.02, ("b", "b1"): 0.01}
SEEDS = {1: 0.01, 2: -0.01}


def _results(tmp_path) -> pd.DataFrame:
    files, runs = [], []
    for config in FIDELITY:
        for epoch in (1, 2, 3):
            for seed, seed_fx in SEEDS.items():
                ckpt = f"{config}-s{seed}-e{epoch:03d}"
                rows = []
                for (category, concept), fx in CONCEPTS.items():
                    for metric, enc, mode, table in (("image_similarity", "dinov2", "resize", FIDELITY),
                                                     ("text_similarity", "clip", "", CONTROL)):  # fmt: skip
                        rows.append(
                            {"checkpoint": ckpt, "category": category, "concept": concept, "subclass": "",
                             "prompt_class": "alter", "metric": metric, "encoder": enc, "mode": mode,
                             "value": table[config][epoch] + fx + seed_fx, "n_images": 4,
                             "prompt_set_version": "1", "reason": ""}
                        )  # fmt: skip
                path = tmp_path / f"{ckpt}.parquet"
                pd.DataFrame(rows).to_parquet(path)
                files.append(path)
                runs.append(
                    {
                        "checkpoint": ckpt,
                        "config": config,
                        "algo": "lora",
                        "preset": "attn-mlp",
                        "lr": 1e-3,
                        "seed": seed,
                        "epoch": epoch,
                        "trainable_params": 10,
                        "file_bytes": 100,
                    }
                )
    return collect_results(files, pd.DataFrame(runs))


def test_trajectory_table_means_deltas_and_picks(tmp_path):
    settings = BootstrapSettings(n_resamples=400, seed=3)
    table = trajectory_table(_results(tmp_path), bootstrap=settings)
    assert set(table["criterion"]) == {"fidelity", "controllability"}  # no Vendi / intrusion rows
    assert len(table) == 2 * 2 * 3
    # mean over seeds of the mean over categories of the mean over concepts: category a's concept
    # effects cancel, b's is +0.01, the seeds cancel → value + 0.005
    fid = table[(table["config"] == "A") & (table["criterion"] == "fidelity")].set_index("epoch")
    np.testing.assert_allclose(fid["mean"], [0.505, 0.605, 0.705], atol=1e-12)
    np.testing.assert_allclose(fid["delta_first"], [0.0, 0.1, 0.2], atol=1e-12)
    # every unit moves by the same amount: the paired differences have no spread
    np.testing.assert_allclose(fid.loc[[2, 3], ["delta_ci_low", "delta_ci_high"]].to_numpy(),
                               [[0.1, 0.1], [0.2, 0.2]], atol=1e-12)  # fmt: skip
    assert (fid["ci_low"] < fid["mean"]).all() and (fid["mean"] < fid["ci_high"]).all()
    picks = picks_table(table).set_index("config")
    # A: fidelity's maximum at e3, but controllability fell 0.1 there (guard) → the fallback e2
    # (0.005 down: within the tolerance); overfitting: fidelity up, controllability down 0.1 with
    # an interval [−0.1, −0.1]
    assert picks.loc["A", "best_epoch"] == 2 and bool(picks.loc["A", "fallback"])
    assert picks.loc["A", "overfitting"] == True  # noqa: E712
    # B: the maximum at e2 (0.605); e3 is 0.001 below it, well inside an interval that carries the
    # concepts' ±0.02 spread: a tie, the earlier e2 is picked; e1 (0.2 below) is not a candidate
    top = curves_of(table, "B")["fidelity"].points[1]
    assert top.epoch == 2 and top.ci_low < 0.604 < 0.605 < top.ci_high
    assert (picks.loc["B", "best_epoch"], picks.loc["B", "tied_epochs"]) == (2, "3")
    assert picks.loc["B", "overfitting"] == False  # noqa: E712
    figure = trajectory_figures(table, picks_table(table), tmp_path / "figures")
    assert [f.name for f in figure] == ["trajectory.png"] and figure[0].stat().st_size > 1000
    # deterministic: the same inputs give the same bytes
    a = write_csv(table, tmp_path / "a.csv").read_bytes()
    b = write_csv(trajectory_table(_results(tmp_path), bootstrap=settings), tmp_path / "b.csv").read_bytes()
    assert a == b
