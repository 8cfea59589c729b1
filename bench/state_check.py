"""The extra cost of meshd's pane-state check, in process, against a real tmux pane.

Compares, for N deliveries of a short message to an idle REPL pane (the rawreader
fixture), the time until the text reaches the application:

* bare   -- a guarded paste only (``tmux.paste.paste``: load-buffer + if-shell + paste-buffer);
* full   -- ``delivery.service.deliver`` up to the paste: one combined display-message +
            capture-pane read, the classifier, the policy, then the same paste.

usage: python bench/state_check.py [-n 200]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from benchstats import pct  # noqa: E402

from meshd.delivery import classify as cl  # noqa: E402
from meshd.delivery.service import SendOptions, deliver, snapshot  # noqa: E402
from meshd.tmux import paste as tp  # noqa: E402
from meshd.tmux.runner import Tmux  # noqa: E402
from meshd.tmux.scan import look  # noqa: E402

READER = ROOT / "tests" / "fixtures" / "rawreader.py"



def arrival(log: Path, needle: bytes) -> float:
    while needle not in log.read_bytes():
        time.sleep(0.0002)
    return time.monotonic()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=200)
    n = ap.parse_args().n
    tmp = Path(tempfile.mkdtemp(prefix="meshd-bench-"))
    tmux = Tmux(tmp / "tmux.sock", 10)
    log = tmp / "r.log"
    log.touch()
    tmux.run("new-session", "-d", "-x", "160", "-y", "40", f"{sys.executable} {READER} {log}")
    pane = tmux.run("list-panes", "-F", "#{pane_id}").strip()
    pid = int(tmux.run("list-panes", "-F", "#{pane_pid}").strip())
    opts = SendOptions(enter_delay_s=0.0, verify_timeout_s=1.0, enter_retries=0)
    try:
        time.sleep(0.5)
        results: dict[str, list[float]] = {"bare": [], "full": []}
        for i in range(n):
            for kind in ("bare", "full"):
                needle = f"{kind}-{i}-{time.monotonic_ns()}"
                got: list[float] = []
                t = threading.Thread(target=lambda nd=needle, out=got: out.append(arrival(log, nd.encode())))
                t.start()
                t0 = time.monotonic()
                if kind == "bare":
                    tp.paste(tmux, pane, pid, needle)
                    tp.press_enter(tmux, pane, pid)
                else:
                    deliver(tmux, pane, pid, "other", needle, opts, tmp / "locks")
                t.join()
                results[kind].append((got[0] - t0) * 1000)
        row, lines = look(tmux, pane)
        classify_us = []
        snap = snapshot(row, lines, "claude")
        for _ in range(2000):
            t0 = time.perf_counter()
            cl.classify(snap)
            classify_us.append((time.perf_counter() - t0) * 1e6)
        print(f"state check cost, n={n} (ms until the text reaches the app)")
        for kind, xs in results.items():
            print(f"  {kind:<5} p50 {statistics.median(xs):6.2f}   p95 {pct(xs, 95):6.2f}")
        extra = statistics.median(results["full"]) - statistics.median(results["bare"])
        print(f"  extra cost of the check (p50)   {extra:6.2f} ms "
              f"({statistics.median(results['full']) / statistics.median(results['bare']):.2f}x)")
        print(f"  classifier alone (claude rules, one screen) p50 {statistics.median(classify_us):.0f} us")
    finally:
        tmux.run("kill-server", check=False)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
