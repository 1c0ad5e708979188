"""Store-and-forward figures for the alternative: a local mosquitto with persistence,
bridged to a central mosquitto (cleansession false, QoS 1, over TLS with hedge's CA and
certificates), fed and read by paho-mqtt clients (mqtt_pub.py, mqtt_sub.py, run in the
bench venv).

The same figures as store_forward.py measures for hedge, with the same number of records
of the size of hedge's encoded usage record: appends per second and disk bytes per record
into the local broker while the central one is down, what holding them idle writes, then
the drain from the bridge's link-up until a persistent subscriber on the central broker
has every sequence number; lost and duplicated records, wire bytes and peak RSS.
"""
import os
import time

from harness import Failed, RssPeak, cpu_s, free_port, hwm_kib, log, read_json, wait, write_bytes
from nft import Tables
from report import fmt
from store_forward import start_mosquitto

HERE = os.path.dirname(os.path.abspath(__file__))


def write_lines(path, lines):
    with open(path, "w") as f:
        f.write("\n".join(lines))


def mosquitto_store_and_forward(py, procs, tmp, P, out, size, n):
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
    sub_out = os.path.join(d, "sub.json")
    sub = procs.spawn("mqtt-sub", [py, os.path.join(HERE, "mqtt_sub.py"), "--port", str(p_sub),
                                   "--count", str(n), "--out", sub_out])

    def sub_state():
        return read_json(sub_out)
    wait("central subscriber ready", lambda: (sub_state() or {}).get("ready"), 30, 0.02)
    procs.stop(c)

    # Publish into the local broker while the bridge's far end is down.
    lp = start_mosquitto(procs, "local", local, p_local)
    w0, c0 = write_bytes(lp.pid), cpu_s(lp.pid)
    pub_out = os.path.join(d, "pub.json")
    log(f"mosquitto: publishing {n} x {size}-byte QoS 1 records into the local broker")
    pub = procs.spawn("mqtt-pub", [py, os.path.join(HERE, "mqtt_pub.py"), "--port", str(p_local),
                                   "--count", str(n), "--size", str(size), "--out", pub_out])

    def pub_state():
        return read_json(pub_out)
    wait("publisher done", lambda: pub.poll() is not None or (pub_state() or {}).get("acked_ns") or (pub_state() or {}).get("error"),
             P["drain_timeout_s"], 0.05)
    ps = pub_state()
    if not ps or "acked_ns" not in ps:
        raise Failed(f"publisher failed: {ps} (see {tmp}/mqtt-pub.log)")
    out["appends_per_s"] = n / ((ps["acked_ns"] - ps["first_ns"]) / 1e9)
    out["cpu_ms_per_1k_appends"] = (cpu_s(lp.pid) - c0) * 1e6 / n
    # Until a persistence save holds them all (autosave every 5 s).
    db = os.path.join(d, "local-data", "mosquitto.db")
    wait("local persistence saved", lambda: os.path.exists(db) and os.stat(db).st_mtime_ns > ps["acked_ns"], 30, 0.1)
    time.sleep(0.2)
    wh0 = write_bytes(lp.pid)
    out["disk_bytes_per_record"] = (wh0 - w0) / n
    time.sleep(P["hold_s"])
    out["hold_disk_bytes_per_s"] = (write_bytes(lp.pid) - wh0) / P["hold_s"]
    out["persist_file_bytes_per_record"] = os.path.getsize(db) / n
    log(f"mosquitto: {out['appends_per_s']:.0f} publishes/s acknowledged; "
        f"{out['disk_bytes_per_record']:.0f} disk bytes/record")

    # The central broker comes back: time the drain.
    nft = Tables.new(p_tls)
    peak = RssPeak(lp.pid)
    tsn = time.time_ns()
    cd0 = None
    start_mosquitto(procs, "central", central, p_sub)
    # No progress for `stall` s once linked (or no link within 120 s): give up, count.
    stall, last, last_t = 20, 0, time.monotonic() + 100
    end = time.monotonic() + 120 + P["drain_timeout_s"]
    while True:
        peak.sample()
        if cd0 is None and (pub_state() or {}).get("link_up_ns"):
            cd0 = cpu_s(lp.pid)
        st = sub_state() or {}
        if st.get("complete"):
            break
        if st.get("distinct", 0) != last:
            last, last_t = st.get("distinct", 0), time.monotonic()
        if time.monotonic() - last_t > stall or time.monotonic() > end:
            log(f"mosquitto: drain stalled at {last}/{n}")
            break
        time.sleep(0.05)
    cd1 = cpu_s(lp.pid)
    wire = nft.bytes()
    nft.close()
    procs.stop(sub)
    st = sub_state()
    ps = pub_state()
    out["peak_rss_kib"] = hwm_kib(lp.pid)
    out["drain_peak_rss_kib"] = peak.kib
    link = ps.get("link_up_ns") or st["first_ns"]
    out["link_from"] = "bridge notification" if ps.get("link_up_ns") else "first message"
    out["reconnect_s"] = (link - tsn) / 1e9 if link else None
    out["drain_s"] = (st["last_ns"] - link) / 1e9 if link and st["last_ns"] else None
    out["drained"] = st["distinct"]
    out["drain_per_s"] = st["distinct"] / out["drain_s"] if out["drain_s"] else 0
    out["lost"] = n - st["distinct"]
    out["duplicated"] = st["duplicates"]
    out["records"] = n
    out["payload_bytes"] = size
    out["cpu_ms_per_1k_drained"] = (cd1 - (cd0 if cd0 is not None else cd1)) * 1e6 / max(1, st["distinct"])
    if wire:
        out["wire_bytes_per_record"] = (wire[0] + wire[1]) / max(1, st["distinct"])
        out["wire_bytes_up_per_record"] = wire[0] / max(1, st["distinct"])
    log(f"mosquitto: drained {st['distinct']} of {n} in {fmt(out['drain_s'])} s from link-up, "
        f"{st['duplicates']} duplicates")

