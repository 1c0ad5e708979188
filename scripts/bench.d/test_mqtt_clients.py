"""mqtt_clients.write_payloads: records split so no mosquitto_pub sees a message id twice."""
import os
import tempfile
import unittest

from mqtt_clients import CHUNK, payload, write_payloads


class Payloads(unittest.TestCase):
    def test_chunks_cover_every_seq_once_in_order(self):
        with tempfile.TemporaryDirectory() as d:
            n = 2 * CHUNK + 7
            paths = write_payloads(os.path.join(d, "p"), n, 9)
            lines = []
            for p in paths:
                with open(p) as f:
                    chunk = f.read().splitlines()
                self.assertLessEqual(len(chunk), CHUNK)
                self.assertLess(CHUNK, 65535)  # mosquitto_pub's message ids wrap there
                lines += chunk
            self.assertEqual(len(paths), 3)
            self.assertEqual([int(x) for x in lines], list(range(1, n + 1)))
            self.assertTrue(all(len(x) == 9 for x in lines))

    def test_payload_is_the_padded_seq(self):
        self.assertEqual(payload(42, 9), "000000042")


if __name__ == "__main__":
    unittest.main()
