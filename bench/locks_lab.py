"""Lock latency across hosts over real SSH, on the network-namespace lab (needs root).

Three lab hosts (tests/lab.py): every host its own namespace, user, sshd and meshd, linked
over real SSH.  A client on host b times, over its own meshd's Unix socket (no CLI start-up):

* acquire and release of a WRITE lock homed on host a (``a:/bench/...``), forwarded over
  the b -> a link and decided on a, p50/p99, and the pair;
* the same on the home itself (a client on host a, a local target);
* baselines measured in the same run: the ``ping`` op on b's own socket (the floor of one
  request), a forwarded request that touches no store (``lock_check`` of a token never
  issued, on a: one round trip b -> a -> b through both meshds and SSH), and the link's own
  round trip as ``mesh peers`` reports it (ping/pong frames on the SSH channel).

usage: sudo python bench/locks_lab.py [-n 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from benchstats import pct  # noqa: E402
from lab import Host, Lab, need_lab  # noqa: E402

ENV = {"MESHD_LINKS_REMOTE_COMMAND": "meshd link", "MESHD_LINKS_ANTI_ENTROPY_S": "1",
       "MESHD_LINKS_BACKOFF_MAX_S": "1", "MESHD_DISCOVERY_DEBOUNCE_MS": "5"}

# Runs on a lab host as its user: times ops on that host's meshd socket, prints JSON.
CLIENT = r"""
import json, sys, time
from meshd.errors import MeshError
from meshd.paths import StatePaths
from meshd.transport import client
sock, prefix, n = StatePaths.from_env().socket, sys.argv[1], int(sys.argv[2])
def timed(op, args, ok=True):
    t0 = time.perf_counter()
    try:
        client.call(sock, op, args)
    except MeshError:
        if ok:
            raise
    return (time.perf_counter() - t0) * 1000
out = {"ping": [], "check": [], "acquire": [], "release": [], "pair": []}
for _ in range(20):                       # warm up: imports, link, SQLite pages
    timed("ping", {})
    timed("lock_check", {"target": prefix + "/bench/none", "token": 10**12}, ok=False)
for i in range(n):
    out["ping"].append(timed("ping", {}))
    out["check"].append(timed("lock_check", {"target": prefix + "/bench/none", "token": 10**12},
                              ok=False))
    t = {"target": f"{prefix}/bench/f{i}", "mode": "write", "holder": "bench-holder"}
    a = timed("lock_acquire", t)
    r = timed("lock_release", t)
    out["acquire"].append(a)
    out["release"].append(r)
    out["pair"].append(a + r)
print(json.dumps(out))
"""


def line(label: str, xs: list[float]) -> None:
    print(f"  {label:<56} p50 {statistics.median(xs):7.2f} ms   p99 {pct(xs, 99):7.2f} ms")


def client_run(h: Host, prefix: str, n: int) -> dict[str, list[float]]:
    r = h.python("-c", CLIENT, prefix, str(n), timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"{h.name}: client failed: {r.stderr}")
    return dict(json.loads(r.stdout))


def link_rtts(h: Host, peer: str, samples: int) -> list[float]:
    """The SSH link's own round trip (ping/pong frames), as `mesh peers` shows it."""
    out: list[float] = []
    while len(out) < samples:
        peers: list[dict[str, Any]] = json.loads(h.mesh("peers", "--json").stdout)
        rtt = next((p["rtt_ms"] for p in peers if p["host"] == peer), None)
        if rtt is not None:
            out.append(float(rtt))
        time.sleep(1.0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=200)
    n = ap.parse_args().n
    need_lab()
    with Lab(3, env=ENV) as lab:
        for h in lab:
            h.start_meshd()
        a, b = lab["a"], lab["b"]
        deadline = time.monotonic() + 30
        while not any(p["up"] and p["host"] == "a" for p in json.loads(b.mesh("peers", "--json").stdout)):
            if time.monotonic() > deadline:
                raise RuntimeError("b did not link with a")
            time.sleep(0.1)
        remote = client_run(b, "a:", n)
        home = client_run(a, "", n)
        rtt = link_rtts(b, "a", 5)
        print(f"locks over real SSH (namespace lab, 3 hosts), n={n}; client on b, home a")
        line("baseline: ping op on b's own socket", remote["ping"])
        line("baseline: forwarded lock_check b -> a (no store write)", remote["check"])
        print(f"  {'baseline: SSH link RTT b -> a (mesh peers, 5 samples)':<56} "
              f"p50 {statistics.median(rtt):7.2f} ms   max {max(rtt):7.2f} ms")
        line("acquire on the home (client on a)", home["acquire"])
        line("release on the home (client on a)", home["release"])
        line("acquire + release on the home", home["pair"])
        line("acquire from b, homed on a (over SSH)", remote["acquire"])
        line("release from b, homed on a (over SSH)", remote["release"])
        line("acquire + release from b, homed on a", remote["pair"])
        p99 = pct(remote["acquire"], 99)
        print(f"  remote acquire p99 {p99:.2f} ms: {'meets' if p99 <= 50 else 'MISSES'} the 50 ms bar")


if __name__ == "__main__":
    main()
