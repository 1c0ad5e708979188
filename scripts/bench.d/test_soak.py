"""soak.growth_after: the RSS growth the soak reports."""
import unittest

from soak import growth_after


class Growth(unittest.TestCase):
    def test_from_minute_five_to_the_end(self):
        curve = [(0, 5000), (1, 6000), (5, 6100), (6, 6300), (60, 6600)]
        self.assertEqual(growth_after(curve), (5, 500))

    def test_short_soak_counts_from_the_first_sample(self):
        self.assertEqual(growth_after([(0, 5000), (1, 5100), (2, 5050)]), (0, 50))

    def test_one_sample_is_no_growth_figure(self):
        self.assertIsNone(growth_after([(0, 5000)]))


if __name__ == "__main__":
    unittest.main()
