"""The alternative's load generator and sink: mosquitto's own C clients, so that what is
measured is mosquitto, not a client.

`publish` feeds N lines to `mosquitto_pub -l` (QoS 1, up to `inflight` in flight; it exits
once the broker acknowledged the last one) and returns its wall time and CPU (rusage). At
end of input mosquitto_pub waits for the PUBACK of the last message id, and ids wrap at
65,535: one mosquitto_pub per CHUNK lines, one after the other, so that wait means every
message was acknowledged.
`Sink` is a persistent-session QoS 1 `mosquitto_sub` whose stdout a thread reads: each
line is one payload, the zero-padded decimal sequence number; it counts distinct numbers,
duplicates and out-of-range ones, with the times of the first and the last message.
"""
import os
import shutil
import subprocess
import threading
import time

from harness import Failed, cpu_s

TOPIC = "edge/bench/usage"
CHUNK = 50_000


def client_bin(name):
    p = shutil.which(name)
    if not p:
        raise Failed(f"{name} not found: run scripts/setup (apt-get install mosquitto-clients)")
    return p


def payload(seq, size):
    """Record `seq` as `size` bytes: its decimal digits, zero-padded (one line for -l)."""
    return str(seq).zfill(size)


def write_payloads(prefix, n, size):
    """Records 1..n as lines in files `prefix`.0, .1, ... of at most CHUNK lines each."""
    paths = []
    for i, lo in enumerate(range(1, n + 1, CHUNK)):
        paths.append(f"{prefix}.{i}")
        with open(paths[-1], "w") as f:
            for seq in range(lo, min(n, lo + CHUNK - 1) + 1):
                f.write(payload(seq, size))
                f.write("\n")
    return paths


def publish(procs, port, line_files, inflight=100, timeout=600):
    """`mosquitto_pub -l` on each of `line_files` in turn: (first_ns, acked_ns, cpu_s of
    the clients)."""
    argv = [client_bin("mosquitto_pub"), "-h", "127.0.0.1", "-p", str(port), "-q", "1",
            "-M", str(inflight), "-t", TOPIC, "-l", "-i", f"bench-pub-{os.getpid()}"]
    end = time.monotonic() + timeout
    cpu = 0.0
    t0 = time.time_ns()
    for path in line_files:
        with open(path, "rb") as stdin:
            p = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.DEVNULL,
                                 stderr=open(os.path.join(procs.tmp, "mosquitto_pub.log"), "a"))
        procs.items.append(("mosquitto_pub", p))
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                p.returncode = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > end:
                raise Failed(f"mosquitto_pub did not finish in {timeout} s")
            time.sleep(0.002)
        cpu += ru.ru_utime + ru.ru_stime
        if p.returncode != 0:
            raise Failed(f"mosquitto_pub exited {p.returncode}: see {procs.tmp}/mosquitto_pub.log")
    return t0, time.time_ns(), cpu


class Sink:
    """A persistent QoS 1 `mosquitto_sub` (client id `client_id`) counting sequence numbers
    1..`count`. Start it again (same id) after its broker restarted: mosquitto_sub does not
    reconnect by itself, and the session keeps what arrived meanwhile."""

    def __init__(self, procs, port, count, client_id="bench-sub", topic="edge/bench/#"):
        self.procs, self.port, self.count, self.id, self.topic = procs, port, count, client_id, topic
        self.seen = bytearray(count + 1)
        self.distinct = self.duplicates = self.bad = 0
        self.first_ns = self.last_ns = None
        self.cpu = 0.0
        self.p = None
        self.lock = threading.Lock()

    def start(self):
        self.p = self.procs.spawn_piped("mosquitto_sub", [
            client_bin("mosquitto_sub"), "-h", "127.0.0.1", "-p", str(self.port), "-q", "1",
            "-c", "-i", self.id, "-t", self.topic])
        threading.Thread(target=self._read, args=(self.p,), daemon=True).start()
        return self

    def _read(self, p):
        for line in p.stdout:
            now = time.time_ns()
            with self.lock:
                self.first_ns = self.first_ns or now
                self.last_ns = now
                try:
                    seq = int(line)
                except ValueError:
                    self.bad += 1
                    continue
                if not 1 <= seq <= self.count:
                    self.bad += 1
                elif self.seen[seq]:
                    self.duplicates += 1
                else:
                    self.seen[seq] = 1
                    self.distinct += 1

    def sample_cpu(self):
        try:
            self.cpu = max(self.cpu, cpu_s(self.p.pid))
        except OSError:
            pass
        return self.cpu

    def complete(self):
        return self.distinct == self.count

    def stop(self):
        self.sample_cpu()
        self.procs.stop(self.p)
