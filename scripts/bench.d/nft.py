"""nftables on one loopback TCP port: byte counters for wire bytes, or a cut link.

Each `Nft` is its own table (named after the bench's pid and the port); `Tables` removes
every one the run made, also on failure. Without root, nft, or with HEDGE_BENCH_NO_NFT=1,
an `Nft` is inert (`ok` False, `bytes()` None) and the bench skips what needs it.
"""
import json
import os
import shutil
import subprocess

from harness import Failed, log


def nft_bin():
    if os.geteuid() != 0 or os.environ.get("HEDGE_BENCH_NO_NFT"):
        return None
    return shutil.which("nft") or ("/usr/sbin/nft" if os.path.exists("/usr/sbin/nft") else None)


class Nft:
    """Our own nftables table for one loopback TCP port: byte counters (both directions),
    or (cut=True) TCP resets both ways, i.e. a cut link (as tests/uplink_master.rs does)."""

    def __init__(self, port, cut=False):
        self.table = f"hedge_bench_{os.getpid()}_{port}_{'cut' if cut else 'count'}"
        self.ok = False
        self.nft = nft_bin()
        if not self.nft:
            return
        try:
            self._run("add", "table", "inet", self.table)
            self._run("add", "chain", "inet", self.table, "out",
                      "{ type filter hook output priority 0; policy accept; }")
            verdict = ["reject", "with", "tcp", "reset"] if cut else ["counter"]
            for way in ("dport", "sport"):
                self._run("add", "rule", "inet", self.table, "out", "tcp", way, str(port), *verdict)
            self.ok = True
        except Failed as e:
            log(f"nft unavailable: {e}")
            self.close()

    def _run(self, *args):
        r = subprocess.run([self.nft, *args], capture_output=True, text=True, timeout=20)
        if r.returncode != 0:
            raise Failed(f"nft {' '.join(args)}: {r.stderr.strip()}")
        return r.stdout

    def bytes(self):
        """(to the port, from the port) in IP bytes, or None."""
        if not self.ok:
            return None
        v = json.loads(self._run("-j", "list", "table", "inet", self.table))
        counts = [e["rule"]["expr"][-1]["counter"]["bytes"]
                  for e in v["nftables"] if "rule" in e]
        return tuple(counts)

    def close(self):
        if self.nft:
            subprocess.run([self.nft, "delete", "table", "inet", self.table],
                           capture_output=True, timeout=20)
        self.ok = False


class Tables:
    """Every Nft the bench made, removed at the end whatever happened."""
    items = []

    @classmethod
    def new(cls, port, cut=False):
        n = Nft(port, cut)
        cls.items.append(n)
        return n

    @classmethod
    def cleanup(cls):
        for n in cls.items:
            n.close()
