"""Unit tests of tomlw (the bench's TOML writer): what it writes reads back the same.

    python3 -m unittest discover -s scripts/bench.d
"""
import os
import subprocess
import tempfile
import tomllib
import unittest

import tomlw


def roundtrip(doc):
    return tomllib.loads(tomlw.dumps(doc))


class Dumps(unittest.TestCase):
    def test_scalars_and_arrays_read_back(self):
        doc = {"a": 1, "b": -7, "c": 0.5, "d": True, "e": False, "f": "x",
               "g": [1, 2, 3], "h": ["-c", "y"], "i": [], "j": 1e20}
        self.assertEqual(roundtrip(doc), doc)

    def test_strings_are_escaped(self):
        s = 'quote " back \\ tab \t nl \n cr \r bell \x07 del \x7f é'
        self.assertEqual(roundtrip({"s": s}), {"s": s})
        self.assertEqual(tomlw.dumps({"s": "a\nb"}), 's = "a\\nb"\n')

    def test_keys_that_are_not_bare_are_quoted(self):
        doc = {"a b": 1, "c.d": {"e f": "g"}, "": 2}
        self.assertEqual(roundtrip(doc), doc)

    def test_tables_nested_and_empty(self):
        doc = {"top": 1, "node": {"id": "x", "labels": {}, "deep": {"k": {"v": 2}}},
               "uplink": {"enabled": False}}
        self.assertEqual(roundtrip(doc), doc)
        text = tomlw.dumps(doc)
        self.assertIn("[node.deep.k]", text)
        self.assertTrue(text.startswith("top = 1\n"))

    def test_arrays_of_tables(self):
        doc = {"name": "i0", "promises": [
            {"name": "alive", "kind": "process", "interval_ms": 500},
            {"name": "port", "kind": "tcp", "extra": {"x": 1}},
        ]}
        self.assertEqual(roundtrip(doc), doc)
        self.assertEqual(tomlw.dumps(doc).count("[[promises]]"), 2)

    def test_inline_table_inside_an_array(self):
        doc = {"a": [[1, 2], ["x"]]}
        self.assertEqual(roundtrip(doc), doc)

    def test_refuses_what_it_cannot_write(self):
        for bad in ({"n": float("nan")}, {"i": float("inf")}, {"m": [1, {"a": 1}]},
                    {"t": object()}, {1: 2}):
            with self.assertRaises(ValueError, msg=repr(bad)):
                tomlw.dumps(bad)

    def test_edit_sets_keys_and_keeps_the_rest(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "c.toml")
            with open(path, "w") as f:
                f.write('# comment\n[a]\nx = 1\n# y = 2\nz = "keep"\n[b]\nw = true\n')
            doc = tomlw.edit(path, {"a": {"x": 10, "y": 20}, "new": {"k": "v"}})
            with open(path, "rb") as f:
                self.assertEqual(tomllib.load(f), doc)
            self.assertEqual(doc, {"a": {"x": 10, "z": "keep", "y": 20}, "b": {"w": True},
                                   "new": {"k": "v"}})

    def test_hedges_generated_configs_read_back(self):
        """node.toml and master.toml as `hedge ... init` writes them (when a binary is
        given in HEDGE_BENCH_BINARY): parsed, written, parsed again, equal."""
        binary = os.environ.get("HEDGE_BENCH_BINARY")
        if not binary:
            self.skipTest("HEDGE_BENCH_BINARY not set")
        with tempfile.TemporaryDirectory() as d:
            subprocess.run([binary, "node", "init", "--dir", f"{d}/n", "--id", "t"],
                           check=True, stdout=subprocess.DEVNULL)
            subprocess.run([binary, "master", "init", "--dir", f"{d}/m", "--port", "18883",
                            "--master-port", "18884"], check=True, stdout=subprocess.DEVNULL)
            for f in (f"{d}/n/node.toml", f"{d}/m/master.toml"):
                with open(f, "rb") as fh:
                    doc = tomllib.load(fh)
                self.assertEqual(roundtrip(doc), doc, f)


if __name__ == "__main__":
    unittest.main()
