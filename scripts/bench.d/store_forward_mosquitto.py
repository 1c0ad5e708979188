"""Store-and-forward figures for the alternative: a local mosquitto with persistence,
bridged to a central mosquitto (cleansession false, QoS 1, over TLS with hedge's CA and
certificates), fed and read by mosquitto's own C clients (mqtt_clients.py), so the
figures are mosquitto's and not a client's.

The same figures as store_forward.py measures for hedge, with the same number of records
of the size of hedge's encoded usage record: appends per second and disk bytes per record
into the local broker while the bridge's link is cut (or, without nft, the central broker
is down), what holding them idle writes, then the drain from the bridge's link-up until a
persistent subscriber on the central broker has every sequence number; lost and
duplicated records, wire bytes, peak RSS, and the bridge's reconnection after link cuts.
"""
import os
import subprocess
import time

from harness import RssPeak, cpu_s, free_port, hwm_kib, log, wait, write_bytes
from linkcut import count_in_log, cut, reconnect_times
from mqtt_clients import Sink, client_bin, publish, write_payloads
from nft import Tables
from report import fmt
from store_forward import start_mosquitto


def write_lines(path, lines):
    with open(path, "w") as f:
        f.write("\n".join(lines))


def mosquitto_store_and_forward(procs, tmp, P, out, size, n):
    d = os.path.join(tmp, "mqtt")
    os.makedirs(os.path.join(d, "central-data"))
    os.makedirs(os.path.join(d, "local-data"))
    mdir = os.path.join(tmp, "master")  # hedge's PKI: same CA and certificates as hedge's link
    ndir = os.path.join(tmp, "sf-node", "uplink")
    user = ["user root"] if os.geteuid() == 0 else []
    p_tls, p_sub, p_local = free_port(), free_port(), free_port()
    central = os.path.join(d, "central.conf")
    write_lines(central, [
        "per_listener_settings true",
        "persistence true", f"persistence_location {d}/central-data/",
        "max_queued_messages 0", "max_queued_bytes 0",
        "log_dest stderr", "connection_messages true", *user,
        f"listener {p_tls} 127.0.0.1", "allow_anonymous true",
        f"cafile {mdir}/ca.crt", f"certfile {mdir}/broker.crt", f"keyfile {mdir}/broker.key",
        "require_certificate true",
        f"listener {p_sub} 127.0.0.1", "allow_anonymous true", ""])
    local = os.path.join(d, "local.conf")
    write_lines(local, [
        "per_listener_settings false", "allow_anonymous true",
        # Same durability window as hedge's sled flush on the generic profile (5 s).
        "persistence true", f"persistence_location {d}/local-data/", "autosave_interval 5",
        "max_queued_messages 0", "max_queued_bytes 0",
        "log_dest stderr", "connection_messages true", *user,
        f"listener {p_local} 127.0.0.1",
        "connection central", f"address 127.0.0.1:{p_tls}",
        "topic edge/bench/# out 1", "cleansession false", "remote_clientid bench-bridge",
        "bridge_protocol_version mqttv311", "restart_timeout 1", "notifications true",
        f"bridge_cafile {mdir}/ca.crt", f"bridge_certfile {ndir}/node.crt",
        f"bridge_keyfile {ndir}/node.key", ""])
    out["local_conf"], out["central_conf"] = local, central

    # The central subscriber's persistent session exists before the outage.
    c = start_mosquitto(procs, "central", central, p_sub)
    clog = os.path.join(tmp, "central.log")
    sink = Sink(procs, p_sub, n).start()

    def probed():  # a "0" (out of range) reaching the sink proves it is subscribed
        subprocess.run([client_bin("mosquitto_pub"), "-h", "127.0.0.1", "-p", str(p_sub),
                        "-q", "1", "-t", "edge/bench/probe", "-m", "0"], timeout=10,
                       capture_output=True)
        return sink.bad > 0
    wait("central subscriber ready", probed, 30, 0.1)
    link = cut(p_tls)
    out["outage"] = "bridge port cut (nft)" if link else "central broker stopped"
    if not link:
        sink.stop()
        procs.stop(c)

    # Publish into the local broker while the bridge's far end is unreachable.
    lp = start_mosquitto(procs, "local", local, p_local)
    lines = write_payloads(os.path.join(d, "payloads"), n, size)
    w0, c0 = write_bytes(lp.pid), cpu_s(lp.pid)
    log(f"mosquitto: publishing {n} x {size}-byte QoS 1 records into the local broker "
        f"(mosquitto_pub -l, {len(lines)} in turn)")
    first_ns, acked_ns, pub_cpu = publish(procs, p_local, lines, timeout=P["drain_timeout_s"])
    out["appends_per_s"] = n / ((acked_ns - first_ns) / 1e9)
    out["cpu_ms_per_1k_appends"] = (cpu_s(lp.pid) - c0) * 1e6 / n
    out["loadgen_cpu_ms_per_1k"] = pub_cpu * 1e6 / n
    out["loadgen_cpu_percent"] = 100 * pub_cpu / ((acked_ns - first_ns) / 1e9)
    # Until a persistence save holds them all (autosave every 5 s).
    db = os.path.join(d, "local-data", "mosquitto.db")
    wait("local persistence saved", lambda: os.path.exists(db) and os.stat(db).st_mtime_ns > acked_ns, 30, 0.1)
    time.sleep(0.2)
    wh0 = write_bytes(lp.pid)
    out["disk_bytes_per_record"] = (wh0 - w0) / n
    time.sleep(P["hold_s"])
    out["hold_disk_bytes_per_s"] = (write_bytes(lp.pid) - wh0) / P["hold_s"]
    out["persist_file_bytes_per_record"] = os.path.getsize(db) / n
    log(f"mosquitto: {out['appends_per_s']:.0f} publishes/s acknowledged "
        f"(mosquitto_pub at {out['loadgen_cpu_percent']:.0f} % of a core); "
        f"{out['disk_bytes_per_record']:.0f} disk bytes/record")

    # The link comes back: time the drain from the bridge's connection at the central broker.
    def bridge_connections():
        return count_in_log(clog, b"as bench-bridge")
    before = bridge_connections()
    nft = Tables.new(p_tls)
    peak = RssPeak(lp.pid)
    tc = time.monotonic()
    if link:
        link.close()
    else:
        start_mosquitto(procs, "central", central, p_sub)
        sink.start()
    wait("bridge connected (central log)", lambda: (peak.sample(), bridge_connections() > before)[1],
         120, 0.005)
    tl, tl_ns, cd0 = time.monotonic(), time.time_ns(), cpu_s(lp.pid)
    out["reconnect_s"] = tl - tc
    # No progress for `stall` s: give up, count.
    stall, last, last_t = 20, 0, time.monotonic()
    end = time.monotonic() + P["drain_timeout_s"]
    while not sink.complete():
        peak.sample()
        sink.sample_cpu()
        if sink.distinct != last:
            last, last_t = sink.distinct, time.monotonic()
        if time.monotonic() - last_t > stall or time.monotonic() > end:
            log(f"mosquitto: drain stalled at {last}/{n}")
            break
        time.sleep(0.005)
    cd1 = cpu_s(lp.pid)
    wire = nft.bytes()
    nft.close()
    out["peak_rss_kib"] = hwm_kib(lp.pid)
    out["drain_peak_rss_kib"] = peak.kib
    out["drain_s"] = (sink.last_ns - tl_ns) / 1e9 if sink.last_ns else None
    out["drained"] = sink.distinct
    out["drain_per_s"] = sink.distinct / out["drain_s"] if out["drain_s"] else 0
    out["lost"] = n - sink.distinct
    out["duplicated"] = sink.duplicates
    out["records"] = n
    out["payload_bytes"] = size
    out["cpu_ms_per_1k_drained"] = (cd1 - cd0) * 1e6 / max(1, sink.distinct)
    out["sink_cpu_percent"] = 100 * sink.sample_cpu() / max(1e-9, time.monotonic() - tl)
    if wire:
        out["wire_bytes_per_record"] = (wire[0] + wire[1]) / max(1, sink.distinct)
        out["wire_bytes_up_per_record"] = wire[0] / max(1, sink.distinct)
    log(f"mosquitto: drained {sink.distinct} of {n} in {fmt(out['drain_s'])} s from link-up, "
        f"{sink.duplicates} duplicates")
    sink.stop()
    # Link cuts on the idle, connected bridge: link back -> reconnected.
    out["reconnects_s"] = reconnect_times(p_tls, bridge_connections, P["cuts"], P["cut_hold_s"])
    if out["reconnects_s"]:
        log(f"mosquitto: bridge link back -> reconnected over {len(out['reconnects_s'])} cuts: "
            f"{', '.join(f'{x:.2f}' for x in out['reconnects_s'])} s")
