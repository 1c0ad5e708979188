"""Store-and-forward figures for hedge: a node produces records with its link down, then
the link comes back and it drains them into the master.

Appends per second and disk bytes per record while offline (/proc/PID/io write_bytes,
bracketed by two status calls, each of which flushes the store), what holding the queue
idle writes, then the drain: from the node's connection in the broker log until the
master's SQLite store holds every seq; lost and duplicated records; wire bytes per
record (nft counters) and the daemon's CPU and RSS. The mosquitto counterpart is in
store_forward_mosquitto.py.
"""
import os
import sqlite3
import subprocess
import socket
import time

import tomlw
from alternatives import mosquitto_bin
from harness import (LAST_SEQ_SQL, Failed, RssPeak, cpu_s, free_port, hwm_kib, log, wait,
                     write_bytes)
from linkcut import reconnect_times
from nft import Tables
from node import Hedge


def broker_conf(master_dir):
    """hedge's generated mosquitto.conf as is: `hedge master init` put its masters' and
    nodes' listeners on the given loopback ports (and `user root` when run as root)."""
    return os.path.join(master_dir, "mosquitto.conf")


def start_mosquitto(procs, name, conf, port):
    """A mosquitto on `conf`, once it accepts connections on `port`."""
    p = procs.spawn(name, [mosquitto_bin(), "-c", conf])

    def up():
        if p.poll() is not None:
            raise Failed(f"{name} exited {p.returncode}: see {procs.tmp}/{name}.log")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            return False
    wait(f"{name} listening on {port}", up, 15, 0.01)
    return p


def node_connections(broker_log):
    """How many times the node connected, from the broker's log: its certificate CN (= its
    id, bench) is its broker user name."""
    try:
        with open(broker_log, "rb") as f:
            return sum(1 for line in f if b"New client connected" in line and b"u'bench'" in line)
    except OSError:
        return 0


def varint_len(v):
    """Bytes of `v` as a LEB128 varint (postcard's integer encoding)."""
    n = 1
    while v >= 0x80:
        v >>= 7
        n += 1
    return n


class Fleet:
    """A master (`hedge master init` in tmp/master, its broker, `hedge master run`) and one
    node enrolled to it (tmp/sf-node, id bench) that may run `producers` instances.
    `start_central` starts the broker and the master, once subscribed."""

    def __init__(self, binary, procs, tmp, producers):
        self.binary, self.procs, self.tmp = binary, procs, tmp
        self.mdir = mdir = os.path.join(tmp, "master")
        self.master_port, self.node_port = free_port(), free_port()
        subprocess.run([binary, "master", "init", "--port", str(self.node_port),
                        "--master-port", str(self.master_port), "--dir", mdir],
                       check=True, stdout=subprocess.DEVNULL, timeout=60)
        self.mcfg = os.path.join(mdir, "master.toml")
        # Nodes enroll (own key, CSR, one-time token) at the master's HTTPS endpoint.
        tomlw.edit(self.mcfg, {"artifacts": {"listen": f"127.0.0.1:{free_port()}"}})
        bundle = os.path.join(tmp, "bench.bundle")
        subprocess.run([binary, "master", "enroll", "bench", "--out", bundle, "--config", self.mcfg],
                       check=True, stdout=subprocess.DEVNULL, timeout=60)
        self.node = Hedge(binary, procs, os.path.join(tmp, "sf-node"))
        self.node.init("--enroll", bundle)
        self.cfg = self.node.configure({
            "monitor": {"sample_interval_ms": 100},
            # Enrollment happens once the master runs: retry it every second until then.
            "uplink": {"renew_check_s": 1},
            "outbox": {"quota_bytes": 1073741824},
            "node": {"max_instances": producers + 5},
        })
        self.blog = os.path.join(tmp, "hedge-broker.log")
        self.mlog = os.path.join(tmp, "master.log")

    def master_connected(self):
        with open(self.mlog) as f:
            return "master connected" in f.read()

    def start_central(self):
        self.broker = start_mosquitto(self.procs, "hedge-broker", broker_conf(self.mdir),
                                      self.master_port)
        self.master = self.procs.spawn(
            "master", [self.binary, "master", "run", "--config", self.mcfg],
            log_name="master.log", env={**os.environ, "HEDGE_LOG": "info"})
        wait("master subscribed", self.master_connected, 30, 0.02)


def hedge_store_and_forward(binary, procs, tmp, P, out):
    k = P["producers"]
    fleet = Fleet(binary, procs, tmp, k)
    node, mdir, node_port, blog, start_central = (fleet.node, fleet.mdir, fleet.node_port,
                                                  fleet.blog, fleet.start_central)
    cfg = fleet.cfg
    out["uplink_defaults"] = {key: str(cfg["uplink"][key])
                              for key in ("max_batch_records", "max_batch_bytes", "window")
                              if key in cfg["uplink"]}

    # The central side: hedge's generated broker config (node listener on its own port)
    # and a master, subscribed before the node ever dials. With root + nft the node's port
    # is cut (TCP resets) while it produces, as in tests/uplink_master.rs; without, the
    # broker only starts when the link is to come back.
    link = Tables.new(node_port, cut=True)
    cut = link.ok
    if cut:
        start_central()

    # 0. Baseline: the same instances sampled every 100 ms, no usage record due (60 s
    # interval): what /proc sampling alone costs, to tell it from the appends.
    node.start()
    for i in range(k):
        node.cli("request", f"u{i}", "--software", "exec:/bin/sleep", "--arg", "100000")
    wait(f"{k} producers running", lambda: node.running() == k, 60, 0.05)
    pid = node.daemon.pid
    node.status()
    b0, bw0, bt0 = cpu_s(pid), write_bytes(pid), time.monotonic()
    time.sleep(P["hold_s"] / 2)
    node.status()
    bt = time.monotonic() - bt0
    out["sampling_only_cpu_percent"] = 100 * (cpu_s(pid) - b0) / bt
    out["sampling_only_disk_bytes_per_s"] = (write_bytes(pid) - bw0) / bt
    procs.stop(node.daemon)
    node.configure({"monitor": {"usage_interval_ms": 100}})

    # 1. Produce offline: the same node, one usage record per instance per 100 ms.
    node.start()
    wait(f"{k} producers running", lambda: node.running() == k, 60, 0.05)
    pid = node.daemon.pid
    s0, w0, c0, t0 = node.status(), write_bytes(pid), cpu_s(pid), time.monotonic()
    seq0 = s0["outbox"]["next_seq"]
    target = P["records"]
    # No API calls while producing: each one flushes the store (records are durable
    # before anyone sees them), which would add writes. One call at each end brackets
    # the window, so every record counted is on disk when write_bytes is read.
    offered = k * 1000 / 100
    dur = min(P["produce_max_s"], max(1.0, (target - (seq0 - 1)) / offered * 1.02 + 1))
    log(f"hedge: producing usage records offline ({k} instances x 10/s) for {dur:.0f} s "
        f"(target {target}, at most {P['produce_max_s']} s)")
    time.sleep(dur)
    s1 = node.status()
    t1, c1, w1 = time.monotonic(), cpu_s(pid), write_bytes(pid)
    appended = s1["outbox"]["next_seq"] - seq0
    out["disk_bytes_per_record"] = (w1 - w0) / appended
    out["cpu_ms_per_1k_appends_gross"] = (c1 - c0) * 1e6 / appended
    out["cpu_ms_per_1k_appends"] = max(0.0, (c1 - c0) - out["sampling_only_cpu_percent"] / 100 * (t1 - t0)) * 1e6 / appended
    out["cpu_percent_producing"] = 100 * (c1 - c0) / (t1 - t0)
    out["produce_s"] = round(t1 - t0, 2)
    out["appends_per_s"] = appended / (t1 - t0)
    out["offered_per_s"] = offered
    for i in range(k):
        node.cli("destroy", f"u{i}")
    last = [None]

    def settled():
        s = node.status()
        n = s["outbox"]["next_seq"]
        ok = not s["instances"] and last[0] == n
        last[0] = n
        return s if ok else None
    s2 = wait("producers destroyed", settled, 60, 1.0)
    # Holding the queue while offline, idle (no API calls): what it costs the flash.
    wh0 = write_bytes(pid)
    time.sleep(P["hold_s"])
    out["hold_disk_bytes_per_s"] = (write_bytes(pid) - wh0) / P["hold_s"]
    out["outbox_store_bytes_per_record"] = s2["outbox"]["bytes"] / max(1, s2["outbox"]["depth"])
    out["peak_rss_kib_producing"] = hwm_kib(pid)
    out["shed"] = {k_: v for k_, v in s2["counters"].items() if k_.startswith("shed")}
    total = s2["outbox"]["next_seq"] - 1
    out["records"] = total
    log(f"hedge: {appended} records in {t1 - t0:.1f} s = {out['appends_per_s']:.0f}/s, "
        f"{out['disk_bytes_per_record']:.0f} disk bytes/record; outbox holds {s2['outbox']['depth']}")

    # 2. The link comes back; the daemon, deep in its reconnect backoff, redials when due.
    if not cut:
        start_central()
    nft = Tables.new(node_port)
    peak = RssPeak(pid)
    tc = time.monotonic()
    if cut:
        link.close()
    db = sqlite3.connect(f"file:{os.path.join(mdir, 'master.db')}?mode=ro", uri=True, timeout=30)

    def stored():
        # The count (a scan of the node's rows) runs only once the last seq is there.
        peak.sample()
        hi = db.execute(LAST_SEQ_SQL, ("bench",)).fetchone()[0]
        return (hi or 0) >= total and db.execute(
            "SELECT count(*) FROM records WHERE node='bench' AND seq <= ?",
            (total,)).fetchone()[0] >= total

    def linked():
        peak.sample()
        return node_connections(blog) > 0
    wait("node uplink up (broker log)", linked, 120, 0.01)
    central = (fleet.master.pid, fleet.broker.pid)
    tl, cpu1, ccpu1 = time.monotonic(), cpu_s(pid), [cpu_s(p) for p in central]
    wait(f"master stored {total} records", stored, P["drain_timeout_s"], 0.005)
    td, cpu2, ccpu2 = time.monotonic(), cpu_s(pid), [cpu_s(p) for p in central]
    # Who was busy during the drain: % of one core each (the node's own CPU is above).
    out["drain_cpu_percent"] = {
        name: 100 * (b - a) / (td - tl)
        for name, a, b in zip(("node", "master", "broker"), [cpu1] + ccpu1, [cpu2] + ccpu2)}
    wire = nft.bytes()
    nft.close()
    db.close()
    s = wait("outbox drained (depth 0)",
             lambda: (lambda s: s if s and s["outbox"]["depth"] == 0 else None)(node.status()),
             60, 0.1)
    out["acked_at_node_s"] = time.monotonic() - tl
    out["cpu_ms_per_1k_drained"] = (cpu2 - cpu1) * 1e6 / total
    out["drain_peak_rss_kib"] = peak.kib
    out["peak_rss_kib"] = hwm_kib(pid)
    out["reconnect_s"] = tl - tc
    out["link_back_by"] = "nft cut removed" if cut else "broker started"
    out["drain_s"] = td - tl
    out["drained"] = total
    out["drain_per_s"] = total / (td - tl)
    final_seq = s["outbox"]["next_seq"] - 1
    # 3. Link cuts on the idle, connected node: link back -> reconnected.
    out["reconnects_s"] = reconnect_times(node_port, lambda: node_connections(blog),
                                          P["cuts"], P["cut_hold_s"])
    if out["reconnects_s"]:
        log(f"hedge: link back -> reconnected over {len(out['reconnects_s'])} cuts: "
            f"{', '.join(f'{x:.2f}' for x in out['reconnects_s'])} s")
    procs.stop(node.daemon)
    # What the master stored for this node.
    db = sqlite3.connect(f"file:{os.path.join(mdir, 'master.db')}?mode=ro", uri=True, timeout=30)
    rows, distinct, hi = db.execute(
        "SELECT count(*), count(DISTINCT seq), max(seq) FROM records WHERE node='bench'").fetchone()
    usage = db.execute("SELECT seq, time_ms, length(kind) FROM records "
                       "WHERE node='bench' AND kind_tag='usage'").fetchall()
    db.close()
    out["master_rows"], out["master_distinct"] = rows, distinct
    out["lost"] = final_seq - distinct
    out["duplicated"] = rows - distinct
    out["usage_records"] = len(usage)
    out["usage_record_bytes"] = (sum(varint_len(s_) + varint_len(t_) + k_ for s_, t_, k_ in usage)
                                 / max(1, len(usage)))
    if wire:
        out["wire_bytes_per_record"] = (wire[0] + wire[1]) / total
        out["wire_bytes_up_per_record"] = wire[0] / total
    log(f"hedge: drained {total} records in {out['drain_s']:.2f} s from link-up "
        f"({out['drain_per_s']:.0f}/s); master holds {distinct} distinct of {final_seq}")
