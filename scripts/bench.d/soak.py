"""The soak (`scripts/bench --soak MINUTES`, off by default, not in CI): an enrolled node
with records flowing to its master while its link flaps (cut, restored) every `flap_s`
seconds; the daemon's VmRSS is read every second and each minute's mean makes the curve
(with the minute's highest reading beside it: an idle node's RSS moves within a cycle of
periodic work and releases, harness.IDLE_S). Returns the curve and the growth after the
first five minutes (the target: within 1 MiB over an hour).
"""
import os
import time

from harness import log, rss_triple_kib, wait, window_summary
from linkcut import cut
from store_forward import Fleet

INSTANCES = 20


def growth_after(curve, minute=5):
    """(from minute, KiB grown) from the sample at `minute` (or the first one after it,
    else the first sample) to the last; None with fewer than two samples."""
    if len(curve) < 2:
        return None
    m0, base = next(((m, kib) for m, kib in curve[:-1] if m >= minute), curve[0])
    return m0, curve[-1][1] - base


def soak(binary, procs, tmp, minutes, out, flap_s=30):
    fleet = Fleet(binary, procs, tmp, INSTANCES)
    node = fleet.node
    node.configure({"monitor": {"usage_interval_ms": 1000}})
    fleet.start_central()
    node.start()
    for i in range(INSTANCES):
        node.cli("request", f"u{i}", "--software", "exec:/bin/sleep", "--arg", "100000")
    wait(f"{INSTANCES} instances running", lambda: node.running() == INSTANCES, 60, 0.05)
    pid = node.daemon.pid
    t0 = time.monotonic()
    curve, parts, highs, flaps, link = [], [], [], 0, None
    readings, next_read, next_flap, next_sample = [], t0, t0 + flap_s, t0
    while True:
        now = time.monotonic()
        if now >= next_read:
            readings.append(rss_triple_kib(pid))
            next_read += 1
        if now >= next_sample:
            m = round((now - t0) / 60)
            w = window_summary(readings)
            readings = []
            curve.append((m, w["kib"]))
            highs.append((m, w["max_kib"]))
            # Anon and file apart: a creep of file pages is code first run late (the
            # kernel maps 64 KiB around each page it faults in), a creep of anon a leak.
            parts.append((m, w["anon_kib"], w["file_kib"]))
            log(f"soak: minute {m}: VmRSS {w['kib']} KiB, mean of {w['readings']} "
                f"(anon {w['anon_kib']}, file {w['file_kib']}, highest {w['max_kib']})")
            next_sample += 60
            if m >= minutes:
                break
        if now >= next_flap:
            if link:
                link.close()
                link = None
            else:
                link = cut(fleet.node_port)
                flaps += link is not None
            next_flap += flap_s
        time.sleep(0.2)
    if link:
        link.close()
    st = node.status(required=True)
    anon = [(m, a) for m, a, _ in parts]
    out.update(minutes=minutes, flap_s=flap_s, instances=INSTANCES, flaps=flaps,
               rss_curve_kib=curve, growth_after_5min_kib=growth_after(curve),
               max_curve_kib=highs, max_growth_after_5min_kib=growth_after(highs),
               anon_curve_kib=anon, file_curve_kib=[(m, f) for m, _, f in parts],
               anon_growth_after_5min_kib=growth_after(anon),
               records=st["outbox"]["next_seq"] - 1, outbox_depth=st["outbox"]["depth"])
    procs.stop(node.daemon)
