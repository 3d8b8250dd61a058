"""The built-in layer algorithms, one file each: every module in this folder is imported (and its
algorithm registered) when ``lyco_bench.adapters`` is, so a new built-in algorithm is one new file
here. Algorithms from other packages register through the ``lyco_bench.algorithms`` entry point
(docs/adding-an-algorithm.md)."""
