"""stats.py: median and spread, percentiles, slope, runs folded into rows."""
import unittest

from stats import fold_runs, median_spread, pct, slope


class Stats(unittest.TestCase):
    def test_median_spread_odd_even_and_none(self):
        self.assertEqual(median_spread([3, 1, 2]), (2, 1, 3))
        self.assertEqual(median_spread([4, 1, 2, 3]), (2.5, 1, 4))
        self.assertEqual(median_spread([None, 5]), (5, 5, 5))
        self.assertEqual(median_spread([]), (None, None, None))

    def test_pct_nearest_rank(self):
        v = list(range(1, 101))
        self.assertEqual(pct(v, 50), 50)
        self.assertEqual(pct(v, 99), 99)
        self.assertEqual(pct(v, 90), 90)
        self.assertEqual(pct([7], 99), 7)
        # 10 samples: p99 is the largest, p90 the 9th.
        self.assertEqual(pct(list(range(10)), 99), 9)
        self.assertEqual(pct(list(range(10)), 90), 8)

    def test_slope(self):
        self.assertAlmostEqual(slope([0, 1, 10, 50], [100, 102, 120, 200]), 2.0)
        self.assertAlmostEqual(slope([0, 10], [5, 5]), 0.0)
        self.assertIsNone(slope([3], [1]))
        self.assertIsNone(slope([3, 3], [1, 2]))

    def test_fold_runs_medians_spreads_and_order(self):
        r1 = [("a", "ms", "lower", 1.0, 10.0, "x"), ("b", "B", "lower", 5, 7, "y")]
        r2 = [("a", "ms", "lower", 3.0, 30.0, "x")]
        r3 = [("a", "ms", "lower", 2.0, 20.0, "x"), ("b", "B", "lower", 9, None, "y")]
        out = fold_runs([r1, r2, r3])
        self.assertEqual([o[0] for o in out], ["a", "b"])
        self.assertEqual(out[0], ("a", "ms", "lower", 2.0, 20.0, "x", (1.0, 3.0), (10.0, 30.0)))
        self.assertEqual(out[1], ("b", "B", "lower", 7.0, 7, "y", (5, 9), (7, 7)))


if __name__ == "__main__":
    unittest.main()
