import unittest

from node import Hedge, daemons_run_by
from qemu_drain import qemu_drain_rows


class QemuDrainTest(unittest.TestCase):
    def test_rows_compare_the_emulated_drain_with_the_native_one(self):
        run = lambda rate, lost, dup: dict(drain_per_s=rate, lost=lost, duplicated=dup)
        rows = qemu_drain_rows(dict(native=run(60_000, 0, 0), qemu=run(50_000, 1, 2),
                                    records=50_000, producers=100))
        self.assertEqual([r[3:5] for r in rows], [(50_000, 60_000), (1, 0), (2, 0)])
        self.assertIn("50,000 records", rows[0][0])
        self.assertTrue(all(r[5] == "hedge x86_64" for r in rows))

    def test_a_skipped_run_is_one_row_without_figures(self):
        rows = qemu_drain_rows(dict(skipped="no qemu-aarch64"))
        self.assertEqual(len(rows), 1)
        self.assertEqual(rows[0][3:5], (None, None))

    def test_daemons_run_by_holds_only_within_it(self):
        with daemons_run_by(("qemu-aarch64", "-L", "/sys"), "/arm/hedge"):
            self.assertEqual((Hedge.runner, Hedge.daemon_binary),
                             (("qemu-aarch64", "-L", "/sys"), "/arm/hedge"))
        self.assertEqual((Hedge.runner, Hedge.daemon_binary), ((), None))


if __name__ == "__main__":
    unittest.main()
