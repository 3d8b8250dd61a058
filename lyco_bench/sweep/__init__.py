"""The sweep: study files, planning into jobs, the run store and the executors (local, Ray).

``lyco-bench plan STUDY`` shows the jobs; ``lyco-bench run STUDY`` runs what is not done yet and
ends with the analysis and the report. See docs/internals.md for the store layout.
"""

from lyco_bench.sweep.planner import Job, Plan, build_plan
from lyco_bench.sweep.store import StudyStore
from lyco_bench.sweep.study import LoadedStudy, Study, load_study

__all__ = ["Job", "Plan", "build_plan", "StudyStore", "LoadedStudy", "Study", "load_study"]
