"""The drain with the aarch64 node-only build under qemu-user (issue #12: no target, a
figure to report), beside the native build's drain with the same sizes, in the same run.

Both are store_forward.py's measurement (produce offline with the link cut, restore it,
time until the master's store holds every seq; lost and duplicated), each in its own
directory and process set: once with the native daemon, once with
cross/out/aarch64-unknown-linux-gnu/hedge-node (cross/build) run by qemu-aarch64. The
master, its broker and the node's CLI are native both times. No reconnect cuts. The node's
CPU and RSS under qemu are qemu's (its translator included), so they are not rows.
"""
import os

from harness import Procs, log
from node import daemons_run_by, emulated
from store_forward import hedge_store_and_forward

TARGET = "aarch64-unknown-linux-gnu"
SYSROOT = "/usr/aarch64-linux-gnu"


def qemu_drain(binary, procs, tmp, P, out):
    """Fills `out` with {native, qemu} store-and-forward results, or {skipped: why}."""
    b, qemu, why = emulated(TARGET, "qemu-aarch64")
    if why:
        out["skipped"] = why
        log(f"qemu drain: not measured: {why}")
        return
    sizes = dict(P, records=P["qemu_records"], producers=P["qemu_producers"], cuts=0)
    for name, runner in (("native", None), ("qemu", (qemu, "-L", SYSROOT))):
        d = os.path.join(tmp, f"qemu-drain-{name}")
        os.makedirs(d, mode=0o711)
        own = Procs(d)
        res = out[name] = {}
        log(f"qemu drain: {name} node, {sizes['records']} records from "
            f"{sizes['producers']} instances")
        try:
            if runner:
                with daemons_run_by(runner, b):
                    hedge_store_and_forward(binary, own, d, sizes, res)
            else:
                hedge_store_and_forward(binary, own, d, sizes, res)
        finally:
            own.cleanup()
    out.update(binary=b, qemu_bin=qemu, records=sizes["records"], producers=sizes["producers"])


def qemu_drain_rows(q):
    """Report rows: the emulated drain against the native one."""
    if "skipped" in q:
        return [("drain, aarch64 node-only build under qemu-user: not measured (see below)",
                 "rec/s", "higher", None, None, "-")]
    e, n = q["qemu"], q["native"]
    alt = "hedge x86_64"
    return [
        (f"drain rate, aarch64 node-only build under qemu-user ({q['records']:,} records)",
         "rec/s", "higher", e["drain_per_s"], n["drain_per_s"], alt),
        ("  records lost, aarch64 under qemu-user", "", "lower", e["lost"], n["lost"], alt),
        ("  records duplicated, aarch64 under qemu-user", "", "lower", e["duplicated"],
         n["duplicated"], alt),
    ]


def print_qemu_drain_params(q):
    if "skipped" in q:
        print(f"- drain under qemu-user: not measured: {q['skipped']}.")
        return
    print(f"- drain under qemu-user: {q['binary']} run by {q['qemu_bin']} -L {SYSROOT}; the "
          f"master, broker and CLI native; {q['records']:,} records from {q['producers']} "
          f"instances, usage every 100 ms, produced with the link cut, then drained; the "
          f"alternative is the native daemon with the same sizes in the same run. Under "
          f"qemu-user every instruction of the daemon is translated, so this is a floor "
          f"for a board, not its figure.")
