import unittest

from hot_code import (callgrind_functions, exec_fault_offsets, section_globs, symbolize,
                      v0_as_legacy)

DUMP = """\
# callgrind format
events: Ir
ob=(1) /usr/lib/libc.so.6
fn=(1) memcpy
10 5
ob=(2) /build/release/hedge
fn=(2) _ZN5tokio7runtime4park17h0123456789abcdefE
20 7
cfn=(3) _ZN4sled4tree4Tree3get17hfedcba9876543210E
calls=1 20
20 100
fn=(3)
5 0
fn=(4) _ZN5hedge4main17h1111111111111111E
1 3
fn=(2)
2 1
"""


class Callgrind(unittest.TestCase):
    def test_self_costs_of_one_object_only(self):
        got = callgrind_functions(DUMP, "/hedge")
        # park: 7 + 1 (a second block), not the 100 of the call it made; sled's `get`
        # ran at no cost of its own in this window; memcpy is libc's.
        self.assertEqual(got, {"_ZN5tokio7runtime4park17h0123456789abcdefE": 8,
                               "_ZN5hedge4main17h1111111111111111E": 3})

    def test_names_given_further_down_or_in_another_dump_count(self):
        window = "ob=(2)\nfn=(9)\n3 4\ncob=(2) /b/hedge\ncfn=(8) f_named_here\ncalls=1 0\n1 1\n"
        window += "fn=(8)\n1 2\n"
        final = "fn=(9) _ZN1a1b17h0000000000000000E\n"
        self.assertEqual(callgrind_functions(window, "/hedge", [final]),
                         {"_ZN1a1b17h0000000000000000E": 4, "f_named_here": 2})


class Globs(unittest.TestCase):
    def test_legacy_names_lose_their_hash(self):
        self.assertEqual(section_globs(["_ZN5tokio7runtime4park17h0123456789abcdefE",
                                        "_ZN5tokio7runtime4park17hffffffffffffffffE.llvm.123"]),
                         [".text._ZN5tokio7runtime4park17h*"])

    def test_a_glob_that_matches_other_instances_names_its_own_section(self):
        mine = "_ZN5tokio7runtime4task3raw4poll17h0123456789abcdefE"
        other = "_ZN5tokio7runtime4task3raw4poll17hffffffffffffffffE"
        self.assertEqual(section_globs([mine], [mine, other]), [".text." + mine + "*"])
        self.assertEqual(section_globs([mine], [mine]),
                         [".text._ZN5tokio7runtime4task3raw4poll17h*"])
        v0 = "_RNvMs_NtCsab_4core3numy16from_ascii_radix"
        twin = "_RNvMs_NtCscd_4core3numy16from_ascii_radix.12"
        self.assertEqual(section_globs([v0], [v0, twin]), [".text." + v0 + "*"])

    def test_v0_names_lose_disambiguators_and_get_a_legacy_twin_when_plain(self):
        name = "_RNvNtNtCsgEmfK2I1SDS_4core3str11validations15next_code_point.583"
        self.assertEqual(v0_as_legacy(name.split(".")[0]),
                         "_ZN4core3str11validations15next_code_point17h*")
        self.assertEqual(section_globs([name]), [
            ".text._RNvNtNtC*_4core3str11validations15next_code_point*",
            ".text._ZN4core3str11validations15next_code_point17h*",
        ])

    def test_v0_impls_have_no_legacy_twin(self):
        name = ("_RNvXs3_NtNtCsgEmfK2I1SDS_4core3str4iterNtB5_11CharIndices"
                "NtNtNtNtB9_4iter6traits8iterator8Iterator4next")
        self.assertIsNone(v0_as_legacy(name))
        self.assertEqual(len(section_globs([name])), 1)
        self.assertIn("B*_", section_globs([name])[0])

    def test_a_v0_name_that_does_not_split_into_its_identifiers_has_no_twin(self):
        self.assertIsNone(v0_as_legacy("_RNvNtCsab_4core3fmtx"))
        self.assertIsNone(v0_as_legacy("_RNvNtCsab_4core3fmt2ab3cd"))

    def test_c_names_stay_and_odd_names_are_dropped(self):
        self.assertEqual(section_globs(["ring_core_0_17_8_sha256_block_data_order", "$x.1"]),
                         [".text.ring_core_0_17_8_sha256_block_data_order"])


class Faults(unittest.TestCase):
    MAPS = """\
55d000000000-55d000100000 r--p 00000000 fe:00 7 /b/hedge
55d000100000-55d000400000 r-xp 00100000 fe:00 7 /b/hedge
7f0000000000-7f0000100000 r-xp 00028000 fe:00 9 /usr/lib/libc.so.6
"""

    def test_only_instruction_fetches_in_the_binary_count(self):
        script = "\n".join([
            "    55d000123456     55d000123456",  # an instruction fetch in the binary
            "    55d000050000     55d000123456",  # a read of its constants
            "    7f0000000010     7f0000000010",  # libc's code
            "    55d000200000 ffffffff81000000",  # the kernel's
        ])
        self.assertEqual(exec_fault_offsets(script, self.MAPS, "/b/hedge"), [0x123456])
        self.assertEqual(exec_fault_offsets(script, self.MAPS, "/other"), [])

    def test_addresses_name_the_function_that_holds_them(self):
        syms = [(0x1000, "a"), (0x1100, "b"), (0x2000, "c")]
        self.assertEqual(symbolize([0x1000, 0x10ff, 0x1100, 0x5000, 0x10], syms), {"a", "b", "c"})


if __name__ == "__main__":
    unittest.main()
