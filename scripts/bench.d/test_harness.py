"""Unit tests of harness.py: the query of the master's last seq, the idle RSS window (no
binary needed)."""
import os
import sqlite3
import unittest

from harness import LAST_SEQ_SQL, Failed, idle_rss, proc_fields, window_summary

# The columns LAST_SEQ_SQL reads, keyed as the master's SQLite store keys them.
SCHEMA = """
CREATE TABLE records (node TEXT NOT NULL, epoch INTEGER NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (node, epoch, seq)) WITHOUT ROWID;
CREATE TABLE epochs (node TEXT NOT NULL, epoch INTEGER NOT NULL, life INTEGER NOT NULL,
    PRIMARY KEY (node, epoch));
"""


class LastSeq(unittest.TestCase):
    def setUp(self):
        self.db = sqlite3.connect(":memory:")
        self.db.executescript(SCHEMA)

    def test_the_highest_seq_of_any_life_and_zero_for_an_unknown_node(self):
        # Two lives of one node (the second with a lower epoch), and another node.
        for node, epoch, seqs in (("a", 7, range(1, 50)), ("a", -3, range(1, 80)),
                                  ("b", 1, range(1, 500))):
            self.db.execute("INSERT INTO epochs VALUES (?, ?, 0)", (node, epoch))
            self.db.executemany("INSERT INTO records VALUES (?, ?, ?)",
                                [(node, epoch, s) for s in seqs])
        last = lambda n: self.db.execute(LAST_SEQ_SQL, (n,)).fetchone()[0]
        self.assertEqual((last("a"), last("b"), last("nobody")), (79, 499, 0))

    def test_it_seeks_down_the_key_instead_of_scanning_the_node(self):
        plan = [r[3] for r in self.db.execute("EXPLAIN QUERY PLAN " + LAST_SEQ_SQL, ("a",))]
        self.assertTrue(any("PRIMARY KEY (node=? AND epoch=?)" in p for p in plan), plan)
        self.assertFalse(any(p.startswith("SCAN") for p in plan), plan)


class IdleWindow(unittest.TestCase):
    def test_means_of_each_part_and_the_highest_total(self):
        # A release cycle: mapped, released, mapped again.
        w = window_summary([(4000, 1000, 3000), (2000, 1000, 1000), (3001, 1001, 2000)])
        self.assertEqual(w, dict(kib=3000, anon_kib=1000, file_kib=2000, max_kib=4000,
                                 readings=3))

    def test_no_reading_is_a_failure_not_a_zero(self):
        with self.assertRaises(Failed):
            window_summary([])

    def test_reads_through_the_whole_window(self):
        readings = iter([(10, 5, 5), (30, 5, 25), (20, 5, 15), (99, 0, 0)])
        w = idle_rss(lambda: next(readings), idle_s=0, window_s=0.05, every=0.02)
        self.assertGreaterEqual(w["readings"], 3)
        self.assertLessEqual(w["readings"], 4)
        self.assertEqual(w["max_kib"], 30 if w["readings"] == 3 else 99)


class ProcFields(unittest.TestCase):
    def test_the_fields_asked_for_in_that_order_from_one_read(self):
        vm, anon, file = proc_fields(os.getpid(), ("VmRSS", "RssAnon", "RssFile"))
        self.assertGreater(anon, 0)
        self.assertGreater(file, 0)
        self.assertGreaterEqual(vm, anon + file)
        pid, ppid = os.getpid(), os.getppid()
        self.assertEqual(proc_fields(pid, ("Pid", "PPid")), (pid, ppid))
        self.assertEqual(proc_fields(pid, ("PPid", "Pid")), (ppid, pid))

    def test_a_missing_field_is_a_failure(self):
        with self.assertRaises(Failed):
            proc_fields(os.getpid(), ("VmRSS", "NoSuchField"))


if __name__ == "__main__":
    unittest.main()
