"""Monitoring figures for scripts/bench-node: what watching promises costs a node.

A node supervising 10 instances with 3 promises each (process, tcp, file), run twice:
at default intervals for the daemon's CPU share and disk bytes written per record, then
with the [monitor] intervals divided by `speedup` for outbox growth per instance per day
(scaled back to default intervals) and disk bytes per record at that rate.
"""
import os
import tempfile
import time

import tomlw
from harness import Failed, Procs, cpu_ticks, wait, write_bytes
from node import Hedge

MONITOR_INTERVALS = ("sample_interval_ms", "usage_interval_ms", "health_interval_ms",
                     "summary_interval_ms")

# Listens on `port` and touches srv/beat every second: each promise kind has work.
SERVER = ("import socket, time, pathlib\n"
          "s = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen(8)\n"
          "while True:\n"
          "    pathlib.Path('srv/beat').touch(); time.sleep(1)")


def request(i, port, interval):
    """Instance i's request: the server above and its three promises."""
    return {
        "name": f"i{i}",
        "software": "exec:/usr/bin/python3",
        "args": ["-c", SERVER.format(port=port)],
        "promises": [
            {"name": "alive", "kind": "process", "interval_ms": interval, "timeout_ms": interval},
            {"name": "port", "kind": "tcp", "address": f"127.0.0.1:{port}",
             "interval_ms": interval, "timeout_ms": min(interval, 5000)},
            {"name": "beat", "kind": "file", "path": "srv/beat", "max_age_s": 30,
             "interval_ms": interval, "timeout_ms": interval},
        ],
    }


def monitoring(binary, seconds, speedup=20):
    """10 instances x 3 promises; CPU share at default intervals, then outbox growth
    and disk writes per record at intervals sped up `speedup` times."""
    res = {}
    for phase, factor in (("default", 1), ("fast", speedup)):
        tmp = tempfile.mkdtemp(prefix="hedge-bench-mon-")
        os.chmod(tmp, 0o711)
        procs = Procs(tmp)
        try:
            node = Hedge(binary, procs, os.path.join(tmp, "n"))
            node.init("--id", "mon")
            monitor = node.config()["monitor"]
            node.configure({"monitor": {k: monitor[k] // factor for k in MONITOR_INTERVALS}})
            d = node.spawn()
            try:
                wait("the node's API", node.status, 10, 0.05)
            except Failed:
                pass  # as before the split: go on, the requests will say what is wrong
            interval = 10000 // factor
            for i in range(10):
                port = 20000 + os.getpid() % 20000 + i
                req = os.path.join(tmp, f"i{i}.toml")
                with open(req, "w") as f:
                    f.write(tomlw.dumps(request(i, port, interval)))
                node.cli("request", "--file", req)
            time.sleep(3)  # let the instances start before measuring
            s0 = node.status(required=True)
            t0, w0, c0 = time.monotonic(), write_bytes(d.pid), cpu_ticks(d.pid)
            time.sleep(seconds)
            s1 = node.status(required=True)
            t1, w1, c1 = time.monotonic(), write_bytes(d.pid), cpu_ticks(d.pid)
            Procs.stop(d, timeout=60)
        finally:
            procs.cleanup()
        wall = t1 - t0
        records = s1["outbox"]["next_seq"] - s0["outbox"]["next_seq"]
        if phase == "default":
            tck = os.sysconf("SC_CLK_TCK")
            res["monitor_daemon_cpu_percent"] = round(100.0 * (c1 - c0) / tck / wall, 3)
            res["monitor_seconds"] = round(wall, 1)
            res["disk_bytes_written_per_record_default"] = int((w1 - w0) / max(records, 1))
            res["records_in_default_run"] = records
        else:
            grown = s1["outbox"]["bytes"] - s0["outbox"]["bytes"]
            # `wall` seconds at `factor`x speed stand for wall*factor seconds of defaults.
            per_day = grown / (wall * factor) * 86400
            res["outbox_bytes_per_instance_per_day"] = int(per_day / 10)
            res["records_per_instance_per_day"] = int(records / (wall * factor) * 86400 / 10)
            res["disk_bytes_written_per_record_fast"] = int((w1 - w0) / max(records, 1))
            res["records_in_fast_run"] = records
    return res
