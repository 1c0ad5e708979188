"""The bench's report: the figure rows (hedge beside its alternative, with the ratio), the
table they print as (plain, or --markdown for the README, with the date and the machine),
and the paragraph of parameters that says how each was measured.

`summarise` gives one run's rows; scripts/bench folds the rows of its runs (stats.fold_runs)
into medians with their spread, which is also what --json's "table" is made of.
"""
import statistics

from alternatives import PY_PACKAGES
from backup import backup_rows, print_backup_params
from harness import IDLE_S, WINDOW_S
from mesh import mesh_rows
from qemu_drain import print_qemu_drain_params, qemu_drain_rows
from qemu_rss import print_qemu_rss_params, qemu_rss_rows
from stats import pct, slope
from supervision import STABLE_AFTER_MS, curve_points


def _get(d, *keys):
    for k in keys:
        if d is None or k not in d:
            return None
        d = d[k]
    return d


def summarise(res):
    """(figure, unit, better, hedge, alternative, alternative name) rows of one run."""
    h, s = res["hedge"], res["supervisord"]
    hs, ms = res["hedge_sf"], res["mosquitto"]
    P = res["params"]
    sd, mq = "supervisord", "mosquitto"
    rows = []
    if h:
        rows += _supervision_rows(h, s, P, sd)
    if hs:
        rows += _store_rows(hs, ms, mq)
    if res.get("mesh"):
        rows += mesh_rows(res["mesh"])
    if res.get("backup"):
        rows += backup_rows(res["backup"])
    if res.get("qemu_rss"):
        rows += qemu_rss_rows(res["qemu_rss"])
    if res.get("qemu_drain"):
        rows += qemu_drain_rows(res["qemu_drain"])
    for target, size in sorted(res.get("cross_sizes", {}).items()):
        rows.append((f"node-only stripped binary, {target}", "MB", "lower", size / 1e6, None, "-"))
    return rows


def _supervision_rows(h, s, P, sd):
    rows = []
    for n in P["sizes"]:
        rows.append((f"idle RSS, {n} instances", "MiB", "lower",
                     h[f"rss_kib_{n}"] / 1024, s[f"rss_kib_{n}"] / 1024, sd))
    n = P["sizes"][0]
    rows.append((f"  RssAnon, {n} instances", "MiB", "lower",
                 h[f"rss_anon_kib_{n}"] / 1024, s[f"rss_anon_kib_{n}"] / 1024, sd))
    rows.append((f"  RssFile, {n} instances", "MiB", "lower",
                 h[f"rss_file_kib_{n}"] / 1024, s[f"rss_file_kib_{n}"] / 1024, sd))
    if f"rss_max_kib_{n}" in h:  # older results lack it
        rows.append((f"  highest VmRSS in the idle window, {n} instances", "MiB", "lower",
                     h[f"rss_max_kib_{n}"] / 1024, s[f"rss_max_kib_{n}"] / 1024, sd))
    pts = curve_points(P)
    rows.append((f"idle RSS per added instance (slope {pts[0]}..{pts[-1]})", "KiB", "lower",
                 slope(pts, [h[f"rss_kib_{x}"] for x in pts]),
                 slope(pts, [s[f"rss_kib_{x}"] for x in pts]), sd))
    up = statistics.median(h["startup_ms"])
    for name, f in (("median", statistics.median), ("p99", lambda v: pct(v, 99))):
        rows.append((f"crash->restart {name}, gross", "ms", "lower",
                     f(h["restart_ms"]), f(s["restart_ms"]), sd))
        rows.append((f"crash->restart {name}, net of the victim's start-up", "ms", "lower",
                     f(h["restart_ms"]) - up, f(s["restart_ms"]) - up, sd))
    rows.append(("  victim's start-up alone (fork/exec by the bench), median", "ms", "lower",
                 up, None, "-"))
    rows.append((f"daemon start -> {h['boot_instances']} instances running, offline (median)",
                 "ms", "lower", statistics.median(h["boot_all_ms"]),
                 statistics.median(s["boot_all_ms"]), sd))
    if h.get("startup_all_ms"):  # older results lack it
        all_up = statistics.median(h["startup_all_ms"])
        rows.append(("  the same, net of the instances' own start-up", "ms", "lower",
                     statistics.median(h["boot_all_ms"]) - all_up,
                     statistics.median(s["boot_all_ms"]) - all_up, sd))
        rows.append((f"  {h['boot_instances']} victims started at once by the bench alone, median",
                     "ms", "lower", all_up, None, "-"))
    return rows


def _store_rows(hs, ms, mq):
    rows = []
    rows.append(("appends/s (hedge: its offered load; mosquitto: saturated)", "rec/s", "higher",
                 hs["appends_per_s"], ms["appends_per_s"], mq))
    rows.append(("appends/s per core at saturation (1 s / CPU per append)", "rec/s", "higher",
                 1e6 / hs["cpu_ms_per_1k_appends"] if hs["cpu_ms_per_1k_appends"] else None,
                 1e6 / ms["cpu_ms_per_1k_appends"] if ms["cpu_ms_per_1k_appends"] else None, mq))
    rows.append(("CPU per 1000 appends (hedge: net of sampling)", "ms", "lower",
                 hs["cpu_ms_per_1k_appends"], ms["cpu_ms_per_1k_appends"], mq))
    rows.append(("  load generator CPU per 1000 appends (mosquitto_pub)", "ms", "lower",
                 None, ms["loadgen_cpu_ms_per_1k"], mq))
    rows.append(("disk written per record, until durable", "B", "lower",
                 hs["disk_bytes_per_record"], ms["disk_bytes_per_record"], mq))
    rows.append(("disk written/s holding the queue idle", "kB/s", "lower",
                 hs["hold_disk_bytes_per_s"] / 1000, ms["hold_disk_bytes_per_s"] / 1000, mq))
    rows.append(("drain rate from reconnect", "rec/s", "higher", hs["drain_per_s"],
                 ms["drain_per_s"], mq))
    rows.append(("drain time", "s", "lower", hs["drain_s"], ms["drain_s"], mq))
    rows.append(("CPU per 1000 drained, node side", "ms", "lower", hs["cpu_ms_per_1k_drained"],
                 ms["cpu_ms_per_1k_drained"], mq))
    rows.append(("peak RSS, node side, during drain", "MiB", "lower",
                 hs["drain_peak_rss_kib"] / 1024, ms["drain_peak_rss_kib"] / 1024, mq))
    if "wire_bytes_per_record" in hs and "wire_bytes_per_record" in ms:
        rows.append(("wire bytes per usage record (TLS, IP, both ways)", "B", "lower",
                     hs["wire_bytes_per_record"], ms["wire_bytes_per_record"], mq))
    rows.append(("records lost", "", "lower", hs["lost"], ms["lost"], mq))
    rows.append(("records duplicated", "", "lower", hs["duplicated"], ms["duplicated"], mq))
    rows.append(("link back after the outage -> reconnected", "s", "lower", hs["reconnect_s"],
                 ms["reconnect_s"], mq))
    hr, mr = hs.get("reconnects_s"), ms.get("reconnects_s")
    if hr and mr:
        cuts = len(hr)
        for name, f in (("median", statistics.median), ("p90", lambda v: pct(v, 90)), ("max", max)):
            rows.append((f"link back -> reconnected, {name} of {cuts} cuts", "s", "lower",
                         f(hr), f(mr), "mosquitto bridge"))
    return rows


def fmt(v):
    if v is None:
        return "n/a"
    if isinstance(v, int) or float(v).is_integer() and (abs(v) >= 100 or v == 0):
        return f"{int(v):,}"
    return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"


def ratio(a, b):
    if a is None or b is None:
        return "n/a"
    if b == 0:
        return "=" if a == 0 else "inf"
    r = a / b
    return f"{r:.2f}x" if r >= 0.1 else f"{r:.2g}x"


def cell(v, spread):
    """`v`, with its spread over the runs when there was one."""
    lo, hi = spread
    if v is None or lo is None or lo == hi:
        return fmt(v)
    return f"{fmt(v)} ({fmt(lo)}-{fmt(hi)})"


def header(res):
    m = res["machine"]
    return (f"hedge bench ({'quick' if res['params']['quick'] else 'full'}, median of "
            f"{res['runs']} run{'s' if res['runs'] > 1 else ''}, spread min-max in brackets) "
            f"{res['date']}; {m['model']}, {m['cpus']} cpus, {m['arch']}, {m['kernel']}; "
            f"hedge {res['hedge_binary']['path']} ({res['hedge_binary']['bytes']:,} B)"
            + (f"; supervision rows: {res['node_binary']['path']} "
               f"({res['node_binary']['bytes']:,} B)" if res.get("node_binary") else ""))


def print_markdown(res, table):
    print(f"{header(res)}; `scripts/bench{' --quick' if res['params']['quick'] else ''} "
          f"--runs {res['runs']} --markdown`:")
    print()
    print("| figure | hedge | alternative | ratio |")
    print("|---|---|---|---|")
    for f, u, bt, h, a, who, hsp, asp in table:
        unit = f" {u}" if u else ""
        hedge = "-" if h is None else f"{cell(h, hsp)}{unit}"
        alt = "-" if a is None else f"{who} {cell(a, asp)}{unit}"
        print(f"| {f.strip()} | {hedge} | {alt} | {ratio(h, a)} |")


def print_table(res, table):
    head = ("figure", "unit", "hedge", "alternative", "alt.", "hedge/alt", "better")
    body = [(f, u, cell(h, hsp), cell(a, asp), who, ratio(h, a), bt)
            for f, u, bt, h, a, who, hsp, asp in table]
    w = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    line = lambda r: "| " + " | ".join(c.ljust(w[i]) if i in (0, 1, 4, 6) else c.rjust(w[i])
                                       for i, c in enumerate(r)) + " |"
    print(header(res))
    print(line(head))
    print("|" + "|".join("-" * (x + 2) for x in w) + "|")
    for r in body:
        print(line(r))
    print_params(res)


def drain_cpu(hs):
    """Who was busy during hedge's drain, as % of one core (older results lack it)."""
    c = hs.get("drain_cpu_percent")
    if not c:
        return ""
    return (" CPU during the drain, % of one core: "
            + ", ".join(f"{name} {pct:.0f}" for name, pct in c.items()) + ".")


def print_params(res):
    hs, ms, h = res["hedge_sf"], res["mosquitto"], res["hedge"]
    p = res["params"]
    print()
    print("How (parameters):")
    if h:
        _print_supervision_params(res, h, p)
    if hs:
        _print_store_params(res, hs, ms, p)
    if res.get("mesh"):
        _print_mesh_params(res["mesh"], p)
    if res.get("backup"):
        print_backup_params(res["backup"], p)
    if res.get("qemu_rss"):
        print_qemu_rss_params(res["qemu_rss"])
    if res.get("qemu_drain"):
        print_qemu_drain_params(res["qemu_drain"])
    print("- ratio = hedge / alternative; `better` says which direction wins.")


def _print_supervision_params(res, h, p):
    s = res["supervisord"]
    print(f"- supervision: {res['supervisord']['version'] and 'supervisord ' + res['supervisord']['version']} "
          f"({', '.join(PY_PACKAGES)} in {res['venv']}); hedge's node not enrolled (uplink off), default config but stable_after_ms; every instance is "
          f"/bin/sh -c 'echo $$ $(date +%s%N) > FILE; exec /bin/sleep 100000'. RSS = VmRSS of "
          f"`hedge node run` / of the supervisord process: after all started, {IDLE_S} s idle, "
          f"then the mean of readings every second for {WINDOW_S} s (an idle node's periodic "
          f"work maps pages and its release unmaps them: one reading lands anywhere in that "
          f"cycle); the window's highest reading has its own row.")
    pts = curve_points(p)
    print(f"- idle RSS curve (KiB, VmRSS; anon/file apart in --json) at {pts} instances: hedge "
          f"{', '.join(str(h[f'rss_kib_{x}']) for x in pts)}; supervisord "
          f"{', '.join(str(s[f'rss_kib_{x}']) for x in pts)}; slope = least squares over them.")
    print(f"- crash->restart: {p['kills']} SIGKILLs of a victim instance next to "
          f"{p['sizes'][0]} others, spaced {STABLE_AFTER_MS + 50} ms after its start "
          f"(hedge stable_after_ms={STABLE_AFTER_MS}; supervisord autorestart=true "
          f"startsecs=0); time from kill to the replacement's timestamp; p99 by nearest rank. "
          f"Net = gross - the median of the victim's start-up alone: {p['kills']} plain "
          f"fork/execs (Popen) of the same /bin/sh line by the bench, timed from before the "
          f"fork to its timestamp (median {statistics.median(h['startup_ms']):.2f} ms, p99 "
          f"{pct(h['startup_ms'], 99):.2f} ms).")
    print(f"- boot: {h['boot_instances']} stored instances; hedge daemon SIGKILLed then spawned "
          f"(offline, kills leftovers first); supervisord SIGTERMed then spawned; "
          f"{p['boot_reps']} runs: hedge {', '.join(f'{x:.0f}' for x in h['boot_all_ms'])} ms, "
          f"supervisord {', '.join(f'{x:.0f}' for x in s['boot_all_ms'])} ms."
          + (f" Net = gross - the median of the same {h['boot_instances']} victim lines "
             f"started at once by the bench alone (one /bin/sh forking them all: "
             f"{', '.join(f'{x:.0f}' for x in h['startup_all_ms'])} ms); times from the "
             f"victims' own timestamps." if h.get("startup_all_ms") else ""))


def _print_store_params(res, hs, ms, p):
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
          f"appends/s = outbox next_seq growth over {hs['produce_s']} s: the offered load (a "
          f"node cannot be driven faster than 10 records/s per instance; the per-core figure is "
          f"1 s / CPU per append, for both sides) (the daemon used {hs['cpu_percent_producing']:.0f} % of a core, of which "
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
          f"redialed when its backoff (1 s doubling to 15 s, +-20 %) was due or its probe found the "
          f"path back (then within 400 ms): "
          f"{hs['reconnect_s']:.1f} s. Drain = the node's connection in the broker log -> the "
          f"master's SQLite store holds every seq <= {hs['records']} (its last seq polled every 5 ms, "
          f"then a count); the "
          f"acks reached the node (outbox depth 0) {hs['acked_at_node_s']:.2f} s after "
          f"reconnecting. Uplink defaults {hs['uplink_defaults']}. Lost = node seqs missing at "
          f"the master; duplicated = rows - distinct (node, seq). CPU and RSS (sampled every "
          f"50 ms) of the node daemon over the drain; its peak over the whole run, with "
          f"{p['producers']} instances: {hs['peak_rss_kib'] / 1024:.1f} MiB.{drain_cpu(hs)}")
    print(f"- mosquitto {res['mosquitto_version']}: local broker (persistence true, "
          f"autosave_interval 5 = hedge's 5 s flush, max_queued_messages 0) bridged to a central "
          f"broker over TLS (hedge's CA and certificates; cleansession false, topic out QoS 1, "
          f"restart_timeout 1); {ms['records']} records of {ms['payload_bytes']} B "
          f"(= hedge's encoded usage record: the zero-padded decimal seq) published by "
          f"mosquitto's C client (`mosquitto_pub -l -q 1 -M 100`, one line per record, from a "
          f"file) while the outage lasts ({ms['outage']}). The load generator is not the limit: "
          f"mosquitto_pub used {ms['loadgen_cpu_percent']:.0f} % of a core "
          f"({ms['loadgen_cpu_ms_per_1k']:.1f} ms per 1000, rusage); CPU per 1000 appends is the "
          f"local broker's own. Disk = local mosquitto write_bytes "
          f"from the first publish until an autosave holds them all (each save rewrites the "
          f"whole queue: {ms['persist_file_bytes_per_record']:.0f} B/record, so this varies "
          f"with how many saves fall in the window; holding idle rewrites it every 5 s). "
          f"Drain = the bridge's connection in the central broker's log ({fmt(ms['reconnect_s'])} s "
          f"after the link came back, restart_timeout 1) -> the last of {ms['records']} "
          f"distinct seqs at a persistent QoS 1 `mosquitto_sub -c` on the central broker "
          f"(it used {ms['sink_cpu_percent']:.0f} % of a core over the drain). Configs: "
          f"{ms['local_conf']}, {ms['central_conf']} (deleted with the temp dir unless --keep).")
    if hs.get("reconnects_s") and ms.get("reconnects_s"):
        print(f"- link back -> reconnected: after the drain, {len(hs['reconnects_s'])} cuts of "
              f"{p['cut_hold_s']} s of each idle, connected link (nft resets both ways + `ss -K` "
              f"on the port's sockets, so both ends notice at once), timed from the cut's removal "
              f"to the next connection in the broker's log (hedge: the node's, its backoff as "
              f"configured; mosquitto: the bridge's at the central broker). hedge "
              f"{', '.join(f'{x:.2f}' for x in hs['reconnects_s'])} s; bridge "
              f"{', '.join(f'{x:.2f}' for x in ms['reconnects_s'])} s.")
    else:
        print("- link back -> reconnected over cuts: skipped (needs root and nft).")
    print("- wire bytes: nftables counters on the link's TCP port (IP bytes, both directions, "
          "TLS included) during the drain / records drained."
          if "wire_bytes_per_record" in hs else "- wire bytes: skipped (needs root and nft).")


def _print_mesh_params(m, p):
    print(f"- mesh: master + broker (a second node listener, cut by nftables, for every node "
          f"but the gateway gw) and enrolled nodes on loopback, peers static (no beacons). "
          f"Drains: {m['records']} usage records made by far ({p['mesh_producers']} producer "
          f"instances) while its path is cut (direct: its broker port; 1 hop: far -> gw; "
          f"3 hops: far -> r2 -> r1 -> gw; nft resets on the listening peer's port), then "
          f"the cut removed; rate = records / (the master holds them all, polled every 20 ms, "
          f"- the origin's link came up: the sync core's `uplink up` line in its log): "
          f"direct {m['direct_s']:.2f} s, 1 hop "
          f"{m['hop1_s']:.2f} s, 3 hops {m['hop3_s']:.2f} s. Latency: median of "
          f"{p['lat_samples']} `hedge node request` -> the master stores the origin's next "
          f"seq, links up. Relay CPU = r1's utime+stime over the 3-hop drain / records. "
          f"Peer bytes = nft counters on gw's peer port over the 1-hop drain. Relay RSS: far "
          f"-> r1 -> gw with `hedge master run` stopped (gw still on the broker, so the path "
          f"exists but nothing is acknowledged): r1's VmRSS idle "
          f"{m['relay_idle_rss_kib']} KiB, then {m['relay_holding_rss_kib']} KiB once its "
          f"outbox held {m['relay_holding_batches']} of far's batches "
          f"({m['relay_holding_bytes']:,} B) with {m['held_records']} of far's records (target {m['hold_target']}); the master then started and far's "
          f"records all arrived. Lost = seqs missing at the master from 1 to the origin's "
          f"last (far: its outbox's; direct, stopped by then: the highest stored); "
          f"duplicated = rows - distinct (node, seq).")
