"""The bench's report: the figure rows (hedge beside its alternative, with the ratio), the
table they print as, and the paragraph of parameters that says how each was measured.

`summarise` is also what --json's "table" is made of.
"""
import statistics

from alternatives import PY_PACKAGES
from harness import pct
from supervision import STABLE_AFTER_MS


def summarise(res):
    """(figure, unit, better, hedge, alternative, alternative name) rows."""
    h, s = res["hedge"], res["supervisord"]
    hs, ms = res["hedge_sf"], res["mosquitto"]
    rows = []
    for n in res["params"]["sizes"]:
        rows.append((f"idle RSS, {n} instances", "MiB", "lower",
                     h[f"rss_kib_{n}"] / 1024, s[f"rss_kib_{n}"] / 1024, "supervisord"))
    rows.append(("crash->restart median", "ms", "lower", statistics.median(h["restart_ms"]),
                 statistics.median(s["restart_ms"]), "supervisord"))
    rows.append(("crash->restart p90", "ms", "lower", pct(h["restart_ms"], 90),
                 pct(s["restart_ms"], 90), "supervisord"))
    rows.append((f"spawn->all {h['boot_instances']} started (median)", "ms", "lower",
                 statistics.median(h["boot_all_ms"]), statistics.median(s["boot_all_ms"]), "supervisord"))
    rows.append(("appends/s (hedge: = offered load)", "rec/s", "higher", hs["appends_per_s"], ms["appends_per_s"], "mosquitto"))
    rows.append(("CPU per 1000 appends (hedge: net of sampling)", "ms", "lower", hs["cpu_ms_per_1k_appends"],
                 ms["cpu_ms_per_1k_appends"], "mosquitto"))
    rows.append(("disk written per record, until durable", "B", "lower", hs["disk_bytes_per_record"],
                 ms["disk_bytes_per_record"], "mosquitto"))
    rows.append((f"disk written/s holding ~{ms['records'] // 1000}k records idle", "kB/s", "lower",
                 hs["hold_disk_bytes_per_s"] / 1000, ms["hold_disk_bytes_per_s"] / 1000, "mosquitto"))
    rows.append(("drain rate from reconnect", "rec/s", "higher", hs["drain_per_s"], ms["drain_per_s"], "mosquitto"))
    same = hs["drained"] == ms["records"]
    rows.append((f"drain time, {ms['records']} records" if same else
                 f"drain time (hedge {hs['drained']}, mosq. {ms['records']} rec)", "s", "lower",
                 hs["drain_s"], ms["drain_s"], "mosquitto"))
    rows.append(("CPU per 1000 drained, node side", "ms", "lower", hs["cpu_ms_per_1k_drained"],
                 ms["cpu_ms_per_1k_drained"], "mosquitto"))
    if "wire_bytes_per_record" in hs and "wire_bytes_per_record" in ms:
        rows.append(("wire bytes per record (TLS, IP, both ways)", "B", "lower",
                     hs["wire_bytes_per_record"], ms["wire_bytes_per_record"], "mosquitto"))
    rows.append(("records lost", "", "lower", hs["lost"], ms["lost"], "mosquitto"))
    rows.append(("records duplicated", "", "lower", hs["duplicated"], ms["duplicated"], "mosquitto"))
    rows.append(("peak RSS, node side, during drain", "MiB", "lower", hs["drain_peak_rss_kib"] / 1024,
                 ms["drain_peak_rss_kib"] / 1024, "mosquitto"))
    rows.append(("link back -> reconnected (1 sample)", "s", "lower", hs["reconnect_s"],
                 ms["reconnect_s"], "mosquitto"))
    return rows


def fmt(v):
    if v is None:
        return "n/a"
    if isinstance(v, int) or float(v).is_integer() and abs(v) >= 100:
        return f"{int(v):,}"
    return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"


def ratio(a, b):
    if a is None or b is None:
        return "n/a"
    if b == 0:
        return "=" if a == 0 else "inf"
    r = a / b
    return f"{r:.2f}x" if r >= 0.1 else f"{r:.2g}x"


def print_table(res):
    rows = summarise(res)
    head = ("figure", "unit", "hedge", "alternative", "alt.", "hedge/alt", "better")
    body = [(f, u, fmt(h), fmt(a), who, ratio(h, a), bt) for f, u, bt, h, a, who in rows]
    w = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    line = lambda r: "| " + " | ".join(c.ljust(w[i]) if i in (0, 1, 4, 6) else c.rjust(w[i])
                                       for i, c in enumerate(r)) + " |"
    print(f"hedge bench ({'quick' if res['params']['quick'] else 'full'}) "
          f"{res['machine']['arch']}, {res['machine']['cpus']} cpus, {res['machine']['kernel']}; "
          f"hedge {res['hedge_binary']['path']} ({res['hedge_binary']['bytes']:,} B)")
    print(line(head))
    print("|" + "|".join("-" * (x + 2) for x in w) + "|")
    for r in body:
        print(line(r))
    hs, ms, h, s = res["hedge_sf"], res["mosquitto"], res["hedge"], res["supervisord"]
    p = res["params"]
    print()
    print("How (parameters):")
    print(f"- supervision: {res['supervisord']['version'] and 'supervisord ' + res['supervisord']['version']} "
          f"({', '.join(PY_PACKAGES)} in {res['venv']}); hedge's node not enrolled (uplink off), default config but stable_after_ms; every instance is "
          f"/bin/sh -c 'echo $$ $(date +%s%N) > FILE; exec /bin/sleep 100000'. RSS = VmRSS of "
          f"`hedge node run` / of the supervisord process, 3 s idle after all started.")
    print(f"- crash->restart: {p['kills']} SIGKILLs of a victim instance next to "
          f"{p['sizes'][0]} others, spaced {STABLE_AFTER_MS + 50} ms after its start "
          f"(hedge stable_after_ms={STABLE_AFTER_MS}; supervisord autorestart=true "
          f"startsecs=0); time from kill to the replacement's timestamp.")
    print(f"- boot: {h['boot_instances']} stored instances; hedge daemon SIGKILLed then spawned "
          f"(offline, kills leftovers first); supervisord SIGTERMed then spawned; "
          f"{p['boot_reps']} runs: hedge {', '.join(f'{x:.0f}' for x in h['boot_all_ms'])} ms, "
          f"supervisord {', '.join(f'{x:.0f}' for x in s['boot_all_ms'])} ms.")
    scale = ""
    if hs["records"] < p["records"]:
        scale = (f" NOTE: hedge produced only {hs['records']} of the {p['records']} records in "
                 f"{hs['produce_s']} s; both sides then move that many.")
    print(f"- hedge records: enrolled node, {p['producers']} /bin/sleep instances, "
          f"sample/usage_interval_ms=100 (offered {hs['offered_per_s']:.0f} usage records/s), "
          f"outbox quota 1 GiB (nothing shed: {hs['shed']}), uplink offline (see below); "
          f"{hs['records']} records queued ({hs['usage_records']} usage records, "
          f"{hs['usage_record_bytes']:.1f} B each encoded (postcard seq+time+kind, measured in the "
          f"master's store); {hs['outbox_store_bytes_per_record']:.1f} B each in the outbox). "
          f"appends/s = outbox next_seq growth over {hs['produce_s']} s: the offered load, not a "
          f"capacity (the daemon used {hs['cpu_percent_producing']:.0f} % of a core, of which "
          f"{hs['sampling_only_cpu_percent']:.0f} % is sampling /proc for {p['producers']} "
          f"instances every 100 ms: measured first with usage_interval_ms=60000 and subtracted "
          f"for CPU per 1000 appends; gross {hs['cpu_ms_per_1k_appends_gross']:.0f} ms). Disk = daemon write_bytes "
          f"between two `hedge node status` calls (each flushes the store) bracketing the "
          f"production, no API call in between (sampling alone wrote "
          f"{hs['sampling_only_disk_bytes_per_s'] / 1000:.0f} kB/s, not subtracted); hold = "
          f"{p['hold_s']} s idle with the full outbox.{scale}")
    how = ("its TCP port cut by nftables (resets both ways) while the broker and "
           "`hedge master run` were up" if hs["link_back_by"] == "nft cut removed" else
           "no broker running")
    print(f"- hedge link: mosquitto with hedge master init's config (node listener on its own "
          f"port) and `hedge master run`. The node was offline for the whole production "
          f"({how}); then the link came back ({hs['link_back_by']}) and the running daemon "
          f"redialed when its backoff (1 s doubling to 60 s, +-20 %) was due: "
          f"{hs['reconnect_s']:.1f} s. Drain = the node's connection in the broker log -> the "
          f"master's SQLite store holds every seq <= {hs['records']} (polled every 50 ms); the "
          f"acks reached the node (outbox depth 0) {hs['acked_at_node_s']:.2f} s after "
          f"reconnecting. Uplink defaults {hs['uplink_defaults']}. Lost = node seqs missing at "
          f"the master; duplicated = rows - distinct (node, seq). CPU and RSS (sampled every "
          f"50 ms) of the node daemon over the drain; its peak over the whole run, with "
          f"{p['producers']} instances: {hs['peak_rss_kib'] / 1024:.1f} MiB.")
    print(f"- mosquitto {res['mosquitto_version']}: local broker (persistence true, "
          f"autosave_interval 5 = hedge's 5 s flush, max_queued_messages 0) bridged to a central "
          f"broker over TLS (hedge's CA and certificates; cleansession false, topic out QoS 1, "
          f"restart_timeout 1); {ms['records']} records of {ms['payload_bytes']} B "
          f"(= hedge's encoded usage record: 8-byte seq + padding) published with paho-mqtt "
          f"QoS 1 (100 in flight; the Python client bounds appends/s, CPU per 1000 is the "
          f"broker's own) while the central broker is down. Disk = local mosquitto write_bytes "
          f"from the first publish until an autosave holds them all (each save rewrites the "
          f"whole queue: {ms['persist_file_bytes_per_record']:.0f} B/record, so this varies "
          f"with how many saves fall in the window; holding idle rewrites it every 5 s). "
          f"Drain = bridge link-up ({ms['link_from']}; {fmt(ms['reconnect_s'])} s after the "
          f"central broker started, despite restart_timeout 1) -> the last of {ms['records']} "
          f"distinct seqs at a persistent QoS 1 paho subscriber on the central broker. Configs: "
          f"{ms['local_conf']}, {ms['central_conf']} (deleted with the temp dir unless --keep).")
    print("- wire bytes: nftables counters on the link's TCP port (IP bytes, both directions, "
          "TLS included) during the drain / records drained."
          if "wire_bytes_per_record" in hs else "- wire bytes: skipped (needs root and nft).")
    print("- ratio = hedge / alternative; `better` says which direction wins.")
