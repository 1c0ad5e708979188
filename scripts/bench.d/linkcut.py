"""Link cuts on one loopback TCP port, and the time a client takes to come back.

A cut is an nftables reset rule both ways (new connections refused) plus `ss -K` on the
port's established sockets, so both ends see the cut at once rather than at their next
keepalive. `reconnect_times` cuts `cuts` times for `hold_s` each and returns the seconds
from each restore until a count of connections (read from a broker log) grows. Needs
root and nft (`Nft.ok`); without them there is nothing to measure.
"""
import subprocess
import time

from harness import wait
from nft import Tables


def kill_sockets(port):
    subprocess.run(["ss", "-K", "-t", "state", "established",
                    f"( dport = :{port} or sport = :{port} )"],
                   capture_output=True, timeout=20)


def cut(port):
    """A cut link on `port` (None without nft); `restore(c)` ends it."""
    c = Tables.new(port, cut=True)
    if not c.ok:
        return None
    kill_sockets(port)
    return c


def count_in_log(path, needle):
    """How often the bytes `needle` occur in the file at `path` (0 while it is absent)."""
    try:
        with open(path, "rb") as f:
            return f.read().count(needle)
    except OSError:
        return 0


def reconnect_times(port, connections, cuts, hold_s, timeout=120, between=None):
    """[s from restore to reconnection] over `cuts` cuts of `hold_s` s; `connections()`
    counts the client's connections so far. `between()` runs while the link is up, before
    each cut (e.g. records flowing). None if nft is unavailable."""
    out = []
    for _ in range(cuts):
        if between:
            between()
        c = cut(port)
        if c is None:
            return None
        time.sleep(hold_s)
        before = connections()
        t0 = time.monotonic()
        c.close()
        wait("reconnection after a cut", lambda: connections() > before, timeout, 0.005)
        out.append(time.monotonic() - t0)
    return out
