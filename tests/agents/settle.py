"""Measure how long each program needs between a bracketed paste and Enter (PASTE_SETTLE_S).

    .venv/bin/python tests/agents/settle.py                 # all installed, ~15 min
    .venv/bin/python tests/agents/settle.py --programs codex --delays 0,0.05,0.1 --trials 5

For each delay: paste a short text and a ~2 KB multi-line text with ``tmux load-buffer -`` +
``paste-buffer -p -d`` (meshd's way), wait the delay, press Enter, and check that the prompt was
submitted exactly once and whole. For agent CLIs "submitted" is what the stand-in model API
received (tests/agents/standin.py; the real APIs cannot be reached from here); for shells and
``python3 -q`` it is the screen: the pasted line ran (a no-op) and an empty prompt came back.
The smallest delay with every trial right, doubled, is what classify.PASTE_SETTLE_S holds.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/

from agents.panes import Pane, Tmux
from agents.seed import AGENT_TOOLS, agent_bin, seed
from agents.standin import StandIn
from meshd.delivery.classify import PaneState

PROGRAMS = ("claude", "codex", "gemini", "aider", "bash", "python")


@dataclass(frozen=True)
class Trial:
    program: str
    delay_s: float
    size: str
    ok: bool
    detail: str


def payload(tag: str, long: bool) -> str:
    if not long:
        return f"settle probe {tag}: please reply with one word"
    line = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor " * 1
    body = "\n".join(f"{i:02d} {line.strip()} {tag}" for i in range(22))
    return f"settle probe {tag} begins\n{body}\nsettle probe {tag} ends"


def wait_ready(pane: Pane, tool: str, standin: StandIn | None, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if standin is not None:
            standin.finish_streams()
        calm = standin is None or standin.in_flight() == 0
        if calm and pane.verdict(tool).state is PaneState.IDLE:
            time.sleep(0.5)
            if pane.verdict(tool).state is PaneState.IDLE:
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"{tool} not idle:\n{pane.look().plain()}")
        time.sleep(0.2)


def agent_trial(pane: Pane, tool: str, standin: StandIn, text: str, delay_s: float) -> str:
    """'' when submitted once and whole, else what went wrong (the pane is reset after)."""
    before = len(standin.prompts())
    pane.paste(text)
    time.sleep(delay_s)
    pane.keys("Enter")
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline and len(standin.prompts()) == before:
        time.sleep(0.1)
    time.sleep(1.0)  # a second, split submission would show up by now
    got = standin.prompts()[before:]
    if not got:
        pane.keys("Enter")  # flush the stranded draft so the next trial starts clean
        time.sleep(2)
        return "not submitted (Enter landed in the paste or was dropped)"
    if len(got) > 1:
        return f"submitted {len(got)} times"
    if got[0].strip() != text.strip():
        return f"submitted altered: {len(got[0])} of {len(text)} chars"
    return ""


def shell_trial(pane: Pane, tool: str, text: str, delay_s: float) -> str:
    first = text.splitlines()[0]
    line = f": '{first}'" if tool == "shell" else f"'{first}'"
    pane.paste(line)
    time.sleep(delay_s)
    pane.keys("Enter")
    time.sleep(0.6)
    verdict = pane.verdict(tool)
    if verdict.state is not PaneState.IDLE:
        pane.keys("C-u")
        return f"not submitted: {verdict.state} ({verdict.reason})"
    return ""


def measure(program: str, delays: list[float], trials: int, work: Path) -> list[Trial]:
    results: list[Trial] = []
    with StandIn(chunk_delay_s=0.01, chunk_count=3) as standin:
        launch = seed(program, work / program / "home", work / program / "project",
                      standin.base_url)
        tmux = Tmux()
        try:
            pane = tmux.spawn(launch.argv, env=launch.env, cwd=launch.cwd, width=120, height=40)
            agent = program in AGENT_TOOLS
            wait_ready(pane, launch.tool, standin if agent else None, 60)
            for delay in delays:
                for long in (False, True):
                    for n in range(trials):
                        tag = f"{program}-{delay}-{'long' if long else 'short'}-{n}"
                        text = payload(tag, long)
                        detail = (agent_trial(pane, launch.tool, standin, text, delay) if agent
                                  else shell_trial(pane, launch.tool, text, delay))
                        results.append(Trial(program, delay, "2KB" if long else "short",
                                             not detail, detail))
                        print(f"  {tag}: {detail if detail else 'ok'}", flush=True)
                        wait_ready(pane, launch.tool, standin if agent else None)
        finally:
            tmux.kill()
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--programs", default=",".join(PROGRAMS))
    ap.add_argument("--delays", default="0,0.02,0.05,0.1,0.15,0.3")
    ap.add_argument("--trials", type=int, default=3)
    args = ap.parse_args(argv)
    delays = [float(d) for d in args.delays.split(",")]
    with tempfile.TemporaryDirectory(prefix="meshd-settle-") as tmp:
        for program in args.programs.split(","):
            if program in AGENT_TOOLS and agent_bin(program) is None:
                print(f"{program}: not installed, skipped")
                continue
            print(program, flush=True)
            results = measure(program, delays, args.trials, Path(tmp))
            good = [d for d in delays if all(r.ok for r in results if r.delay_s == d)]
            ok_from = next((d for d in delays if all(g in good for g in delays if g >= d)), None)
            print(f"{program}: all trials submitted once and whole from {ok_from} s "
                  f"(per delay: {[(d, sum(r.ok for r in results if r.delay_s == d)) for d in delays]}"
                  f" of {2 * args.trials})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
