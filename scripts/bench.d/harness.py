"""The bench harness: failures, waiting, /proc readings and the processes a run starts.

Shared by scripts/bench and scripts/bench-node. `Procs` owns every process a run spawns
and stops them all in `cleanup`, also on failure; `wait` polls with a deadline and raises
`Failed`, the one exception a bench run ends with.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time


class Failed(Exception):
    pass


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(what, cond, timeout, every=0.005):
    """The first truthy `cond()`, polled every `every` s; Failed after `timeout` s."""
    end = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > end:
            raise Failed(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


# The highest seq the master's SQLite store holds for node ?1 (0: none): one seek down
# the key (node, epoch, seq) per life. `max(seq)` alone scans every row of the node,
# ~10 ms at 100k rows: polled every few ms during a drain, the bench's python took a
# quarter of a core from the master it measured.
LAST_SEQ_SQL = ("SELECT coalesce(max((SELECT seq FROM records r"
                " WHERE r.node = e.node AND r.epoch = e.epoch ORDER BY r.seq DESC LIMIT 1)), 0)"
                " FROM epochs e WHERE e.node = ?")


def read_json(path):
    """A JSON file another process writes, or None while it is absent or half written."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def proc_fields(pid, names, file="status"):
    """The integer fields `names` of one read of /proc/PID/`file`, in that order."""
    found = {}
    with open(f"/proc/{pid}/{file}") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in names:
                found[key] = int(rest.split()[0])
    missing = [n for n in names if n not in found]
    if missing:
        raise Failed(f"no {', '.join(missing)} in /proc/{pid}/{file}")
    return tuple(found[n] for n in names)


def proc_field(pid, name, file="status"):
    return proc_fields(pid, (name,), file)[0]


def rss_kib(pid):
    return proc_field(pid, "VmRSS")


def rss_parts_kib(pid):
    """(RssAnon, RssFile) of a live process, in KiB."""
    return proc_fields(pid, ("RssAnon", "RssFile"))


# An idle RSS reading: IDLE_S of idle after the last start, then the mean of readings
# taken every second for WINDOW_S. An idle node's RSS is not one number: its periodic work
# (usage samples and disk walks every 10 s) maps pages, and it releases what went cold
# (src/memory.rs), so a single reading lands anywhere in that cycle. The window spans two
# cycles; its highest reading is reported beside the mean.
IDLE_S = 12
WINDOW_S = 20


def window_summary(samples):
    """Mean VmRSS, RssAnon and RssFile (KiB, rounded) and the highest VmRSS of
    (vm, anon, file) readings. Pure."""
    if not samples:
        raise Failed("no RSS reading in the window")
    mean = [round(sum(s[i] for s in samples) / len(samples)) for i in range(3)]
    return dict(kib=mean[0], anon_kib=mean[1], file_kib=mean[2],
                max_kib=max(s[0] for s in samples), readings=len(samples))


def idle_rss(read, idle_s=IDLE_S, window_s=WINDOW_S, every=1.0):
    """`window_summary` of `read()` -> (vm, anon, file) KiB, called every `every` s for
    `window_s` s after `idle_s` s of idle."""
    time.sleep(idle_s)
    samples, end = [], time.monotonic() + window_s
    while True:
        samples.append(read())
        if time.monotonic() >= end:
            return window_summary(samples)
        time.sleep(every)


def rss_triple_kib(pid):
    """(VmRSS, RssAnon, RssFile) of a live process, in KiB, from one read of its status."""
    return proc_fields(pid, ("VmRSS", "RssAnon", "RssFile"))


def hwm_kib(pid):
    return proc_field(pid, "VmHWM")


def write_bytes(pid):
    return proc_field(pid, "write_bytes", "io")


def cpu_ticks(pid):
    """utime + stime of a live process, in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def cpu_s(pid):
    """utime + stime of a live process, in seconds."""
    return cpu_ticks(pid) / os.sysconf("SC_CLK_TCK")


class RssPeak:
    """Max VmRSS of a process, sampled whenever `sample` is called."""

    def __init__(self, pid):
        self.pid, self.kib = pid, 0

    def sample(self):
        try:
            self.kib = max(self.kib, rss_kib(self.pid))
        except (OSError, Failed):
            pass


class Procs:
    """Every process the bench starts; all stopped in `cleanup`, whatever happened."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.items = []

    def spawn(self, name, argv, log_name=None, **kw):
        """`argv` with stdout and stderr appended to tmp/<log_name or name.log>."""
        out = open(os.path.join(self.tmp, log_name or f"{name}.log"), "a")
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, **kw)
        out.close()
        self.items.append((name, p))
        return p

    def spawn_piped(self, name, argv, **kw):
        """`argv` with its stdout a text pipe for the caller and stderr in tmp/<name>.log."""
        err = open(os.path.join(self.tmp, f"{name}.log"), "a")
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                             text=True, **kw)
        err.close()
        self.items.append((name, p))
        return p

    @staticmethod
    def stop(p, sig=signal.SIGTERM, timeout=20):
        if p.poll() is not None:
            return p.returncode
        try:
            p.send_signal(sig)
            return p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            return p.wait(timeout=10)

    def cleanup(self):
        for name, p in reversed(self.items):
            if p.poll() is None:
                try:
                    self.stop(p, timeout=15)
                except Exception as e:  # noqa: BLE001 - cleanup goes on
                    log(f"cleanup {name}: {e}")
        # Anything still running from inside our temp dir (instances of a SIGKILLed
        # supervisor, grandchildren) is ours: end each by its pid.
        me = os.getpid()
        for d in os.listdir("/proc"):
            if not d.isdigit() or int(d) == me:
                continue
            try:
                cwd = os.readlink(f"/proc/{d}/cwd")
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    cmd = f.read().decode(errors="replace")
            except OSError:
                continue
            if cwd.startswith(self.tmp) or self.tmp in cmd:
                try:
                    os.kill(int(d), signal.SIGKILL)
                except OSError:
                    pass
