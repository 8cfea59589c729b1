"""Cross-host figures on the network-namespace lab (needs root; see docs/lab.md).

Prints, each against a baseline measured in the same run:

* cross-host ``notify-pane`` latency: command start on host a until the text reaches an
  idle REPL pane (the rawreader fixture) on host c, p50/p95 -- baseline: one plain
  ``ssh c tmux load-buffer + paste-buffer`` per message, as a per-message SSH tool does;
* cross-host ``notify-pane --file`` latency (SFTP copy + delivery), p50/p95;
* registry convergence: a new tmux window on one host until every host lists it, p50/p95,
  for 3 hosts and for 10 hosts;
* catch-up after a partition: host c takes 10,000 events while cut off (written into its
  journal with its daemon stopped), then rejoins; time until host a holds all of them,
  and the replication throughput that implies.

usage: sudo python bench/mesh_lab.py [-n 40] [--big 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from benchstats import pct  # noqa: E402
from lab import Host, Lab, need_lab  # noqa: E402

READER = ROOT / "tests" / "fixtures" / "rawreader.py"
ENV = {"MESHD_LINKS_REMOTE_COMMAND": "meshd link", "MESHD_LINKS_ANTI_ENTROPY_S": "1",
       "MESHD_LINKS_BACKOFF_MAX_S": "1", "MESHD_DISCOVERY_DEBOUNCE_MS": "5"}



def line(label: str, xs: list[float], unit: str = "ms") -> None:
    print(f"  {label:<44} p50 {statistics.median(xs):8.1f} {unit}   p95 {pct(xs, 95):8.1f} {unit}")


def arrival(log: Path, needle: bytes, timeout: float = 20) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in log.read_bytes():
            return time.monotonic()
        time.sleep(0.001)
    raise RuntimeError(f"{needle!r} never arrived")


def until(pred, timeout: float = 30) -> float:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return time.monotonic()
        time.sleep(0.005)
    raise RuntimeError("condition never met")


def listed(h: Host, addr: str) -> bool:
    """Is ``addr`` in the host's registry.toml?  Read directly (we are root): a cheap poll."""
    try:
        return f'[agents.{addr}]' in (h.agents_dir / "registry.toml").read_text()
    except OSError:
        return False


def start(lab: Lab) -> None:
    for h in lab:
        h.new_window("shell", "bash --norc")
        h.start_meshd()
    for h in lab:
        until(lambda h=h: all(listed(h, f"{o.name}-main-shell") for o in lab), 60)


def delivery(lab: Lab, n: int) -> None:
    a, c = lab["a"], lab["c"]
    log = c.home / "r.log"
    c.run(["touch", str(log)], check=True)
    pane = c.new_window("reader", f"{lab.python} {READER} {log}")
    c.mesh("resync")
    until(lambda: listed(a, "c-main-reader"))
    time.sleep(1)
    notify, base, files = [], [], []
    sock = c.tmux_socket
    for i in range(n):
        needle = f"x-{i}-{time.monotonic_ns()}"
        t0 = time.monotonic()
        p = a.popen([lab.python, "-m", "meshd.cli.notify", "c-main-reader", needle])
        notify.append((arrival(log, needle.encode()) - t0) * 1000)
        p.wait()
        needle = f"b-{i}-{time.monotonic_ns()}"
        tm = f"tmux -S {sock}"
        cmd = (f"printf %s {needle} | {tm} load-buffer -b bb - && "
               f"{tm} paste-buffer -p -d -b bb -t {pane} && {tm} send-keys -t {pane} Enter")
        t0 = time.monotonic()
        p = a.popen(["ssh", "c", cmd])
        base.append((arrival(log, needle.encode()) - t0) * 1000)
        p.wait()
    f = a.home / "attach.txt"
    a.run(["sh", "-c", f"head -c 20000 /dev/urandom | base64 > {f}"], check=True)
    for i in range(max(10, n // 3)):
        needle = f"f-{i}-{time.monotonic_ns()}"
        t0 = time.monotonic()
        p = a.popen([lab.python, "-m", "meshd.cli.notify", "c-main-reader", "--file", str(f), needle])
        files.append((arrival(log, needle.encode()) - t0) * 1000)
        p.wait()
    print(f"cross-host delivery a -> c, n={n} (command start -> text in the app on c)")
    line("notify-pane via the meshd links", notify)
    line("baseline: one ssh login + tmux per message", base)
    print(f"  {'ratio (p50)':<44} {statistics.median(notify) / statistics.median(base):8.2f}x")
    line("notify-pane --file (20 KB, SFTP + delivery)", files)


def convergence(lab: Lab, rounds: int, label: str) -> None:
    xs = []
    hosts = list(lab)
    for i in range(rounds):
        src = hosts[i % len(hosts)]
        name = f"conv{i}"
        t0 = time.monotonic()
        src.new_window(name, "bash --norc")
        src.mesh("hook", "on", "$0")
        addr = f"{src.name}-main-{name}"
        t_all = until(lambda addr=addr: all(listed(h, addr) for h in hosts))
        xs.append((t_all - t0) * 1000)
    line(f"new window listed on every host ({label})", xs)


def catch_up(lab: Lab, count: int) -> None:
    a, c = lab["a"], lab["c"]
    c.stop_meshd()
    code = ("import time; from pathlib import Path; from meshd.journal.store import Journal\n"
            f"j = Journal(Path({str(c.agents_dir / 'meshd' / 'journal.db')!r}), "
            f"Path({str(c.agents_dir / 'meshd' / 'audit.jsonl')!r}), 'c')\n"
            f"j.append_many([('bench.noise', {{'i': i}}) for i in range({count})], time.time())\n")
    c.run([lab.python, "-c", code], check=True, timeout=120)
    def have() -> int:
        r = a.mesh("log", "--json", "-n", "1", "--kind", "bench.noise")
        items = __import__("json").loads(r.stdout or "[]")
        return int(items[-1]["body"]["i"]) + 1 if items else 0
    t0 = time.monotonic()
    c.start_meshd()
    until(lambda: have() >= count, 120)
    took = time.monotonic() - t0
    print(f"catch-up after a partition: {count} events behind")
    print(f"  {'rejoin -> all events on a':<44} {took:8.2f} s   ({count / took:,.0f} events/s)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=40)
    ap.add_argument("--big", type=int, default=10)
    args = ap.parse_args()
    need_lab()
    with Lab(3, env=ENV) as lab:
        start(lab)
        delivery(lab, args.n)
        print("registry convergence")
        convergence(lab, 20, "3 hosts")
        catch_up(lab, 10_000)
    with Lab(args.big, env=ENV) as lab:
        start(lab)
        convergence(lab, 20, f"{args.big} hosts")


if __name__ == "__main__":
    main()
