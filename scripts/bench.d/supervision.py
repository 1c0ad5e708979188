"""Supervision figures, for hedge and for supervisord: idle RSS, crash-to-restart, boot.

Every instance is `/bin/sh -c 'echo $$ $(date +%s%N) > FILE; exec /bin/sleep 100000'`:
after the exec it is a plain /bin/sleep, and FILE gives its pid and start time, from
which kills and restarts are timed. Kills are spaced past hedge's stable_after_ms, so
each restart is immediate (supervisord: autorestart=true, startsecs=0).
"""
import os
import signal
import statistics
import subprocess
import time

from harness import Procs, idle_rss, log, rss_triple_kib, wait
from node import Hedge

STABLE_AFTER_MS = 200


def stamp_cmd(path):
    return f"echo $$ $(date +%s%N) > {path}; exec /bin/sleep 100000"


def read_ts(path):
    """(pid, ns) from a `echo $$ $(date +%s%N)` file, or None."""
    try:
        with open(path) as f:
            pid, ns = f.read().split()
        return int(pid), int(ns)
    except (OSError, ValueError):
        return None


def kill_latencies(kills, victim_file, label, every=0.01):
    """SIGKILL the victim `kills` times; ms from kill to its replacement's timestamp
    (`victim_file` polled every `every` s)."""
    lat = []
    for _ in range(kills):
        pid, _ = wait(f"{label} victim started", lambda: read_ts(victim_file), 30, every)
        time.sleep(STABLE_AFTER_MS / 1000 + 0.05)
        t0 = time.time_ns()
        os.kill(pid, signal.SIGKILL)
        _, t1 = wait(f"{label} victim restarted",
                     lambda: (lambda m: m if m and m[0] != pid else None)(read_ts(victim_file)),
                     30, every)
        lat.append((t1 - t0) / 1e6)
    return lat


def startup_latencies(times, d, every=0.01):
    """The victim's own start-up, by the same method without a supervisor: ms from a plain
    fork/exec (Popen) by the bench to the timestamp it writes, `times` times."""
    f = os.path.join(d, "startup-t")
    lat = []
    for _ in range(times):
        if os.path.exists(f):
            os.unlink(f)
        t0 = time.time_ns()
        p = subprocess.Popen(["/bin/sh", "-c", stamp_cmd(f)], cwd=d)
        _, t1 = wait("victim started by the bench", lambda: read_ts(f), 30, every)
        lat.append((t1 - t0) / 1e6)
        Procs.stop(p, signal.SIGKILL)
    return lat


def curve_points(P):
    """Instance counts at which idle RSS is read: the curve and the table's sizes."""
    return sorted(set(P["curve"]) | set(P["sizes"]))


def read_rss(out, n, pid):
    """The idle RSS at `n` instances (harness.idle_rss): rss_kib_N and its anon, file and
    max parts."""
    w = idle_rss(lambda: rss_triple_kib(pid))
    for k in ("kib", "anon_kib", "file_kib", "max_kib"):
        out[f"rss_{k}_{n}"] = w[k]


def all_started_after(files, t0):
    def check():
        ts = [read_ts(f) for f in files]
        if all(t and t[1] > t0 for t in ts):
            return max(t[1] for t in ts)
        return None
    return check


def parallel_startups(n, reps, d):
    """The start-up of `n` victims at once, by the same method without a supervisor: one
    /bin/sh started by the bench forks all `n` victim lines in the background; ms from
    before that fork to the last timestamp written, `reps` times. What a supervisor's boot
    cannot go below on this machine: the victims' own fork/exec and work."""
    d = os.path.join(d, "parallel-startup")
    os.makedirs(d, exist_ok=True)
    files = [os.path.join(d, f"t{i}") for i in range(n)]
    script = "".join(f"/bin/sh -c '{stamp_cmd(f)}' & " for f in files) + "wait"
    out = []
    for _ in range(reps):
        for f in files:
            if os.path.exists(f):
                os.unlink(f)
        t0 = time.time_ns()
        p = subprocess.Popen(["/bin/sh", "-c", script], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
        try:
            t1 = wait(f"{n} victims started by the bench", all_started_after(files, t0), 60, 0.05)
        finally:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        out.append((t1 - t0) / 1e6)
    return out


def hedge_supervision(binary, procs, tmp, P, out):
    points = curve_points(P)
    boot_n = P["boot_instances"]
    node = Hedge(binary, procs, os.path.join(tmp, "sup-node"))
    node.init("--id", "bench")
    node.configure({"supervisor": {"stable_after_ms": STABLE_AFTER_MS},
                    "node": {"max_instances": max(points) + 5}})
    node.start()
    part = os.path.join(node.home, "partitions")
    have = 0
    for n in points:
        for i in range(have, n):
            node.cli("request", f"s{i}", "--software", "exec:/bin/sh", "--arg", "-c",
                     "--arg", stamp_cmd("srv/t"))
        have = n
        wait(f"{n} hedge instances running", lambda: node.running() == n, 120, 0.05)
        read_rss(out, n, node.daemon.pid)
        log(f"hedge: {n} instances, idle VmRSS {out[f'rss_kib_{n}']} KiB "
            f"(anon {out[f'rss_anon_kib_{n}']}, file {out[f'rss_file_kib_{n}']}, "
            f"highest {out[f'rss_max_kib_{n}']})")
        if n == P["sizes"][0]:
            node.cli("request", "victim", "--software", "exec:/bin/sh", "--arg", "-c",
                     "--arg", stamp_cmd("srv/started"))
            lat = kill_latencies(P["kills"], os.path.join(part, "victim/srv/started"), "hedge")
            out["restart_ms"] = lat
            node.cli("destroy", "victim")
            wait("victim destroyed",
                 lambda: all(i["name"] != "victim" for i in node.status()["instances"]), 30, 0.05)
            log(f"hedge: crash-to-restart median {statistics.median(lat):.2f} ms over {len(lat)} kills")
        if n == boot_n:
            # Offline boot: SIGKILL the daemon, start it again, time until every instance ran.
            files = [os.path.join(part, f"s{i}/srv/t") for i in range(n)]
            boots = []
            for _ in range(P["boot_reps"]):
                procs.stop(node.daemon, signal.SIGKILL)
                t0 = time.time_ns()
                node.spawn()
                # The stamps carry the times: a slow poll keeps the bench off the CPU.
                t1 = wait(f"{n} hedge instances restarted", all_started_after(files, t0), 60, 0.05)
                boots.append((t1 - t0) / 1e6)
                wait("hedge API after boot", node.status, 30, 0.01)
            out["boot_all_ms"] = boots
            out["boot_instances"] = n
            log(f"hedge: daemon spawn -> {n} instances started: {', '.join(f'{b:.0f}' for b in boots)} ms")
    out["startup_ms"] = startup_latencies(P["kills"], tmp)
    out["startup_all_ms"] = parallel_startups(boot_n, P["boot_reps"], tmp)
    log(f"{boot_n} victims started at once by the bench: "
        f"{', '.join(f'{b:.0f}' for b in out['startup_all_ms'])} ms")
    log(f"victim start-up alone (fork/exec by the bench): median "
        f"{statistics.median(out['startup_ms']):.2f} ms")
    procs.stop(node.daemon)


def supervisord_conf(d, n, victim):
    lines = ["[supervisord]", "nodaemon=true", f"logfile={d}/supervisord.log",
             f"pidfile={d}/supervisord.pid", f"childlogdir={d}", "loglevel=warn", ""]
    names = [f"s{i}" for i in range(n)] + (["victim"] if victim else [])
    for name in names:
        pd = os.path.join(d, "p", name)
        os.makedirs(pd, exist_ok=True)
        cmd = stamp_cmd(f"{pd}/t").replace("%", "%%")
        lines += [f"[program:{name}]", f"command=/bin/sh -c '{cmd}'", f"directory={pd}",
                  "autostart=true", "autorestart=true", "startsecs=0", "startretries=1000000",
                  f"stdout_logfile={pd}/out.log", "redirect_stderr=true", ""]
    conf = os.path.join(d, f"supervisord-{n}{'-v' if victim else ''}.conf")
    with open(conf, "w") as f:
        f.write("\n".join(lines))
    return conf, [os.path.join(d, "p", f"s{i}", "t") for i in range(n)]


def supervisord_supervision(py, procs, tmp, P, out):
    d = os.path.join(tmp, "supervisord")
    os.makedirs(d, exist_ok=True)
    sd = os.path.join(os.path.dirname(py), "supervisord")
    out["version"] = subprocess.run([sd, "--version"], capture_output=True, text=True,
                                    timeout=30).stdout.strip()
    for n in curve_points(P):
        conf, files = supervisord_conf(d, n, victim=False)
        t0 = time.time_ns()
        p = procs.spawn("supervisord", [sd, "-c", conf])
        if files:
            wait(f"{n} supervisord programs started", all_started_after(files, t0), 120, 0.01)
        read_rss(out, n, p.pid)
        log(f"supervisord: {n} programs, idle VmRSS {out[f'rss_kib_{n}']} KiB "
            f"(highest {out[f'rss_max_kib_{n}']})")
        procs.stop(p)
    # Crashes: the victim next to the smallest set, as for hedge.
    conf, files = supervisord_conf(d, P["sizes"][0], victim=True)
    t0 = time.time_ns()
    p = procs.spawn("supervisord", [sd, "-c", conf])
    wait("supervisord programs started", all_started_after(files, t0), 60, 0.01)
    lat = kill_latencies(P["kills"], os.path.join(d, "p/victim/t"), "supervisord")
    out["restart_ms"] = lat
    log(f"supervisord: crash-to-restart median {statistics.median(lat):.2f} ms")
    procs.stop(p)
    n = P["boot_instances"]
    conf, files = supervisord_conf(d, n, victim=False)
    boots = []
    for _ in range(P["boot_reps"]):
        t0 = time.time_ns()
        p = procs.spawn("supervisord", [sd, "-c", conf])
        t1 = wait(f"{n} supervisord programs started", all_started_after(files, t0), 60, 0.05)
        boots.append((t1 - t0) / 1e6)
        procs.stop(p)
    out["boot_all_ms"] = boots
    out["boot_instances"] = n
    log(f"supervisord: spawn -> {n} programs started: {', '.join(f'{b:.0f}' for b in boots)} ms")
