"""Unit test of monitoring.request: the request file bench-node writes, as data.

    python3 -m unittest discover -s scripts/bench.d
"""
import tomllib
import unittest

import tomlw
from monitoring import request

# The request as bench-node wrote it by hand before it wrote TOML as data.
BY_HAND = """
name = "i3"
software = "exec:/usr/bin/python3"
args = ["-c", "import socket, time, pathlib\\ns = socket.socket(); s.bind(('127.0.0.1', 21234)); s.listen(8)\\nwhile True:\\n    pathlib.Path('srv/beat').touch(); time.sleep(1)"]
[[promises]]
name = "alive"
kind = "process"
interval_ms = 10000
timeout_ms = 10000
[[promises]]
name = "port"
kind = "tcp"
address = "127.0.0.1:21234"
interval_ms = 10000
timeout_ms = 5000
[[promises]]
name = "beat"
kind = "file"
path = "srv/beat"
max_age_s = 30
interval_ms = 10000
timeout_ms = 10000
"""


class Request(unittest.TestCase):
    def test_written_request_reads_as_the_hand_written_one(self):
        written = tomlw.dumps(request(3, 21234, 10000))
        self.assertEqual(tomllib.loads(written), tomllib.loads(BY_HAND))

    def test_tcp_timeout_is_capped_at_5_s(self):
        self.assertEqual(request(0, 1, 500)["promises"][1]["timeout_ms"], 500)
        self.assertEqual(request(0, 1, 60000)["promises"][1]["timeout_ms"], 5000)


if __name__ == "__main__":
    unittest.main()
