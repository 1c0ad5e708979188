"""What the bench compares hedge with, found or installed: supervisord in a
venv of its own, and Debian's mosquitto with its C clients (mosquitto-clients).

The venv lives in ~/.cache/hedge-bench/venv (HEDGE_BENCH_CACHE overrides the cache dir)
and is (re)installed only when PY_PACKAGES change, so a fresh machine needs nothing but
python3 -m venv and scripts/setup (which installs mosquitto).
"""
import os
import subprocess
import sys

from harness import Failed, log

PY_PACKAGES = ["supervisor==4.2.5"]


def venv():
    """The venv's python, with PY_PACKAGES installed."""
    cache = os.environ.get("HEDGE_BENCH_CACHE", os.path.expanduser("~/.cache/hedge-bench"))
    v = os.path.join(cache, "venv")
    py = os.path.join(v, "bin", "python")
    stamp = os.path.join(v, ".bench-packages")
    want = " ".join(PY_PACKAGES)
    if os.path.exists(stamp):
        with open(stamp) as f:
            if f.read() == want:
                return py
    log(f"installing {want} into {v}")
    os.makedirs(cache, exist_ok=True)
    if not os.path.exists(py):
        subprocess.run([sys.executable, "-m", "venv", v], check=True, timeout=300)
    subprocess.run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", *PY_PACKAGES],
                   check=True, timeout=600)
    with open(stamp, "w") as f:
        f.write(want)
    return py


def mosquitto_bin():
    for d in os.environ.get("PATH", "").split(":") + ["/usr/sbin", "/usr/local/sbin"]:
        p = os.path.join(d, "mosquitto")
        if d and os.path.isfile(p):
            return p
    raise Failed("mosquitto not found: run scripts/setup (apt-get install mosquitto)")


def mosquitto_version():
    r = subprocess.run([mosquitto_bin(), "-h"], capture_output=True, text=True, timeout=10)
    first = (r.stdout or r.stderr).splitlines()[0]
    return first.replace("mosquitto version ", "")
