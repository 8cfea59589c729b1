"""Local delivery latency and CLI start-up time.

Prints, for N sends to an idle REPL pane (the rawreader fixture: raw mode,
bracketed paste on, logs every byte), the time from starting ``notify-pane``
until the text has reached the application, as p50/p95, next to a baseline
measured in the same run: a bare shell delivery with no checks at all
(``tmux load-buffer`` + ``paste-buffer`` + ``send-keys Enter`` from bash,
roughly what agent-mesh's notify-pane does).  Also the start-up time of
``notify-pane --help``, ``mesh --help`` and ``python -c pass``, and whether
notify-pane's import path stays free of asyncssh, libtmux and aiohttp.

usage: python bench/local_delivery.py [-n 60]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchstats import pct

ROOT = Path(__file__).resolve().parent.parent
READER = ROOT / "tests" / "fixtures" / "rawreader.py"
BIN = Path(sys.executable).parent



def wait_bytes(log: Path, needle: bytes, timeout: float = 10) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in log.read_bytes():
            return time.monotonic()
        time.sleep(0.0005)
    raise RuntimeError(f"{needle!r} never arrived")


def timed(argv: list[str], env: dict[str, str], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.monotonic()
        subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       check=True)
        out.append((time.monotonic() - t0) * 1000)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=60)
    n = ap.parse_args().n
    # Installed packages are byte-compiled (pip does it); make the checkout match, even
    # where PYTHONDONTWRITEBYTECODE is set, so start-up is not measured with compilation.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "src")], check=True,
                   env={k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"})
    tmp = Path(tempfile.mkdtemp(prefix="meshd-bench-"))
    sock = tmp / "tmux.sock"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TMUX", "MESHD_"))}
    env.update(HOME=str(tmp), MESHD_HOME=str(tmp / ".agents"), MESHD_TMUX_SOCKET=str(sock),
               MESHD_HOST="bench")
    tmux = ["tmux", "-S", str(sock)]
    log = tmp / "reader.log"
    log.touch()
    subprocess.run([*tmux, "new-session", "-d", "-s", "b", "-n", "repl", "-x", "160", "-y", "40",
                    f"{sys.executable} {READER} {log}"], check=True)
    pane = subprocess.run([*tmux, "list-panes", "-t", "b", "-F", "#{pane_id}"],
                          capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run([str(BIN / "mesh"), "up"], env=env, check=True, stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        meshd = []
        for i in range(n):
            needle = f"bench-{i}-{time.monotonic_ns()}"
            t0 = time.monotonic()
            p = subprocess.Popen([str(BIN / "notify-pane"), "bench-b-repl", needle], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            meshd.append((wait_bytes(log, needle.encode()) - t0) * 1000)
            if p.wait() != 0:
                raise RuntimeError(p.stderr.read().decode() if p.stderr else "send failed")
        script = (f'printf %s "$1" | {" ".join(tmux)} load-buffer -b bb - && '
                  f'{" ".join(tmux)} paste-buffer -p -d -b bb -t {pane} && '
                  f'{" ".join(tmux)} send-keys -t {pane} Enter')
        base = []
        for i in range(n):
            needle = f"base-{i}-{time.monotonic_ns()}"
            t0 = time.monotonic()
            p = subprocess.Popen(["bash", "-c", script, "x", needle])
            base.append((wait_bytes(log, needle.encode()) - t0) * 1000)
            p.wait()
        print(f"local delivery to an idle REPL pane, n={n} (ms, command start -> text in the app)")
        print(f"  notify-pane via meshd   p50 {statistics.median(meshd):6.1f}   p95 {pct(meshd, 95):6.1f}")
        print(f"  bare bash+tmux baseline p50 {statistics.median(base):6.1f}   p95 {pct(base, 95):6.1f}")
        print(f"  ratio (p50)             {statistics.median(meshd) / statistics.median(base):6.2f}x")
        subprocess.run([str(BIN / "mesh"), "down"], env=env, stdout=subprocess.DEVNULL)
        degraded = []
        for i in range(max(10, n // 3)):
            needle = f"deg-{i}-{time.monotonic_ns()}"
            t0 = time.monotonic()
            p = subprocess.Popen([str(BIN / "notify-pane"), "bench-b-repl", needle], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            degraded.append((wait_bytes(log, needle.encode()) - t0) * 1000)
            p.wait()
        print(f"  notify-pane, daemon down p50 {statistics.median(degraded):6.1f}   "
              f"p95 {pct(degraded, 95):6.1f}")
        print("start-up (ms)")
        for label, argv in (("python -c pass", [sys.executable, "-c", "pass"]),
                            ("notify-pane --help", [str(BIN / "notify-pane"), "--help"]),
                            ("mesh --help", [str(BIN / "mesh"), "--help"])):
            xs = timed(argv, env, 30)
            print(f"  {label:<20} p50 {statistics.median(xs):6.1f}   p95 {pct(xs, 95):6.1f}")
        heavy = subprocess.run(
            [sys.executable, "-c", "import sys, meshd.cli.notify; print(sorted(m for m in "
             "('asyncssh', 'libtmux', 'aiohttp', 'psutil', 'click') if m in sys.modules))"],
            capture_output=True, text=True, check=True).stdout.strip()
        print(f"  heavy modules imported by notify-pane: {heavy}")
    finally:
        subprocess.run([str(BIN / "mesh"), "down"], env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        subprocess.run([*tmux, "kill-server"], stderr=subprocess.DEVNULL)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
