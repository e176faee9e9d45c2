#!/usr/bin/env python3
"""Tests of report.py's arithmetic: the medians, ratios and lists that the
benchmark's tables and the issue's verdicts are read from.  Standard library
only; run directly or through ctest (bench.report)."""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report  # noqa: E402


# Three rounds of one cell (qd16, one connection) of two workloads:
# nbdkit file's random writes are slow in rounds 2 and 3 (as in the 3d36271
# record), insitu's steady.  Sequential cells carry MB/s (IOPS / 10 here).
FIGURES = {  # (target, workload): IOPS per round
    ("nbdkit-file", "randwrite4k"): (100000, 30000, 40000),
    ("insitu-lz4-wb", "randwrite4k"): (80000, 81000, 79000),
    ("nbdkit-file", "seqread128k"): (20000, 21000, 19000),
    ("insitu-lz4-wb", "seqread128k"): (10000, 10500, 9500),
}
ROWS = [{"round": str(rnd + 1), "target": target, "workload": workload, "depth": "16",
         "conns": "1", "iops": str(iops), "mbps": str(iops / 10)}
        for rnd in range(3) for (target, workload), figures in FIGURES.items()
        for iops in [figures[rnd]]]
CELL = (16, 1)


class MatrixTest(unittest.TestCase):
    def setUp(self):
        self.m = report.Matrix(ROWS)

    def test_values_are_in_round_order_and_use_the_workloads_metric(self):
        self.assertEqual(self.m.rounds, 3)
        self.assertEqual(self.m.values("nbdkit-file", "randwrite4k", CELL),
                         [100000, 30000, 40000])
        self.assertEqual(self.m.values("nbdkit-file", "seqread128k", CELL),
                         [2000.0, 2100.0, 1900.0])
        self.assertEqual(self.m.values("qemu-nbd", "randwrite4k", CELL), [])

    def test_median_and_ratios(self):
        self.assertEqual(self.m.value("nbdkit-file", "randwrite4k", CELL), 40000)
        self.assertEqual(self.m.value("insitu-lz4-wb", "randwrite4k", CELL), 80000)
        self.assertAlmostEqual(self.m.ratio("insitu-lz4-wb", "nbdkit-file", "randwrite4k", CELL),
                               2.0)
        # Against the peer's fastest round the slow rounds cannot help.
        self.assertAlmostEqual(
            self.m.best_ratio("insitu-lz4-wb", "nbdkit-file", "randwrite4k", CELL), 0.8)
        self.assertAlmostEqual(self.m.ratio("insitu-lz4-wb", "nbdkit-file", "seqread128k", CELL),
                               0.5)
        self.assertIsNone(self.m.ratio("insitu-lz4-wb", "qemu-nbd", "randwrite4k", CELL))


class SummaryTest(unittest.TestCase):
    def test_peer_summary_gives_median_and_best_round_geomeans(self):
        text = report.peer_summary(report.Matrix(ROWS))
        line = next(ln for ln in text.splitlines() if ln.startswith("| `insitu-lz4-wb`"))
        cols = [c.strip() for c in line.strip("|").split("|")]
        # ×nbdkit-file: geomean(2.0, 0.5) = 1.0; best round: geomean(0.8,
        # 1000/2100); worst cell against the median: seqread128k.
        self.assertEqual(cols[1], "1.00×")
        self.assertEqual(cols[2], report.fmt_ratio((0.8 * 1000 / 2100) ** 0.5))
        self.assertEqual(cols[3], "0.50×")
        self.assertEqual(cols[4], "seqread128k qd16·1c")

    def test_round_spread_lists_only_cells_past_the_limit(self):
        text = report.round_spread(report.Matrix(ROWS))
        listed = [ln for ln in text.splitlines() if ln.startswith("| `")]
        self.assertEqual(listed, ["| `nbdkit-file` | randwrite4k | qd16·1c | "
                                  "100,000, 30,000, 40,000 | 3.33 |"])

    def test_round_spread_needs_two_rounds_and_says_none(self):
        self.assertEqual(report.round_spread(report.Matrix([r for r in ROWS
                                                            if r["round"] == "1"])), "")
        steady = [r for r in ROWS if r["target"] != "nbdkit-file"]
        self.assertTrue(report.round_spread(report.Matrix(steady)).endswith("None.\n"))

    def test_geomean_skips_missing_and_zero(self):
        self.assertAlmostEqual(report.geomean([2.0, None, 8.0, 0]), 4.0)
        self.assertIsNone(report.geomean([None, 0]))


class CodecOfTargetTest(unittest.TestCase):
    def test_targets_map_to_the_microbenchmark_they_are_compared_with(self):
        self.assertEqual(report.insitu_codec("insitu-lz4-wb"), ("lz4", "128k-seg16k"))
        self.assertEqual(report.insitu_codec("insitu-lz4-wb-noseg"), ("lz4", "128k"))
        self.assertEqual(report.insitu_codec("insitu-zstd1-wt"), ("zstd:1", "128k"))
        self.assertEqual(report.insitu_codec("insitu-zlib1-wb-4k"), ("zlib:1", "4k"))
        self.assertEqual(report.insitu_codec("nbdkit-file"), (None, None))


if __name__ == "__main__":
    unittest.main()
