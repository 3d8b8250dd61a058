"""The prefixes of model values a study builds or ships instead of reading them from disk or the
hub (re-exported by lyco_bench.sweep.study; here so that modules below the study can read them)."""

TINY_PREFIX = "tiny:"
"""A tiny random-weight SD1.x model built into the store (``tiny:<seed>``)."""
WORLD_PREFIX = "world:"
"""The CPU world (lyco_bench.world): its shipped base model and evaluators (its drawn dataset is a
generated dataset: lyco_bench.data.generated)."""
