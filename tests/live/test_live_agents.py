"""Live: the real agent CLIs in tmux, classified on their live screens, and a bracketed paste
plus a delayed Enter submitted exactly once.

Each test starts one CLI (installed by scripts/install-agent-clis.sh; skipped when it is not)
in its own ``tmux -L`` server with a throwaway home from tests/agents/seed.py. The model API
is the local stand-in (tests/agents/standin.py) because the real APIs cannot be reached from
the test machines; it also records exactly which prompts the CLI submitted.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agents.panes import Pane, Tmux
from agents.seed import AGENT_TOOLS, agent_bin, clis_prefix, seed
from agents.standin import StandIn

from meshd.delivery import service
from meshd.delivery.classify import PASTE_SETTLE_S, PaneState
from meshd.tmux.runner import Tmux as MeshdTmux

pytestmark = [pytest.mark.live_cli, pytest.mark.slow]

START_S = 45  # a cold start of a CLI on a busy 2-core machine


@pytest.fixture
def standin() -> Iterator[StandIn]:
    with StandIn(chunk_delay_s=0.05, chunk_count=4) as s:
        yield s


@pytest.fixture
def agent_tmux() -> Iterator[Tmux]:
    tmux = Tmux()
    try:
        yield tmux
    finally:
        tmux.kill()


def start(program: str, tmp_path: Path, standin: StandIn, tmux: Tmux) -> tuple[Pane, str]:
    if agent_bin(program) is None:
        pytest.skip(f"{program} is not installed under {clis_prefix()} "
                    "(run scripts/install-agent-clis.sh)")
    launch = seed(program, tmp_path / "home", tmp_path / "project", standin.base_url)
    pane = tmux.spawn(launch.argv, env=launch.env, cwd=launch.cwd, width=120, height=40)
    pane.wait_state(launch.tool, PaneState.IDLE, START_S)
    return pane, launch.tool


def settle_idle(pane: Pane, tool: str, standin: StandIn, timeout_s: float = 20) -> None:
    """End the stand-in's replies and wait for the CLI's input to come back."""
    deadline = time.monotonic() + timeout_s
    while standin.in_flight() and time.monotonic() < deadline:
        standin.finish_streams()
        time.sleep(0.1)
    pane.wait_state(tool, PaneState.IDLE, max(1.0, deadline - time.monotonic()))


@pytest.mark.parametrize("program", AGENT_TOOLS)
def test_live_screens_classify(program: str, tmp_path: Path, standin: StandIn,
                               agent_tmux: Tmux) -> None:
    pane, tool = start(program, tmp_path, standin, agent_tmux)

    pane.type("a draft that must never be sent")
    pane.wait_state(tool, PaneState.TYPING, 10)
    pane.keys("C-u")
    pane.wait_state(tool, PaneState.IDLE, 10)

    standin.chunk_delay_s, standin.chunk_count = 0.5, 40
    pane.type("write a haiku")
    time.sleep(0.3)
    pane.keys("Enter")
    pane.wait_state(tool, PaneState.BUSY, 15)
    time.sleep(1.5)  # busy well after the first token, too
    assert pane.verdict(tool).state is PaneState.BUSY
    settle_idle(pane, tool, standin)

    standin.chunk_delay_s, standin.chunk_count = 0.05, 4
    pane.type("MESHD_TOOL please create the probe file")
    time.sleep(0.3)
    pane.keys("Enter")
    pane.wait_state(tool, PaneState.DIALOG, 20)
    pane.keys(*(("n", "Enter") if program == "aider" else ("Escape",)))
    settle_idle(pane, tool, standin)

    prompts = standin.prompts()
    assert prompts[0] == "write a haiku", prompts
    assert "a draft that must never be sent" not in " ".join(prompts)


SHORT = "[from alice@host @ 2026-01-01T00:00:00Z] please rebase on main"
LONG = "[from bob@host @ 2026-01-01T00:00:00Z] review notes\n" + "\n".join(
    f"{i:02d}. the parser drops the last token when the input ends without a newline; "
    f"check case {i}" for i in range(22))


@pytest.mark.parametrize("program", AGENT_TOOLS)
def test_bracketed_paste_then_enter_arrives_once_whole(program: str, tmp_path: Path,
                                                       standin: StandIn,
                                                       agent_tmux: Tmux) -> None:
    assert 1800 <= len(LONG.encode()) <= 2600
    pane, tool = start(program, tmp_path, standin, agent_tmux)
    for n, text in enumerate((SHORT, LONG), start=1):
        pane.paste(text)
        time.sleep(PASTE_SETTLE_S[tool])
        pane.keys("Enter")
        deadline = time.monotonic() + 10
        while len(standin.prompts()) < n and time.monotonic() < deadline:
            time.sleep(0.1)
        settle_idle(pane, tool, standin)
    time.sleep(1.0)  # a late second submit would arrive by now
    assert standin.prompts() == [SHORT, LONG]


@pytest.mark.parametrize("program", AGENT_TOOLS)
def test_meshd_delivery_submits_once_into_the_real_cli(program: str, tmp_path: Path,
                                                      standin: StandIn,
                                                      agent_tmux: Tmux) -> None:
    """meshd's own delivery path (classify, guarded paste, settle, verified Enter)."""
    pane, tool = start(program, tmp_path, standin, agent_tmux)
    info = agent_tmux.run("display-message", "-p", "-t", pane.id, "#{socket_path} #{pane_pid}")
    socket, pid = info.split()
    meshd_tmux = MeshdTmux(Path(socket), 10.0, Path("/dev/null"))
    receipts: list[Any] = []
    for n, text in enumerate((SHORT, LONG), start=1):
        receipts.append(service.deliver(meshd_tmux, pane.id, int(pid), tool, text,
                                        service.SendOptions(wait_s=20), tmp_path / "locks"))
        deadline = time.monotonic() + 10
        while len(standin.prompts()) < n and time.monotonic() < deadline:
            time.sleep(0.1)
        settle_idle(pane, tool, standin)
    time.sleep(1.0)
    assert standin.prompts() == [SHORT, LONG]
    assert all(r.submitted for r in receipts), receipts
