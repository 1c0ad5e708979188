"""The code an idle node runs, as globs of its sections (`scripts/hot-code`, `build.rs`).

`callgrind_functions` reads which functions of one object ran (self cost > 0) in a
callgrind dump; `section_globs` turns their symbol names into globs of the input sections
that hold them (`.text.<symbol>`) that still match when the names' hashes change: another
build of the same code (features, toolchain, target) hashes the same function differently.
Both pure. `profile_idle_node` runs the node under callgrind and returns the names.

Callgrind sees what runs under valgrind, not all that runs natively (the node's own
release of cold pages reads /proc figures valgrind changes, timing differs). So
`faulting_functions` runs a build that already groups that code, natively, and names the
functions whose first instruction in a page-sized window faulted (`perf` page-fault
events): code outside the group that the idle node still runs. Each round moves those
into the group and shows what their windows hid.
"""
import bisect
import fnmatch
import os
import re
import subprocess
import time

from harness import log, wait
from node import Hedge, daemons_run_by

LEGACY_HASH = re.compile(r"17h[0-9a-f]{16}E$")
LLVM_SUFFIX = re.compile(r"(\.(llvm\.)?\d+)+$")
V0_SIMPLE = re.compile(r"^_R((?:N[vt])+)C(?:s[0-9A-Za-z]*_)?((?:\d+[A-Za-z_][0-9A-Za-z_]*)+)$")
IDENT = re.compile(r"(\d+)")


NAMED = re.compile(r"^c?(ob|fn)=\((\d+)\) (.+)$")


def callgrind_functions(dump_text, obj_suffix, other_dumps=()):
    """{symbol: self cost} of the functions of the object whose path ends with
    `obj_suffix`, from a callgrind dump written with --demangle=no. Callgrind names an
    object or function once per run, where it first uses it, perhaps before this dump
    (in `other_dumps`, the run's other dump files) or further down in it."""
    names = {"ob": {}, "fn": {}}
    for text in (dump_text, *other_dumps):
        for line in text.splitlines():
            m = NAMED.match(line)
            if m:
                names[m.group(1)][m.group(2)] = m.group(3)

    def resolve(kind, v):
        m = re.match(r"\((\d+)\)", v)
        return names[kind].get(m.group(1)) if m else v

    costs = {}
    ob = fn = None
    after_calls = False
    for line in dump_text.splitlines():
        if line.startswith("ob="):
            ob = resolve("ob", line[3:])
        elif line.startswith("fn="):
            fn = resolve("fn", line[3:])
        elif line.startswith("calls="):
            after_calls = True  # the next cost line is the call's inclusive cost
        elif line[:1].isdigit() or line[:1] in "+-*":
            if after_calls:
                after_calls = False
                continue
            parts = line.split()
            if fn and ob and ob.endswith(obj_suffix) and len(parts) >= 2:
                costs[fn] = costs.get(fn, 0) + int(parts[1])
    return {f: c for f, c in costs.items() if c > 0}


def v0_as_legacy(name):
    """The legacy mangling's glob for a v0 name of a plain path (`a::b::c`, no impl, no
    generics), or None: one toolchain's std is mangled v0, another's legacy."""
    m = V0_SIMPLE.match(name)
    if not m:
        return None
    tags, rest = m.groups()
    idents, i = [], 0
    while i < len(rest):
        n = IDENT.match(rest, i)
        if not n:
            return None
        length = int(n.group(1))
        start = n.end()
        idents.append(rest[start:start + length])
        i = start + length
    if i != len(rest) or len(idents) != len(tags) // 2 + 1:
        return None
    return "_ZN" + "".join(f"{len(s)}{s}" for s in idents) + "17h*"


def section_globs(symbols, all_symbols=()):
    """Sorted, unique globs of the `.text.` sections of `symbols` (mangled names). A glob
    that would also match other functions of `all_symbols` (the binary's: instances of
    one generic function, say) names its own function's section exactly instead."""
    out = set()
    for s in symbols:
        base = LLVM_SUFFIX.sub("", s)
        if base.startswith("_ZN") and LEGACY_HASH.search(base):
            glob = LEGACY_HASH.sub("17h*", base)
            out.add(".text." + (base + "*" if matches(glob, all_symbols) > 1 else glob))
        elif base.startswith("_R"):
            # Crate disambiguators and back-references move with the hashes.
            glob = re.sub(r"([CB])s?[0-9A-Za-z]*_", r"\1*_", base) + "*"
            if matches(glob, all_symbols) > 1:
                out.add(".text." + base + "*")
                continue
            out.add(".text." + glob)
            legacy = v0_as_legacy(base)
            if legacy:
                out.add(".text." + legacy)
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", base):
            out.add(".text." + base)  # C functions (ring's, say) keep their names
    return sorted(out)


def matches(glob, symbols):
    """How many of `symbols` `glob` matches."""
    return sum(1 for s in symbols if fnmatch.fnmatchcase(s, glob))


def binary_functions(binary):
    """The names of the functions in `binary`'s symbol table (`nm`)."""
    return [name for _, name in text_symbols(binary)]


def text_symbols(binary):
    """[(address, name)] of `binary`'s function symbols, sorted."""
    out = subprocess.run(["nm", "-n", binary], capture_output=True, text=True, check=True).stdout
    return [(int(p[0], 16), p[2]) for p in (l.split() for l in out.splitlines())
            if len(p) == 3 and p[1] in "tT"]


def symbolize(addresses, symbols):
    """The names of the functions holding `addresses` (offsets into the binary), given
    its sorted `text_symbols`. Pure."""
    starts = [a for a, _ in symbols]
    out = set()
    for a in addresses:
        i = bisect.bisect_right(starts, a) - 1
        if i >= 0:
            out.add(symbols[i][1])
    return out


def exec_fault_offsets(perf_script, maps_text, binary):
    """Offsets into `binary` of the instruction fetches that faulted: the lines of
    `perf script -F ip,addr` whose two addresses are equal, within the binary's mappings
    (`/proc/PID/maps`; its mapping at file offset 0 is its base). Pure."""
    mappings, base = [], None
    for line in maps_text.splitlines():
        f = line.split()
        if len(f) >= 6 and f[5] == binary:
            lo, hi = (int(x, 16) for x in f[0].split("-"))
            mappings.append((lo, hi))
            if int(f[2], 16) == 0:
                base = lo
    out = []
    for line in perf_script.splitlines():
        f = line.split()
        if base is None or len(f) != 2 or f[0] != f[1]:
            continue
        a = int(f[0], 16)
        if any(lo <= a < hi for lo, hi in mappings):
            out.append(a - base)
    return out


def start_idle_node(binary, procs, home, instances, runner=()):
    """A node of `binary` (run by `runner`) with `instances` instances running."""
    node = Hedge(binary, procs, home)
    node.init("--id", "hot-code")
    with daemons_run_by(runner, binary):
        node.start()
    for i in range(instances):
        node.cli("request", f"s{i}", "--software", "exec:/bin/sleep", "--arg", "100000")
    wait(f"{instances} instances running", lambda: node.running() == instances, 300, 0.5)
    return node


def faulting_functions(binary, procs, home, instances, settle_s, window_s):
    """Runs `binary`'s node natively in `home`; after `settle_s` of idle, the functions
    whose code faulted during `window_s` more."""
    tmp = os.path.dirname(home)
    node = start_idle_node(binary, procs, home, instances)
    time.sleep(settle_s)
    pid = str(node.daemon.pid)
    data = os.path.join(tmp, os.path.basename(home) + ".perf")
    log(f"perf: page faults of an idle node for {window_s} s")
    subprocess.run(["perf", "record", "-q", "-e", "page-faults", "-c", "1", "-d", "-o", data,
                    "-p", pid, "--", "sleep", str(window_s)], check=True, capture_output=True)
    with open(f"/proc/{pid}/maps") as f:
        maps = f.read()
    procs.stop(node.daemon)
    script = subprocess.run(["perf", "script", "-i", data, "-F", "ip,addr"],
                            capture_output=True, text=True, check=True).stdout
    return symbolize(exec_fault_offsets(script, maps, os.path.realpath(binary)),
                     text_symbols(binary))


def profile_idle_node(binary, procs, tmp, instances, settle_s, window_s):
    """Runs `binary`'s node under callgrind with `instances` instances; after `settle_s`
    of idle, the functions that ran during `window_s` more: {symbol: cost}."""
    out = os.path.join(tmp, "callgrind.out")
    runner = ("valgrind", "--tool=callgrind", "--demangle=no", f"--callgrind-out-file={out}")
    node = start_idle_node(binary, procs, os.path.join(tmp, "node"), instances, runner)
    time.sleep(settle_s)
    pid = str(node.daemon.pid)
    subprocess.run(["callgrind_control", "-z", pid], check=True, capture_output=True)
    log(f"callgrind: counting {window_s} s of an idle node")
    time.sleep(window_s)
    subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)
    procs.stop(node.daemon)  # callgrind writes its final dump, `out`, at exit
    with open(out + ".1") as window, open(out) as final:
        return callgrind_functions(window.read(), os.path.basename(binary), [final.read()])
