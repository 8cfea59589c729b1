"""Task latency and throughput through real daemons (the tasks issue's figures).

Real meshd homes on this machine, each with its own tmux server; two of them linked with
``local:`` peers (the same protocol as an SSH link, without SSH). The agents are REPL panes
(tests/fixtures/rawreader.py: raw mode, bracketed paste on, every byte it reads appended to a
log): tool ``other``, whose screen the classifier calls ``unknown``, which may bid (only agent
CLIs must look idle); each has an ``@agent-role`` so that a task reaches only the pane meant.
Defaults for every ``[tasks]`` setting (bid window 0.5 s, closed early once every reachable
host bid). Prints:

* (a) time from starting ``mesh task add TEXT --role R`` (the CLI, as a user runs it) until the
  task text has reached the winning pane's program (its log; polled every 0.5 ms), p50/p95:
  - local: one meshd, not linked;
  - linked home, winner local: the home also waits for the other host's bid;
  - cross-host: added on host A, the only eligible idle agent is on host B;
  after each, the task is reported done and the next starts once both boards show it
  COMPLETED (the agent is free again). Baselines from the same run: ``notify-pane`` into the
  same pane (command start to text in the app), and ``mesh task show`` (CLI start + one op);
* (b) tasks per second one home accepts (``task_add`` over the Unix socket, 1 and 4 client
  threads; the tasks are for a role no agent has, so the home offers them for bids meanwhile,
  and they are cancelled after), and full add -> assign -> deliver -> done cycles per second
  (1 and 4 socket clients, 4 agent panes), next to the ``ping`` op rate on the same socket.

usage: python bench/tasks.py [--n 40] [--accept 300] [--cycle-s 8]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchstats import pct

from meshd.transport import client

ROOT = Path(__file__).resolve().parent.parent
READER = ROOT / "tests" / "fixtures" / "rawreader.py"
BIN = Path(sys.executable).parent


@dataclass
class Home:
    """One meshd home: its environment, socket, tmux server and reader panes (name -> log)."""

    name: str
    env: dict[str, str]
    logs: dict[str, Path]
    panes: dict[str, str]

    @property
    def sock(self) -> Path:
        return Path(self.env["MESHD_HOME"]) / "meshd" / "meshd.sock"

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-S", self.env["MESHD_TMUX_SOCKET"], "-f", "/dev/null", *args],
                              capture_output=True, text=True, check=True).stdout

    def call(self, op: str, args: dict[str, Any] | None = None) -> Any:
        return client.call(self.sock, op, {"sender": "bench", **(args or {})})

    def mesh(self, *argv: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen([str(BIN / "mesh"), *argv], env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def start_home(root: Path, name: str, peers: list[str], readers: dict[str, str]) -> Home:
    """A home with a shell window (a person's: never bids) and one rawreader window per
    ``readers`` entry (window name -> @agent-role), then ``mesh up``."""
    h = root / name
    (h / ".agents").mkdir(parents=True)
    if peers:
        (h / ".agents" / "peers.conf").write_text("".join(f"local:{root / p / '.agents'}\n"
                                                         for p in peers))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MESHD_", "TMUX"))}
    env.update(HOME=str(h), MESHD_HOME=str(h / ".agents"), MESHD_HOST=name,
               MESHD_TMUX_SOCKET=str(h / "tmux.sock"), MESHD_LINKS_ANTI_ENTROPY_S="1")
    home = Home(name, env, {}, {})
    home.tmux("new-session", "-d", "-s", "main", "-n", "shell", "-x", "160", "-y", "40",
              "bash --norc --noprofile")
    for window, role in readers.items():
        log = h / f"{window}.log"
        log.touch()
        pane = home.tmux("new-window", "-t", "main:", "-n", window, "-P", "-F", "#{pane_id}",
                         f"{sys.executable} {READER} {log}").strip()
        home.tmux("set-option", "-w", "-t", pane, "@agent-role", role)
        home.logs[window], home.panes[window] = log, pane
    subprocess.run([str(BIN / "mesh"), "up"], env=env, check=True, stdout=subprocess.DEVNULL)
    return home


def until(pred: Callable[[], Any], timeout: float, what: str, every: float = 0.002) -> Any:
    deadline = time.monotonic() + timeout
    while not (got := pred()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not reached in {timeout} s")
        time.sleep(every)
    return got


def wait_bytes(log: Path, needle: bytes, timeout: float = 20) -> float:
    """The monotonic time at which ``needle`` was first seen in ``log`` (0.5 ms polls)."""
    return float(until(lambda: needle in log.read_bytes() and time.monotonic(), timeout,
                       f"{needle!r} in {log.name}", 0.0005))


def finish(tid: str, homes: list[Home]) -> None:
    """Report the task done (from a plain caller) and wait until every board shows it."""
    homes[0].call("task_done", {"id": tid})
    for h in homes:
        until(completed(h, tid), 20, f"{tid} completed on {h.name}")


def completed(home: Home, tid: str) -> Callable[[], bool]:
    return lambda: bool(home.call("task_show", {"id": tid})["state"] == "completed")


def add_latency(home: Home, log: Path, role: str, n: int, done_on: list[Home]) -> list[float]:
    """(a): ``mesh task add`` start -> text in the winning pane, n times."""
    out = []
    for i in range(n):
        needle = f"bench-{role}-{i}-{time.monotonic_ns()}"
        t0 = time.monotonic()
        p = home.mesh("task", "add", needle, "--role", role)
        out.append((wait_bytes(log, needle.encode()) - t0) * 1000)
        stdout, stderr = p.communicate(timeout=30)
        if p.returncode != 0:
            raise RuntimeError(stderr.decode())
        finish(stdout.decode().strip(), done_on)
    return out


def notify_latency(home: Home, address: str, log: Path, n: int) -> list[float]:
    out = []
    for i in range(n):
        needle = f"notify-{i}-{time.monotonic_ns()}"
        t0 = time.monotonic()
        p = subprocess.Popen([str(BIN / "notify-pane"), address, needle], env=home.env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out.append((wait_bytes(log, needle.encode()) - t0) * 1000)
        p.wait()
    return out


def cli_latency(home: Home, argv: list[str], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.monotonic()
        p = home.mesh(*argv)
        p.communicate(timeout=30)
        out.append((time.monotonic() - t0) * 1000)
    return out


def in_threads(k: int, work: Callable[[int], int]) -> tuple[int, float]:
    """Run ``work(i)`` in ``k`` threads; (sum of what they return, seconds)."""
    counts = [0] * k
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            counts[i] = work(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(k)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return sum(counts), time.perf_counter() - t0


def accept_rate(home: Home, total: int, k: int) -> float:
    """(b): tasks/s the home accepts from ``k`` socket clients; the tasks are cancelled after."""
    ids: list[str] = []

    def work(i: int) -> int:
        for j in range(total // k):
            ids.append(home.call("task_add", {"text": f"accept {k}/{i}/{j}", "role": "nobody"})["id"])
        return total // k

    count, secs = in_threads(k, work)
    for tid in ids:
        home.call("task_cancel", {"id": tid})
    return count / secs


def cycle_rate(home: Home, role: str, windows: list[str], clients: int,
               seconds: float) -> tuple[float, int]:
    """(b): add -> assigned and delivered -> done cycles per second; ``windows`` are the panes
    with ``role``, each client adds one task at a time."""
    logs = [home.logs[w] for w in windows]
    stop = time.monotonic() + seconds

    def work(i: int) -> int:
        done = 0
        while time.monotonic() < stop:
            needle = f"cycle-{i}-{done}-{time.monotonic_ns()}".encode()
            tid = home.call("task_add", {"text": needle.decode(), "role": role})["id"]
            until(seen_in(logs, needle), 30, f"{tid} delivered")
            home.call("task_done", {"id": tid})
            done += 1
        return done

    count, secs = in_threads(clients, work)
    return count / secs, count


def seen_in(logs: list[Path], needle: bytes) -> Callable[[], bool]:
    return lambda: any(needle in log.read_bytes() for log in logs)


def ping_rate(home: Home, seconds: float = 2.0) -> float:
    t0, count = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        home.call("ping")
        count += 1
    return count / (time.perf_counter() - t0)


def agents_seen(home: Home, addresses: set[str]) -> bool:
    return addresses <= {x["address"] for x in home.call("agents")}


def line(label: str, xs: list[float]) -> None:
    print(f"  {label:<52} p50 {statistics.median(xs):7.1f} ms   p95 {pct(xs, 95):7.1f} ms")


def machine() -> str:
    tmux = subprocess.run(["tmux", "-V"], capture_output=True, text=True).stdout.strip()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{os.cpu_count()} cores, {platform.system()} {platform.release()}, {tmux}, "
            f"Python {platform.python_version()}, load {load}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=40, help="runs per latency figure")
    ap.add_argument("--accept", type=int, default=300, help="tasks per accept-rate run")
    ap.add_argument("--cycle-s", type=float, default=8.0, help="seconds per cycle-rate run")
    args = ap.parse_args()
    # As pip would have: byte-compiled modules, so CLI start-up is not measured compiling.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "src")], check=True,
                   env={k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"})
    root = Path(tempfile.mkdtemp(prefix="meshd-taskbench-"))
    homes: list[Home] = []
    try:
        print(f"machine: {machine()}")
        solo = start_home(root, "solo", [], {f"w{i}": "cycle" for i in range(4)} | {"r": "solo"})
        homes.append(solo)
        alpha = start_home(root, "alpha", ["beta"], {"r": "near"})
        homes.append(alpha)
        beta = start_home(root, "beta", ["alpha"], {"r": "far"})
        homes.append(beta)
        until(lambda: agents_seen(solo, {"solo-main-r", "solo-main-w3"}), 20, "solo's agents", 0.05)
        until(lambda: agents_seen(alpha, {"alpha-main-r", "beta-main-r"}), 20, "link up", 0.05)
        until(lambda: agents_seen(beta, {"alpha-main-r", "beta-main-r"}), 20, "link up", 0.05)
        n = args.n
        local = add_latency(solo, solo.logs["r"], "solo", n, [solo])
        near = add_latency(alpha, alpha.logs["r"], "near", n, [alpha, beta])
        far = add_latency(alpha, beta.logs["r"], "far", n, [alpha, beta])
        notify = notify_latency(solo, "solo-main-r", solo.logs["r"], n)
        some = solo.call("task_list", {})[0]["id"]
        show = cli_latency(solo, ["task", "show", some], n)
        print(f"(a) `mesh task add TEXT` -> text in the winning pane, n={n} (ms)")
        line("local: one meshd", local)
        line("linked home, winner on the home (waits for B's bid)", near)
        line("cross-host: added on A, the only eligible agent on B", far)
        line("baseline: notify-pane into the same pane (local)", notify)
        line("baseline: `mesh task show ID` (CLI start + one op)", show)
        print("(b) throughput through one home (solo)")
        print(f"  {'baseline: ping op, 1 client':<52} {ping_rate(solo):7.0f} /s")
        for k in (1, 4):
            rate = accept_rate(solo, args.accept, k)
            print(f"  {f'tasks accepted (task_add), {k} client(s)':<52} {rate:7.0f} /s"
                  f"   ({args.accept} tasks)")
        cyclers = [f"w{i}" for i in range(4)]
        for k in (1, 4):
            rate, count = cycle_rate(solo, "cycle", cyclers, k, args.cycle_s)
            print(f"  {f'add->deliver->done cycles, {k} client(s), 4 agents':<52} "
                  f"{rate:7.1f} /s   ({count} in {args.cycle_s:g} s)")
        status = solo.call("status")
        print(f"  solo's journal after the run: {status['journal_events']} events; "
              f"load now {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        for h in homes:
            subprocess.run([str(BIN / "mesh"), "down"], env=h.env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            subprocess.run(["tmux", "-S", h.env["MESHD_TMUX_SOCKET"], "kill-server"],
                           stderr=subprocess.DEVNULL)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
