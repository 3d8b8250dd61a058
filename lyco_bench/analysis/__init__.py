"""Analysis: the results table, scaled ranks, CatBoost + SHAP, figures, leaderboard and report.

Heavy libraries (catboost, shap, matplotlib, jinja2, PIL) are imported inside the functions that
need them, so importing this package stays cheap.
"""

from lyco_bench.analysis.leaderboard import build_leaderboard, write_leaderboard
from lyco_bench.analysis.pipeline import AnalysisOutputs, run_analysis
from lyco_bench.analysis.ranks import scaled_ranks
from lyco_bench.analysis.render_check import RenderCheck, check_render
from lyco_bench.analysis.report import write_report
from lyco_bench.analysis.results import collect_results, read_paper_csv, read_results, write_results

__all__ = [
    "AnalysisOutputs",
    "RenderCheck",
    "build_leaderboard",
    "check_render",
    "collect_results",
    "read_paper_csv",
    "read_results",
    "run_analysis",
    "scaled_ranks",
    "write_leaderboard",
    "write_report",
    "write_results",
]
