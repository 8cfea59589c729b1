"""Lock latency and throughput through real daemons (issue 5's figures).

Two meshd homes on this machine linked with ``local:`` peers (the same protocol as an
SSH link, without SSH; bench/mesh_lab.py-style namespaces add only the SSH hop).  Prints:

* acquire and release latency on the home, over the Unix socket (p50/p99);
* the same from the other host, forwarded over the link (p50/p99);
* acquire+release pairs per second through one home (sequential client);
* deadlock detection: time for the request that closes a 2-cycle to be refused, on one
  home, and across the two homes (the closing request sent after the first one waits, and
  both sent at the same instant, which only the mesh-wide pass can see).

Baseline in the same run: the ``ping`` op over the same socket (the cost floor of one
request).  usage: python bench/locks.py [-n 300]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchstats import pct

from meshd.errors import MeshError
from meshd.transport import client


def line(label: str, xs: list[float]) -> None:
    print(f"  {label:<40} p50 {statistics.median(xs):7.2f} ms   p99 {pct(xs, 99):7.2f} ms")


def home(root: Path, name: str, peer: Path | None) -> tuple[Path, dict[str, str]]:
    h = root / name
    agents = h / ".agents"
    agents.mkdir(parents=True)
    if peer:
        (agents / "peers.conf").write_text(f"local:{peer}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MESHD_", "TMUX"))}
    env.update(HOME=str(h), MESHD_HOME=str(agents), MESHD_HOST=name,
               MESHD_TMUX_SOCKET=str(h / "tmux.sock"), MESHD_LINKS_ANTI_ENTROPY_S="1")
    subprocess.run([sys.executable, "-m", "meshd.cli.mesh_entry", "up"], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return agents / "meshd" / "meshd.sock", env


def timed(sock: Path, op: str, args: dict[str, object]) -> float:
    t0 = time.perf_counter()
    client.call(sock, op, args)
    return (time.perf_counter() - t0) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=300)
    n = ap.parse_args().n
    root = Path(tempfile.mkdtemp(prefix="meshd-lockbench-"))
    envs = []
    try:
        sock_a, env_a = home(root, "alpha", root / "beta" / ".agents")
        envs.append(env_a)
        sock_b, env_b = home(root, "beta", root / "alpha" / ".agents")
        envs.append(env_b)
        deadline = time.monotonic() + 15
        while not any(p["up"] for p in client.call(sock_b, "peers")):
            assert time.monotonic() < deadline, "link did not come up"
            time.sleep(0.1)
        holder = {"holder": "bench-holder"}
        ping = [timed(sock_a, "ping", {}) for _ in range(n)]
        acq, rel, racq, rrel = [], [], [], []
        for i in range(n):
            t = {"target": f"/bench/file{i}", "mode": "write", **holder}
            acq.append(timed(sock_a, "lock_acquire", t))
            rel.append(timed(sock_a, "lock_release", t))
            r = {"target": f"alpha:/bench/remote{i}", "mode": "write", **holder}
            racq.append(timed(sock_b, "lock_acquire", r))
            rrel.append(timed(sock_b, "lock_release", r))
        t0 = time.perf_counter()
        pairs = 0
        while time.perf_counter() - t0 < 3:
            t = {"target": "/bench/hot", "mode": "write", **holder}
            client.call(sock_a, "lock_acquire", t)
            client.call(sock_a, "lock_release", t)
            pairs += 1
        rate = pairs / (time.perf_counter() - t0)
        client.call(sock_a, "lock_acquire", {"target": "/bench/x", "holder": "h1"})
        client.call(sock_a, "lock_acquire", {"target": "/bench/y", "holder": "h2"})
        waiter = threading.Thread(target=lambda: _swallow(sock_a, {"target": "/bench/y", "holder": "h1",
                                                                    "wait_s": 10}))
        waiter.start()
        time.sleep(0.3)
        t0 = time.perf_counter()
        try:
            client.call(sock_a, "lock_acquire", {"target": "/bench/x", "holder": "h2", "wait_s": 10})
            refused = "granted (no deadlock seen!)"
        except MeshError as exc:
            refused = exc.message.splitlines()[0]
        detect_ms = (time.perf_counter() - t0) * 1000
        client.call(sock_a, "lock_release", {"target": "/bench/y", "holder": "h2"})
        waiter.join()
        print(f"locks through meshd, n={n}")
        line("baseline: ping op on the same socket", ping)
        line("acquire on the home", acq)
        line("release on the home", rel)
        line("acquire from another host (forwarded)", racq)
        line("release from another host (forwarded)", rrel)
        print(f"  {'acquire+release pairs per second':<40} {rate:7.0f} /s (one sequential client)")
        print(f"  {'deadlock (2-cycle) refused after':<40} {detect_ms:7.2f} ms: {refused}")
        for race in (False, True):
            xs = [cross_home_deadlock(sock_a, sock_b, i, race=race) for i in range(10)]
            label = "both at once" if race else "second after 0.3 s"
            print(f"  {'cross-home 2-cycle, ' + label:<40} p50 {statistics.median(xs):7.2f} ms   "
                  f"max {max(xs):7.2f} ms (n=10)")
    finally:
        for env in envs:
            subprocess.run([sys.executable, "-m", "meshd.cli.mesh_entry", "down"], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(root, ignore_errors=True)


def cross_home_deadlock(sock_a: Path, sock_b: Path, i: int, *, race: bool) -> float:
    """X holds alpha:/x, Y holds beta:/y; X asks for beta:/y, Y for alpha:/x (from their own
    hosts).  Milliseconds from the closing request (the later one, or both) to the first
    refusal."""
    x, y = f"alpha:/bench/dx{i}", f"beta:/bench/dy{i}"
    client.call(sock_a, "lock_acquire", {"target": x, "holder": f"X{i}"})
    client.call(sock_b, "lock_acquire", {"target": y, "holder": f"Y{i}"})
    refused: list[float] = []

    def ask(sock: Path, target: str, holder: str) -> None:
        try:
            client.call(sock, "lock_acquire", {"target": target, "holder": holder, "wait_s": 10})
        except MeshError as exc:
            if "deadlock" in exc.message:
                refused.append(time.perf_counter())
    tx = threading.Thread(target=ask, args=(sock_a, y, f"X{i}"))
    ty = threading.Thread(target=ask, args=(sock_b, x, f"Y{i}"))
    tx.start()
    if not race:
        time.sleep(0.3)
    t0 = time.perf_counter()
    ty.start()
    deadline = time.monotonic() + 10
    while not refused and time.monotonic() < deadline:
        time.sleep(0.001)
    ms = (refused[0] - t0) * 1000 if refused else float("inf")
    for sock, target, holder in ((sock_a, x, f"X{i}"), (sock_b, y, f"Y{i}")):
        with contextlib.suppress(MeshError):
            client.call(sock, "lock_release", {"target": target, "holder": holder})
    tx.join()
    ty.join()
    for sock, target, holder in ((sock_a, y, f"X{i}"), (sock_b, x, f"Y{i}")):
        with contextlib.suppress(MeshError):
            client.call(sock, "lock_release", {"target": target, "holder": holder})
    return ms


def _swallow(sock: Path, args: dict[str, object]) -> None:
    with contextlib.suppress(MeshError):
        client.call(sock, "lock_acquire", args)


if __name__ == "__main__":
    main()
