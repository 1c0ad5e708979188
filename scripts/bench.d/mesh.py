"""Mesh figures (issue #13), beside the direct uplink in the same run: records/s through
1 and 3 hops, latency added per hop, relay CPU per 1,000 records, bytes per record on a
peer link, relay RSS while it holds records for another node.

One master (its broker and `hedge master run`) and five enrolled nodes on loopback:
`direct` (its own uplink), `gw` (the only node whose uplink reaches the broker), relays
`r1` and `r2`, and the origin `far`. Every node but `gw` dials the broker on a second
node listener (added to hedge's generated mosquitto.conf) that nftables cuts for the
whole mesh part, so only `gw` has a direct path; `direct` uses it while it is open.
Peer links are cut by nftables on the listening peer's port (TCP resets both ways).

- drain rates: N records made by `far` (usage records of producer instances) while its
  path is cut (direct: the second listener; 1 hop: far -> gw; 3 hops: far -> r2 -> r1
  -> gw), then the cut is removed; rate = records / (the master holds them all - the
  node's link came up, from the `uplink up` line in its log), so the reconnect
  backoff is left out on both sides;
- latency: with every link up, a `hedge node request` on the origin, then the time until
  the master stores the origin's next record (median of `lat_samples`); per hop =
  (k-hop - direct) / k;
- relay CPU per 1,000 records: utime+stime of r1 (a pure relay) over the 3-hop drain;
- bytes per record on a peer link: nftables counters on far's first hop during the drain
  (IP bytes both ways, TLS included) / records;
- relay RSS: far -> r1 -> gw with the master stopped (gw stays connected to the broker,
  so the path exists but no ack comes back): r1's VmRSS idle, then once its outbox holds
  custody of `hold_records` of far's records; the master then starts and everything
  drains;
- lost / duplicated: far's and direct's seqs at the master against their outboxes.
"""
import datetime
import os
import re
import sqlite3
import subprocess
import time

import tomlw
from harness import LAST_SEQ_SQL, Failed, cpu_s, free_port, log, rss_kib, wait
from nft import Tables
from node import Hedge
from store_forward import broker_conf, start_mosquitto

NODES = ("direct", "gw", "r1", "r2", "far")


def add_listener(conf, node_port, port):
    """A second node listener on `port`, a copy of the one on `node_port`."""
    with open(conf) as f:
        text = f.read()
    m = re.search(rf"^listener {node_port} .*?^use_username_as_clientid true\n", text,
                  re.S | re.M)
    if not m:
        raise Failed(f"no node listener on {node_port} in {conf}")
    block = m.group(0).replace(f"listener {node_port} ", f"listener {port} ", 1)
    with open(conf, "a") as f:
        f.write("\n# The bench's second node listener (cut while the mesh is measured).\n"
                + block)


class Swarm:
    def __init__(self, binary, procs, tmp, P):
        self.binary, self.procs, self.tmp, self.P = binary, procs, tmp, P
        self.mdir = mdir = os.path.join(tmp, "mesh-master")
        self.master_port, self.node_port, self.cut_port = free_port(), free_port(), free_port()
        subprocess.run([binary, "master", "init", "--port", str(self.node_port),
                        "--master-port", str(self.master_port), "--dir", mdir],
                       check=True, stdout=subprocess.DEVNULL, timeout=60)
        add_listener(broker_conf(mdir), self.node_port, self.cut_port)
        self.mcfg = os.path.join(mdir, "master.toml")
        tomlw.edit(self.mcfg, {"artifacts": {"listen": f"127.0.0.1:{free_port()}"}})
        self.mesh_port = {n: free_port() for n in NODES}
        self.nodes = {}
        for n in NODES:
            bundle = os.path.join(tmp, f"{n}.bundle")
            subprocess.run([binary, "master", "enroll", n, "--out", bundle, "--config",
                            self.mcfg], check=True, stdout=subprocess.DEVNULL, timeout=60)
            h = Hedge(binary, procs, os.path.join(tmp, f"mesh-{n}"))
            h.init("--enroll", bundle)
            h.configure({
                "monitor": {"sample_interval_ms": 100, "usage_interval_ms": 100},
                "uplink": {"renew_check_s": 1,
                           "port": self.node_port if n == "gw" else self.cut_port},
                "outbox": {"quota_bytes": 1073741824},
                "node": {"max_instances": P["mesh_producers"] + 5},
                "mesh": {"enabled": n != "direct", "listen": f"127.0.0.1:{self.mesh_port[n]}",
                         "peers": [], "beacon_interfaces": [],
                         "custody_bytes_per_origin": 1 << 30},
            })
            self.nodes[n] = h
        self.master = None
        self.db_path = os.path.join(mdir, "master.db")

    def enrolled(self, n):
        h = self.nodes[n]
        return os.path.exists(os.path.join(h.home, h.config()["uplink"]["cert"]))

    def start_central(self):
        start_mosquitto(self.procs, "mesh-broker", broker_conf(self.mdir), self.master_port)
        self.start_master()

    def start_master(self):
        mlog = os.path.join(self.tmp, "mesh-master.log")
        self.master = self.procs.spawn("mesh-master", [self.binary, "master", "run", "--config",
                                                       self.mcfg], log_name="mesh-master.log",
                                       env={**os.environ, "HEDGE_LOG": "info"})
        wait("master subscribed", lambda: "master connected" in open(mlog).read(), 30, 0.02)

    def peers(self, n, *to):
        self.nodes[n].configure({"mesh": {"peers": [f"127.0.0.1:{self.mesh_port[p]}"
                                                    for p in to]}})

    def restart(self, n):
        h = self.nodes[n]
        if h.daemon and h.daemon.poll() is None:
            self.procs.stop(h.daemon)
        h.start()

    def stored(self, node):
        """(rows, distinct seqs) the master holds for `node`."""
        db = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=30)
        try:
            return db.execute("SELECT count(*), count(DISTINCT seq) FROM records WHERE node=?",
                              (node,)).fetchone()
        finally:
            db.close()

    def seqs(self, node):
        """(rows, distinct seqs, highest seq) the master holds for `node`, at once."""
        db = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=30)
        try:
            return db.execute("SELECT count(*), count(DISTINCT seq), coalesce(max(seq), 0) "
                              "FROM records WHERE node=?", (node,)).fetchone()
        finally:
            db.close()

    def max_seq(self, node):
        db = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=30)
        try:
            return db.execute(LAST_SEQ_SQL, (node,)).fetchone()[0]
        finally:
            db.close()

    def produce(self, n, records):
        """`records` usage records made by `n`'s producer instances (then destroyed);
        returns its last seq once the outbox stopped growing."""
        h, k = self.nodes[n], self.P["mesh_producers"]
        seq0 = h.status(required=True)["outbox"]["next_seq"]
        for i in range(k):
            h.cli("request", f"p{i}", "--software", "exec:/bin/sleep", "--arg", "100000")
        wait("producers", lambda: h.running() >= k, 60, 0.05)
        wait(f"{records} records at {n}",
             lambda: h.status(required=True)["outbox"]["next_seq"] - seq0 >= records,
             records / (k * 8) + 60, 0.5)
        for i in range(k):
            h.cli("destroy", f"p{i}")
        last = [None]

        def settled():
            s = h.status(required=True)
            ok = not s["instances"] and last[0] == s["outbox"]["next_seq"]
            last[0] = s["outbox"]["next_seq"]
            return s if ok else None
        s = wait(f"{n}'s producers gone", settled, 60, 1.0)
        return s["outbox"]["next_seq"] - 1


def link_up_at(log_path, node, offset):
    """The wall-clock time of the first `uplink up node=NODE` line (the sync core's, on
    the MQTT or the mesh link) past `offset` in the node's log, or None yet."""
    try:
        with open(log_path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if f"uplink up node={node} " in line or line.endswith(f"uplink up node={node}"):
            stamp = line.split()[0]
            try:
                return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
            except ValueError:
                return None
    return None


def drain(sw, node, last, cut, timeout, pid_cpu=(), counter=None):
    """Removes `cut`, then times the master storing `node`'s seqs up to `last`, from the
    moment the node's link (direct or mesh) came up, as its log says: (rate, seconds,
    {pid: cpu s}, peer bytes)."""
    log_path = os.path.join(sw.tmp, f"node-mesh-{node}.log")
    offset = os.path.getsize(log_path)
    cpu0 = {p: cpu_s(p) for p in pid_cpu}
    c = Tables.new(counter) if counter else None
    have0 = sw.stored(node)[1]
    cut.close()
    t_up = wait(f"{node}'s link up (its log)", lambda: link_up_at(log_path, node, offset),
                60, 0.02)
    wait(f"master stored {node}'s seqs up to {last}", lambda: sw.stored(node)[1] >= last,
         timeout, 0.02)
    t_done = time.time()
    cpu = {p: cpu_s(p) - cpu0[p] for p in pid_cpu}
    wire = c.bytes() if c else None
    if c:
        c.close()
    secs = max(t_done - t_up, 1e-3)
    return (last - have0) / secs, secs, cpu, wire and (wire[0] + wire[1])


def latency(sw, origin, samples):
    """Median ms from a request on `origin` to the master storing its next record."""
    h, out = sw.nodes[origin], []
    for i in range(samples):
        seq = h.status(required=True)["outbox"]["next_seq"]
        t0 = time.monotonic()
        h.cli("request", f"lat{i}", "--software", "exec:/bin/sleep", "--arg", "100000")
        wait(f"{origin}'s seq {seq} at the master", lambda: sw.max_seq(origin) >= seq, 60, 0.002)
        out.append((time.monotonic() - t0) * 1000)
        h.cli("destroy", f"lat{i}")
    out.sort()
    return out[len(out) // 2]


def hedge_mesh(binary, procs, tmp, P, out):
    sw = Swarm(binary, procs, tmp, P)
    sw.start_central()
    # Enrollment (HTTPS, not the broker): every node once, with the second listener open.
    for n in NODES:
        sw.nodes[n].start()
    for n in NODES:
        wait(f"{n} enrolled", lambda n=n: sw.enrolled(n), 60, 0.1)
    for n in ("direct", "r1", "r2", "far"):
        procs.stop(sw.nodes[n].daemon)
    N = P["mesh_records"]

    # Direct: `direct` makes N records with the second listener cut (from before it
    # starts: a cut under a live connection goes unnoticed until it sends), then it opens.
    cut = Tables.new(sw.cut_port, cut=True)
    if not cut.ok:
        raise Failed("the mesh rows need root and nft (link cuts)")
    sw.nodes["direct"].start()
    last = sw.produce("direct", N)
    out["direct_per_s"], out["direct_s"], _, _ = drain(sw, "direct", last, cut, P["drain_timeout_s"])
    out["direct_latency_ms"] = latency(sw, "direct", P["lat_samples"])
    procs.stop(sw.nodes["direct"].daemon)
    log(f"mesh: direct drain {out['direct_per_s']:.0f} rec/s, latency {out['direct_latency_ms']:.1f} ms")
    # From here on only gw reaches the broker.
    Tables.new(sw.cut_port, cut=True)

    # 1 hop: far -> gw.
    sw.peers("far", "gw")
    cut = Tables.new(sw.mesh_port["gw"], cut=True)
    sw.restart("far")
    last = sw.produce("far", N)
    gw_pid = sw.nodes["gw"].daemon.pid
    (out["hop1_per_s"], out["hop1_s"], cpu, wire) = drain(
        sw, "far", last, cut, P["drain_timeout_s"], (gw_pid,), sw.mesh_port["gw"])
    out["hop1_gw_cpu_ms_per_1k"] = cpu[gw_pid] * 1e6 / N
    if wire:
        out["peer_bytes_per_record"] = wire / N
    out["hop1_latency_ms"] = latency(sw, "far", P["lat_samples"])
    log(f"mesh: 1 hop {out['hop1_per_s']:.0f} rec/s, latency {out['hop1_latency_ms']:.1f} ms")

    # 3 hops: far -> r2 -> r1 -> gw.
    sw.peers("far", "r2")
    sw.peers("r2", "r1")
    sw.peers("r1", "gw")
    cut = Tables.new(sw.mesh_port["r2"], cut=True)
    for n in ("r1", "r2", "far"):
        sw.restart(n)
    first = sw.max_seq("far")
    last = sw.produce("far", N)
    r1_pid = sw.nodes["r1"].daemon.pid
    (out["hop3_per_s"], out["hop3_s"], cpu, _) = drain(
        sw, "far", last, cut, P["drain_timeout_s"], (r1_pid,))
    out["relay_cpu_ms_per_1k"] = cpu[r1_pid] * 1e6 / (last - first)
    out["hop3_latency_ms"] = latency(sw, "far", P["lat_samples"])
    log(f"mesh: 3 hops {out['hop3_per_s']:.0f} rec/s, latency {out['hop3_latency_ms']:.1f} ms, "
        f"relay CPU {out['relay_cpu_ms_per_1k']:.0f} ms/1000")

    # Relay RSS holding records for far: far -> r1 -> gw, the master stopped.
    sw.peers("far", "r1")
    procs.stop(sw.nodes["r2"].daemon)
    sw.restart("far")
    procs.stop(sw.master)
    r1 = sw.nodes["r1"]
    time.sleep(3)  # idle: nothing flows (no ack can come back), let it settle
    out["relay_idle_rss_kib"] = rss_kib(r1.daemon.pid)
    last = sw.produce("far", P["hold_records"])
    prev = [None]

    def custody():
        """(batches, bytes, shed) r1 holds for far (`hedge node status`, PEERS)."""
        for p in (r1.status(required=True).get("mesh") or {}).get("peers", []):
            if p["node"] == "far":
                return p["custody_batches"], p["custody_bytes"], p["shed"]
        return 0, 0, 0

    def holding():
        v = custody()
        ok = prev[0] == v and v[0] > 0
        prev[0] = v
        return ok
    wait("r1 holding far's records (custody stable)", holding, P["drain_timeout_s"], 2.0)
    out["relay_holding_rss_kib"] = rss_kib(r1.daemon.pid)
    batches, nbytes, shed = custody()
    if shed:
        raise Failed(f"r1 shed {shed} of far's batches: raise custody_bytes_per_origin")
    out["relay_holding_batches"], out["relay_holding_bytes"] = batches, nbytes
    out["held_records"] = last - sw.max_seq("far")
    log(f"mesh: r1 RSS {out['relay_idle_rss_kib']} KiB idle, {out['relay_holding_rss_kib']} KiB "
        f"holding {out['held_records']} records")
    sw.start_master()
    # Everything far ever appended (its last seq now, records made after `produce` too)
    # reaches the master; lost = far's seqs missing there, duplicated = extra rows.
    final = sw.nodes["far"].status(required=True)["outbox"]["next_seq"] - 1
    wait(f"far's {final} records at the master", lambda: sw.max_seq("far") >= final,
         P["drain_timeout_s"], 0.1)
    # One snapshot: far may append more meanwhile (the master's states reach it).
    for n, least in (("far", final), ("direct", 0)):
        rows, distinct, top = sw.seqs(n)
        out[f"{n}_lost"] = max(least, top) - distinct
        out[f"{n}_duplicated"] = rows - distinct
    out["records"] = N
    out["hold_target"] = P["hold_records"]


def mesh_rows(m):
    d = "direct uplink"
    rows = [
        ("records/s through 1 hop (far -> gw -> broker)", "rec/s", "higher",
         m["hop1_per_s"], m["direct_per_s"], d),
        ("records/s through 3 hops (far -> r2 -> r1 -> gw)", "rec/s", "higher",
         m["hop3_per_s"], m["direct_per_s"], d),
        ("request -> stored at the master, 1 hop", "ms", "lower",
         m["hop1_latency_ms"], m["direct_latency_ms"], d),
        ("request -> stored at the master, 3 hops", "ms", "lower",
         m["hop3_latency_ms"], m["direct_latency_ms"], d),
        ("latency added per hop ((3 hops - direct) / 3)", "ms", "lower",
         (m["hop3_latency_ms"] - m["direct_latency_ms"]) / 3, None, "-"),
        ("relay CPU per 1000 records relayed (r1, 3 hops)", "ms", "lower",
         m["relay_cpu_ms_per_1k"], None, "-"),
        ("gateway CPU per 1000 records (gw, 1 hop: peer + uplink)", "ms", "lower",
         m["hop1_gw_cpu_ms_per_1k"], None, "-"),
        (f"relay RSS growth holding {m['held_records']} records for another node", "MiB",
         "lower", (m["relay_holding_rss_kib"] - m["relay_idle_rss_kib"]) / 1024, None, "-"),
        ("mesh records lost (far)", "", "lower", m["far_lost"], m["direct_lost"], d),
        ("mesh records duplicated (far)", "", "lower", m["far_duplicated"],
         m["direct_duplicated"], d),
    ]
    if "peer_bytes_per_record" in m:
        rows.append(("bytes per record on a peer link (TLS, IP, both ways)", "B", "lower",
                     m["peer_bytes_per_record"], None, "-"))
    return rows
