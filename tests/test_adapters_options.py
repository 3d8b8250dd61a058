"""Shared option pieces: every low-rank algorithm's default pair and α rule, resolved settings in a
stable field order (file metadata and job ids read them), one parser for algorithms and methods."""

from __future__ import annotations

import pytest

from lyco_bench.adapters.base import ALGORITHMS
from lyco_bench.adapters.options import Configurable, RankOptions
from lyco_bench.errors import BadInput

# (algorithm, its default (dim, α) pair — docs/protocol.md §1.1 and each file's reference —, fields in order)
RANKED = [
    ("lora", (8, 4.0), ["dim", "alpha", "use_tucker", "dora"]),
    ("loha", (4, 2.0), ["dim", "alpha", "use_tucker", "dora"]),
    ("lokr", (10000, 1.0), ["dim", "alpha", "factor", "use_tucker", "decompose_both", "dora"]),
    ("glokr", (10000, 1.0), ["dim", "alpha", "factor", "use_tucker", "decompose_both"]),
    ("glora", (8, 4.0), ["dim", "alpha"]),
    ("dylora", (32, 16.0), ["dim", "alpha", "block_size"]),
]


@pytest.mark.parametrize(("algo", "pair", "fields"), RANKED)
def test_default_pair_alpha_rule_and_field_order(algo, pair, fields):
    cls = ALGORITHMS[algo]
    assert issubclass(cls.Options, RankOptions)
    default = cls.parse_options({})
    assert list(default.model_dump()) == fields
    assert (default.dim, default.alpha) == pair
    # only dim given: α = dim (scale 1, as kohya and LyCORIS read a file without alpha)
    only_dim = cls.parse_options({"dim": 16})
    assert (only_dim.dim, only_dim.alpha) == (16, 16.0)
    # only α given: the default rank with that α; both given: both kept
    assert (cls.parse_options({"alpha": 3}).dim, cls.parse_options({"alpha": 3}).alpha) == (pair[0], 3.0)
    both = cls.parse_options({"dim": 16, "alpha": 2})
    assert (both.dim, both.alpha) == (16, 2.0)
    # an explicit null α follows the same rule as a missing one
    assert cls.parse_options({"dim": 16, "alpha": None}).alpha == 16.0


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_one_parser_for_algorithms_and_methods(algo):
    cls = ALGORITHMS[algo]
    assert cls.parse_options.__func__ is Configurable.parse_options.__func__
    assert cls.parse_options(cls.parse_options({})) == cls.parse_options({})
    with pytest.raises(BadInput, match=algo) as info:
        cls.parse_options({}, {"no_such_option": 1})
    assert "no_such_option" in str(info.value)
