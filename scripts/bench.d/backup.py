"""Backup figures (issue #14), for hedge's backup engine and for restic, in the same run.

hedge is measured through `hedge node backup-probe` (hidden): the engine the node daemon
runs (runtime::backup::Vault: FastCDC chunks, HMAC-SHA256 keys, ChaCha20-Poly1305,
SHA-256 ids, the on-disk chunk index) on a directory, in a process of its own; restic
(Debian's, installed here if missing) is what a user would pick for deduplicated,
encrypted backups, run on the same files into a local repository. Every process is
timed by the bench the same way: wall time from spawn to exit, CPU = its rusage
(utime + stime, os.wait4) and peak RSS = its VmHWM, read every 2 ms while it runs (a
child's ru_maxrss would include the bench's own RSS at the fork). The data is
pseudo-random (it neither compresses nor dedupes within itself: the worst case for both
tools).

- throughput: `tp_mib` MiB in 4 files, a first snapshot into an empty vault/repository:
  MB/s (1 MB = 10^6 B) and CPU ms per MB; `tar czf` of the same files beside it (what a
  user without a backup tool would run);
- aarch64 under qemu-user: the same for cross/out/aarch64-unknown-linux-gnu/hedge-node
  (cross/build), on `qemu_mib` MiB (qemu is slow); the row says why when it is absent;
- bytes per snapshot, 1% changed: 64 MiB in 4 files, snapshot, 1% of it overwritten in
  10 scattered places (671,080 B), snapshot again: the bytes the second
  snapshot added to the vault (hedge: the new chunks' files; restic: the repository's
  growth), and `tar --listed-incremental` (every changed file again) beside it;
- RTO: a 100 MiB partition snapshotted, then restored into an empty directory: wall time
  of the restore process (hedge: engine-level restore from the local vault, every chunk
  verified; restic: `restic restore latest`);
- peak RSS of the backup (the throughput snapshot) and of the restore (the RTO).
"""
import json
import os
import random
import shutil
import signal
import subprocess
import time

from harness import Failed, log

AARCH64 = "aarch64-unknown-linux-gnu"
PASSWORD = "hedge-bench-not-a-secret"


def restic_bin():
    """restic's path, installed from Debian (idempotently, as root) when missing; None
    when it cannot be had."""
    p = shutil.which("restic")
    if p or os.geteuid() != 0:
        return p
    log("installing restic from Debian (apt-get install restic)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    r = subprocess.run(["apt-get", "install", "-y", "-q", "restic"], env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                       timeout=600)
    if r.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-q", "restic"], env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
    return shutil.which("restic")


def restic_version(restic):
    r = subprocess.run([restic, "version"], capture_output=True, text=True, timeout=30)
    return r.stdout.strip()


def write_random(path, nbytes, seed):
    """`nbytes` pseudo-random bytes (seeded: reproducible) into `path`."""
    rng = random.Random(seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        left = nbytes
        while left:
            n = min(left, 1 << 20)
            f.write(rng.randbytes(n))
            left -= n


def make_partition(d, mib, seed, files=4):
    """A partition `d` whose srv/ holds `mib` MiB of random data in `files` files."""
    each = (mib << 20) // files
    for i in range(files):
        write_random(os.path.join(d, "srv", f"data{i}.bin"), each, seed * 100 + i)
    return d


def change_one_percent(d, places=10):
    """Overwrites 1% of srv/'s bytes with new random data, in `places` scattered runs;
    returns the bytes changed."""
    files = sorted(os.path.join(d, "srv", f) for f in os.listdir(os.path.join(d, "srv")))
    total = sum(os.path.getsize(f) for f in files)
    run = total // 100 // places
    rng = random.Random(4242)
    for k in range(places):
        f = files[k % len(files)]
        size = os.path.getsize(f)
        at = rng.randrange(0, size - run)
        with open(f, "r+b") as fh:
            fh.seek(at)
            fh.write(rng.randbytes(run))
    return run * places


def tree_bytes(d):
    total = 0
    for root, _dirs, files in os.walk(d):
        for f in files:
            p = os.path.join(root, f)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total


def vm_hwm_kib(pid):
    """VmHWM of a live process (its own peak RSS since its exec), or 0."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_measured(argv, log_path, timeout, env=None, cwd=None):
    """Runs `argv` to its end: (wall s, CPU s, peak RSS KiB, stdout). Failed on a non-zero
    exit or past `timeout` s (the process is then killed). Peak RSS = the last VmHWM read
    while it ran (every 2 ms), not ru_maxrss: a child's ru_maxrss includes the bench's
    own RSS at the fork."""
    with open(log_path, "ab") as err, open(log_path + ".out", "w+b") as out:
        t0 = time.monotonic()
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env,
                             cwd=cwd)
        end = t0 + timeout
        hwm = 0
        while True:
            hwm = max(hwm, vm_hwm_kib(p.pid))
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > end:
                os.kill(p.pid, signal.SIGKILL)
                os.wait4(p.pid, 0)
                p.returncode = -9
                raise Failed(f"{argv[0]} {argv[1:3]} ran past {timeout} s")
            time.sleep(0.002)
        wall = time.monotonic() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode(errors="replace")
    if p.returncode != 0:
        raise Failed(f"{' '.join(argv[:4])}... exited {p.returncode} (log {log_path})")
    return wall, ru.ru_utime + ru.ru_stime, hwm, text


class Probe:
    """`hedge node backup-probe` of one binary (optionally under a qemu runner)."""

    def __init__(self, binary, tmp, runner=()):
        self.argv = [*runner, binary, "node", "backup-probe"]
        self.tmp = tmp

    def snapshot(self, vault, part, timeout=1800):
        wall, cpu, rss, out = run_measured(
            [*self.argv, "--vault", vault, "--from", part, "--json"],
            os.path.join(self.tmp, "backup-probe.log"), timeout)
        return dict(json.loads(out)["snapshot"], proc_wall_s=wall, proc_cpu_s=cpu,
                    proc_rss_kib=rss)

    def restore(self, vault, snapshot, to, timeout=1800):
        wall, cpu, rss, out = run_measured(
            [*self.argv, "--vault", vault, "--snapshot", snapshot, "--restore-to", to,
             "--json"], os.path.join(self.tmp, "backup-probe.log"), timeout)
        return dict(json.loads(out)["restore"], proc_wall_s=wall, proc_cpu_s=cpu,
                    proc_rss_kib=rss)


class Restic:
    def __init__(self, restic, tmp, name):
        self.b, self.tmp = restic, tmp
        self.repo = os.path.join(tmp, f"restic-{name}")
        self.env = {**os.environ, "RESTIC_PASSWORD": PASSWORD,
                    "RESTIC_CACHE_DIR": os.path.join(tmp, "restic-cache")}
        self.log = os.path.join(tmp, "restic.log")
        subprocess.run([restic, "init", "--repo", self.repo], env=self.env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)

    def backup(self, part):
        # From inside the partition, so both tools see the same relative paths.
        return run_measured([self.b, "backup", "--repo", self.repo, "-q", "srv"],
                            self.log, 1800, env=self.env, cwd=part)

    def restore(self, to):
        return run_measured([self.b, "restore", "latest", "--repo", self.repo, "--target", to],
                            self.log, 1800, env=self.env)


def mb(nbytes):
    return nbytes / 1e6


def hedge_backup(binary, procs, tmp, P, out):
    """Fills `out` with the backup figures of hedge (`binary`) and restic (see the
    module's doc)."""
    del procs  # every process here runs to its end inside run_measured
    d = os.path.join(tmp, "backup")
    os.makedirs(d, exist_ok=True)
    probe = Probe(binary, d)
    r = subprocess.run([*probe.argv, "--help"], capture_output=True, timeout=30)
    if r.returncode != 0:
        raise Failed(f"{binary} has no `node backup-probe` (a build before issue #14?)")
    restic = restic_bin()
    out["restic_version"] = restic and restic_version(restic)
    rs = out["restic"] = {}
    hs = out["hedge"] = {}

    # Throughput (and peak RSS of a backup).
    tp = make_partition(os.path.join(d, "tp"), P["backup_tp_mib"], 1)
    nbytes = tree_bytes(os.path.join(tp, "srv"))
    out["tp_bytes"] = nbytes
    log(f"backup: hedge snapshot of {nbytes >> 20} MiB")
    s = probe.snapshot(os.path.join(d, "vault-tp"), tp)
    hs["tp"] = s
    if restic:
        log(f"backup: restic backup of {nbytes >> 20} MiB")
        wall, cpu, rss, _ = Restic(restic, d, "tp").backup(tp)
        rs["tp"] = dict(proc_wall_s=wall, proc_cpu_s=cpu, proc_rss_kib=rss)
    log("backup: tar czf of the same files")
    wall, cpu, rss, _ = run_measured(["tar", "czf", os.path.join(d, "tp.tar.gz"), "-C", tp,
                                      "srv"], os.path.join(d, "tar.log"), 1800)
    out["tar_tp"] = dict(proc_wall_s=wall, proc_cpu_s=cpu, proc_rss_kib=rss)
    os.unlink(os.path.join(d, "tp.tar.gz"))

    # aarch64 under qemu-user.
    out["qemu"] = qemu_figures(d, P)

    # Bytes per snapshot, 1% changed.
    ds = make_partition(os.path.join(d, "dedup"), 64, 2)
    vault = os.path.join(d, "vault-dedup")
    first = probe.snapshot(vault, ds)
    before = tree_bytes(vault)
    rr = Restic(restic, d, "dedup") if restic else None
    if rr:
        rr.backup(ds)
        rbefore = tree_bytes(rr.repo)
    snar = os.path.join(d, "dedup.snar")
    run_measured(["tar", "cf", os.path.join(d, "dedup0.tar"), "--listed-incremental", snar,
                  "-C", ds, "srv"], os.path.join(d, "tar.log"), 600)
    changed = change_one_percent(ds)
    out["dedup"] = {"bytes": tree_bytes(os.path.join(ds, "srv")), "changed": changed}
    second = probe.snapshot(vault, ds)
    hs["dedup"] = dict(first=first, second=second, vault_growth=tree_bytes(vault) - before)
    if rr:
        rr.backup(ds)
        rs["dedup"] = dict(repo_growth=tree_bytes(rr.repo) - rbefore)
    inc = os.path.join(d, "dedup1.tar")
    run_measured(["tar", "cf", inc, "--listed-incremental", snar, "-C", ds, "srv"],
                 os.path.join(d, "tar.log"), 600)
    out["tar_incremental_bytes"] = os.path.getsize(inc)
    for f in (inc, os.path.join(d, "dedup0.tar")):
        os.unlink(f)

    # RTO of a 100 MiB partition (and peak RSS of a restore).
    rp = make_partition(os.path.join(d, "rto"), 100, 3)
    vault = os.path.join(d, "vault-rto")
    snap = probe.snapshot(vault, rp)
    log("backup: hedge restore of 100 MiB")
    hs["restore"] = probe.restore(vault, snap["id"], os.path.join(d, "rto-hedge"))
    check_same(os.path.join(rp, "srv"), os.path.join(d, "rto-hedge", "srv"), "hedge restore")
    if restic:
        r2 = Restic(restic, d, "rto")
        r2.backup(rp)
        log("backup: restic restore of 100 MiB")
        wall, cpu, rss, _ = r2.restore(os.path.join(d, "rto-restic"))
        rs["restore"] = dict(proc_wall_s=wall, proc_cpu_s=cpu, proc_rss_kib=rss)
        check_same(os.path.join(rp, "srv"), os.path.join(d, "rto-restic", "srv"),
                   "restic restore")
    out["rto_bytes"] = tree_bytes(os.path.join(rp, "srv"))
    shutil.rmtree(d, ignore_errors=True)


def check_same(a, b, what):
    """Failed unless the files of `a` and `b` are byte for byte equal."""
    fa, fb = sorted(os.listdir(a)), sorted(os.listdir(b))
    if fa != fb:
        raise Failed(f"{what}: files {fb} != {fa}")
    for f in fa:
        with open(os.path.join(a, f), "rb") as x, open(os.path.join(b, f), "rb") as y:
            while True:
                u, v = x.read(1 << 20), y.read(1 << 20)
                if u != v:
                    raise Failed(f"{what}: {f} differs")
                if not u:
                    break


def cross_binary():
    from node import ROOT
    return os.path.join(ROOT, "cross", "out", AARCH64, "hedge-node")


def qemu_figures(d, P):
    """The aarch64 node-only build under qemu-user: its snapshot figures, or
    {"skipped": why}."""
    b = cross_binary()
    qemu = shutil.which("qemu-aarch64")
    if not os.path.isfile(b):
        return {"skipped": f"no cross/out/{AARCH64}/hedge-node: run cross/setup, cross/build"}
    if not qemu:
        return {"skipped": "no qemu-aarch64 (cross/setup installs qemu-user)"}
    probe = Probe(b, d, runner=(qemu, "-L", "/usr/aarch64-linux-gnu"))
    r = subprocess.run([*probe.argv, "--help"], capture_output=True, timeout=60)
    if r.returncode != 0:
        return {"skipped": f"{b} has no `node backup-probe` (built before it: rerun cross/build)"}
    part = make_partition(os.path.join(d, "qemu"), P["backup_qemu_mib"], 5)
    log(f"backup: aarch64 hedge-node under qemu, snapshot of {P['backup_qemu_mib']} MiB")
    s = probe.snapshot(os.path.join(d, "vault-qemu"), part, timeout=3600)
    shutil.rmtree(part, ignore_errors=True)
    return dict(s, bytes_in=P["backup_qemu_mib"] << 20, binary=b, qemu=qemu)


def backup_rows(b):
    """(figure, unit, better, hedge, alternative, alternative name) rows."""
    rows = []
    hs, rs = b["hedge"], b["restic"]
    rn = "restic"
    n = mb(b["tp_bytes"])

    def per(s, what):
        return None if not s else s[what]
    tp, rtp = hs["tp"], rs.get("tp")
    rows.append((f"backup throughput, first snapshot of {b['tp_bytes'] >> 20} MiB, x86_64",
                 "MB/s", "higher", n / tp["proc_wall_s"],
                 rtp and n / rtp["proc_wall_s"], rn))
    rows.append(("  the same vs tar czf (no dedup, no encryption)", "MB/s", "higher",
                 n / tp["proc_wall_s"], n / b["tar_tp"]["proc_wall_s"], "tar czf"))
    rows.append(("backup CPU per MB, x86_64", "ms", "lower", 1000 * tp["proc_cpu_s"] / n,
                 rtp and 1000 * rtp["proc_cpu_s"] / n, rn))
    q = b["qemu"]
    if "skipped" in q:
        rows.append(("backup throughput, aarch64 under qemu-user: not measured (see below)",
                     "MB/s", "higher", None, None, "-"))
    else:
        qn = mb(q["bytes_in"])
        rows.append((f"backup throughput, aarch64 under qemu-user ({q['bytes_in'] >> 20} MiB)",
                     "MB/s", "higher", qn / q["proc_wall_s"], n / tp["proc_wall_s"],
                     "hedge x86_64 native"))
        rows.append(("backup CPU per MB, aarch64 under qemu-user", "ms", "lower",
                     1000 * q["proc_cpu_s"] / qn, 1000 * tp["proc_cpu_s"] / n,
                     "hedge x86_64 native"))
    dd = hs["dedup"]
    rows.append(("bytes stored by the 2nd snapshot, 64 MiB with 1% changed", "KiB", "lower",
                 dd["vault_growth"] / 1024,
                 rs.get("dedup") and rs["dedup"]["repo_growth"] / 1024, rn))
    rows.append(("  the same vs tar --listed-incremental (changed files whole)", "KiB", "lower",
                 dd["vault_growth"] / 1024, b["tar_incremental_bytes"] / 1024, "tar incremental"))
    rows.append(("  new bytes of the 2nd snapshot / bytes changed (hedge's own count)", "x",
                 "lower", dd["second"]["new_bytes"] / b["dedup"]["changed"], None, "-"))
    rs_r = rs.get("restore")
    rows.append((f"RTO, restore of a {b['rto_bytes'] >> 20} MiB partition (local, verified)",
                 "s", "lower", hs["restore"]["proc_wall_s"], per(rs_r, "proc_wall_s"), rn))
    rows.append(("peak RSS during backup", "MiB", "lower", tp["proc_rss_kib"] / 1024,
                 rtp and rtp["proc_rss_kib"] / 1024, rn))
    rows.append(("peak RSS during restore", "MiB", "lower", hs["restore"]["proc_rss_kib"] / 1024,
                 rs_r and rs_r["proc_rss_kib"] / 1024, rn))
    if "skipped" not in q:
        rows.append(("  peak RSS during backup, aarch64 under qemu-user (qemu's own included)",
                     "MiB", "lower", q["proc_rss_kib"] / 1024, None, "-"))
    return rows


def print_backup_params(b, p):
    hs = b["hedge"]
    tp, dd = hs["tp"], hs["dedup"]
    q = b["qemu"]
    print(f"- backup: hedge = `hedge node backup-probe` (runtime::backup::Vault in a process "
          f"of its own, no daemon, no network), {b['restic_version'] or 'restic: not installed'} "
          f"(local repository, default settings, RESTIC_CACHE_DIR in the run's temp dir). "
          f"Pseudo-random data in 4 files under srv/. Each figure is one process measured "
          f"by the bench: wall from spawn to exit, CPU = utime + stime (os.wait4), peak RSS "
          f"= its VmHWM, read every 2 ms while it runs. Throughput: {b['tp_bytes'] >> 20} MiB "
          f"into an empty vault "
          f"(hedge {tp['chunks']} chunks, engine-only {tp['wall_s']:.2f} s of "
          f"{tp['proc_wall_s']:.2f} s). 1% changed: 64 MiB, then {b['dedup']['changed']:,} B "
          f"overwritten in 10 scattered places; stored = growth on disk of the vault (chunks, "
          f"id list, catalog entry; hedge: "
          f"{dd['second']['chunks']} chunks referenced, {dd['second']['new_bytes']:,} B of new "
          f"chunks by its own count) / of the restic repository, on disk. RTO: "
          f"a {b['rto_bytes'] >> 20} MiB partition restored from the local vault into an "
          f"empty directory (staged, every chunk checked, swapped in), checked byte for byte "
          f"afterwards; over the network add the upload/download at the link's rate.")
    if "skipped" in q:
        print(f"- aarch64 under qemu-user: not measured: {q['skipped']}.")
    else:
        print(f"- aarch64 under qemu-user: {q['binary']} run by {q['qemu']} -L "
              f"/usr/aarch64-linux-gnu, {q['bytes_in'] >> 20} MiB; CPU and RSS are the "
              f"emulator's (what running the ARM build here costs, not an ARM board's figure).")
