"""A hedge node for the bench: built, initialised, configured as TOML, driven by its CLI.

`Hedge` is one node in its own directory; its daemon is spawned through `Procs`, so the
run stops it whatever happens. `configure` edits node.toml as data (tomlw.edit), never as
text.
"""
import contextlib
import json
import os
import shutil
import subprocess
import tomllib

import tomlw
from harness import Failed, log, wait

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build(binary):
    """`binary` as an absolute path, or the release binary built from this checkout."""
    if binary:
        return os.path.abspath(binary)
    log("cargo build --release --locked -p hedge (waits on other builds' cargo lock)")
    subprocess.run(["cargo", "build", "--release", "--locked", "-q", "-p", "hedge"],
                   cwd=ROOT, check=True, timeout=1800)
    return os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")),
                        "release", "hedge")


class Hedge:
    """A hedge node in `home`, driven through the CLI."""

    # What runs the daemon when it is not the CLI's binary: a command prefix and another
    # build (see `daemons_run_by`). The CLI always runs natively.
    runner = ()
    daemon_binary = None

    def __init__(self, binary, procs, home):
        self.b, self.procs, self.home = binary, procs, home
        self.cfg = os.path.join(home, "node.toml")
        self.daemon = None

    def init(self, *args):
        subprocess.run([self.b, "node", "init", "--dir", self.home, *args], check=True,
                       stdout=subprocess.DEVNULL, timeout=30)

    def config(self):
        """node.toml as data."""
        with open(self.cfg, "rb") as f:
            return tomllib.load(f)

    def configure(self, changes):
        """Set {table: {key: value}} in node.toml; returns the whole config."""
        return tomlw.edit(self.cfg, changes)

    def cli(self, *args, check=True):
        r = subprocess.run([self.b, "node", *args, "--config", self.cfg],
                           capture_output=True, text=True, timeout=30)
        if check and r.returncode != 0:
            raise Failed(f"hedge node {' '.join(args)}: {r.stderr.strip()}")
        return r

    def status(self, required=False):
        """`hedge node status --json`, or None while the API does not answer (Failed
        instead when `required`)."""
        r = self.cli("status", "--json", check=required)
        return json.loads(r.stdout) if r.returncode == 0 else None

    def spawn(self):
        """`hedge node run`, without waiting for its API."""
        cmd = [*self.runner, self.daemon_binary or self.b, "node", "run", "--config", self.cfg]
        self.daemon = self.procs.spawn("node", cmd,
                                       log_name=f"node-{os.path.basename(self.home)}.log")
        return self.daemon

    def start(self):
        """`hedge node run`, once its API answers."""
        self.spawn()
        wait("the node's API", lambda: self.daemon.poll() is not None or self.status(), 30, 0.01)
        if self.daemon.poll() is not None:
            raise Failed(f"hedge node run exited {self.daemon.returncode}")
        return self.daemon

    def running(self):
        """How many instances the node reports running (0 while its API is down)."""
        s = self.status()
        return sum(1 for i in s["instances"] if i["state"] == "running") if s else 0


@contextlib.contextmanager
def daemons_run_by(runner, binary):
    """Within it, every node daemon the bench spawns is `binary` run by `runner` (e.g. the
    aarch64 node-only build under qemu-user); the nodes' CLI stays the native build."""
    Hedge.runner, Hedge.daemon_binary = tuple(runner), binary
    try:
        yield
    finally:
        Hedge.runner, Hedge.daemon_binary = (), None


def emulated(target, qemu_name):
    """(binary, qemu, None) for cross/out/<target>/hedge-node (cross/build) run by
    `qemu_name`, or (None, None, why) when one of them is missing."""
    b = os.path.join(ROOT, "cross", "out", target, "hedge-node")
    qemu = shutil.which(qemu_name)
    if not qemu:
        return None, None, f"no {qemu_name} (cross/setup installs qemu-user)"
    if not os.path.isfile(b):
        return None, None, f"no {b} (cross/build)"
    return b, qemu, None
