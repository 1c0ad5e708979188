import unittest

from qemu_rss import guest_rss_kib, qemu_rss_rows

SMAPS = """\
5555e000-5556f000 r-xp 00000000 fe:01 1 /usr/bin/qemu-arm
Rss:                 900 kB
1000010000-1000400000 r--p 00000000 fe:01 2 /x/hedge-node
Rss:                4000 kB
1000500000-1000600000 rw-p 00000000 00:00 0
Rss:                 700 kB
10ffff0000-1100000000 rw-p 00000000 00:00 0 [stack]
Rss:                 100 kB
1100000000-1100001000 rw-p 00000000 00:00 0
Rss:                  50 kB
7f0000000000-7f0000100000 rw-p 00000000 00:00 0
Rss:               20000 kB
"""


class QemuRssTest(unittest.TestCase):
    def test_only_the_guests_4_gib_counts_anon_and_file_apart(self):
        # qemu's own text, its code cache and what lies past the 4 GiB are left out.
        self.assertEqual(guest_rss_kib(SMAPS), (800, 4000))

    def test_rows_in_mib_without_an_alternative(self):
        rows = qemu_rss_rows(dict(anon_kib=1024, file_kib=2048, instances=10))
        self.assertEqual([r[3] for r in rows], [3.0, 1.0, 2.0])
        self.assertTrue(all(r[4] is None for r in rows))

    def test_the_windows_highest_reading_has_its_own_row(self):
        rows = qemu_rss_rows(dict(anon_kib=1024, file_kib=2048, max_kib=4096, instances=10))
        self.assertEqual([r[3] for r in rows], [3.0, 1.0, 2.0, 4.0])
        self.assertIn("highest", rows[3][0])


if __name__ == "__main__":
    unittest.main()
