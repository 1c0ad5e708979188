"""Idle RSS of the armv7 node-only build under qemu-user, 10 instances (issue #12).

qemu-user runs the guest inside its own process, so the process's VmRSS is mostly qemu
(its translator and code cache). The guest's own memory is what qemu mapped for it: run
with a fixed guest base (`-B`), a 32-bit guest lives in [base, base + 4 GiB) of qemu's
address space, and the Rss of the mappings there is the guest's, anonymous and
file-backed apart (binary and libraries as the guest mapped them; qemu's translation
touches the code pages a native run would execute).
"""
import os
import re

from harness import IDLE_S, WINDOW_S, idle_rss, log, wait
from node import Hedge, daemons_run_by, emulated

TARGET = "armv7-unknown-linux-gnueabihf"
SYSROOT = "/usr/arm-linux-gnueabihf"
GUEST_BASE = 0x10_0000_0000
INSTANCES = 10


def guest_rss_kib(smaps_text, base=GUEST_BASE, size=1 << 32):
    """(anon KiB, file KiB) of the mappings starting in [base, base + size). Pure."""
    anon = file = 0
    inside, named = False, False
    for line in smaps_text.splitlines():
        m = re.match(r"^([0-9a-f]+)-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$", line)
        if m:
            start = int(m.group(1), 16)
            inside = base <= start < base + size
            named = m.group(2).startswith("/")
        elif inside and line.startswith("Rss:"):
            kib = int(line.split()[1])
            if named:
                file += kib
            else:
                anon += kib
    return anon, file


def qemu_rss(binary, procs, tmp, P, out):
    """Fills `out` with the guest's idle RSS at INSTANCES instances, or {skipped: why}."""
    b, qemu, why = emulated(TARGET, "qemu-arm")
    if why:
        out["skipped"] = why
        log(f"qemu rss: not measured: {why}")
        return
    node = Hedge(binary, procs, os.path.join(tmp, "qemu-rss-node"))
    node.init("--id", "bench")
    with daemons_run_by((qemu, "-B", hex(GUEST_BASE), "-L", SYSROOT), b):
        node.start()
    for i in range(INSTANCES):
        node.cli("request", f"s{i}", "--software", "exec:/bin/sleep", "--arg", "100000")
    wait(f"{INSTANCES} instances running under the emulated node",
         lambda: node.running() == INSTANCES, 120, 0.1)

    def read():
        with open(f"/proc/{node.daemon.pid}/smaps") as f:
            anon, file = guest_rss_kib(f.read())
        return anon + file, anon, file

    w = idle_rss(read)  # as the native rows read theirs
    procs.stop(node.daemon)
    out.update(anon_kib=w["anon_kib"], file_kib=w["file_kib"], max_kib=w["max_kib"],
               instances=INSTANCES, binary=b, qemu_bin=qemu)
    log(f"qemu rss: armv7 guest {w['kib']} KiB (anon {w['anon_kib']}, file {w['file_kib']}, "
        f"highest {w['max_kib']})")


def qemu_rss_rows(q):
    if "skipped" in q:
        return [("idle RSS, armv7 node-only under qemu-user: not measured (see below)",
                 "MiB", "lower", None, None, "-")]
    n = q["instances"]
    highest = [(f"  highest in the idle window, {n} instances, armv7 under qemu-user", "MiB",
                "lower", q["max_kib"] / 1024, None, "-")] if "max_kib" in q else []
    return [
        (f"idle RSS, {n} instances, armv7 node-only under qemu-user (guest's own)", "MiB",
         "lower", (q["anon_kib"] + q["file_kib"]) / 1024, None, "-"),
        (f"  RssAnon, {n} instances, armv7 under qemu-user", "MiB", "lower",
         q["anon_kib"] / 1024, None, "-"),
        (f"  RssFile, {n} instances, armv7 under qemu-user", "MiB", "lower",
         q["file_kib"] / 1024, None, "-"),
    ] + highest


def print_qemu_rss_params(q):
    if "skipped" in q:
        print(f"- RSS under qemu-user: not measured: {q['skipped']}.")
        return
    print(f"- RSS under qemu-user: {q['binary']} run by {q['qemu_bin']} -B {hex(GUEST_BASE)} "
          f"-L {SYSROOT}, not enrolled, {q['instances']} instances of /bin/sleep, read as the "
          f"native idle RSS is (mean over {WINDOW_S} s after {IDLE_S} s of idle); the Rss of the "
          f"mappings in the guest's 4 GiB at the fixed base (qemu's own memory left out).")
