"""Live: a real agent CLI in a tmux pane that meshd watches takes a task and reports it done.

A real meshd runs on the test's isolated tmux server (``MESHD_TMUX_SOCKET``, the conftest
``mesh`` fixture); the CLI (installed by scripts/install-agent-clis.sh; skipped when it is not)
runs in a window of that server with a throwaway home from tests/agents/seed.py. The only
stand-in is the model API (tests/agents/standin.py), because the real APIs cannot be reached
from the test machines; it records exactly which prompts the CLI submitted. meshd, tmux, the
``mesh`` CLI and the agent CLIs are the real ones.

Claude Code does the whole loop itself: the stand-in answers the task prompt with Bash tool
calls, so the real CLI runs ``mesh task start ID`` and then ``mesh task done ID`` in its own
pane (its ``$TMUX_PANE`` makes it the caller). The other CLIs are told their task the same way
and the test reports done with the agent pane's identity.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agents.panes import reap
from agents.seed import agent_bin, clis_prefix, seed
from agents.standin import Call, StandIn
from conftest import Mesh, until
from test_tasks import FAST, as_pane, events, mesh_json, show, state_is

pytestmark = [pytest.mark.live_cli, pytest.mark.slow]

START_S = 45        # a cold start of a CLI on a busy 2-core machine
TASK_ID = re.compile(r"TASK (t-[\w.-]+-\d+) \(from ")
ALLOW_MESH = {"permissions": {"defaultMode": "default", "allow": ["Bash(mesh task:*)"]}}


@pytest.fixture
def standin() -> Iterator[StandIn]:
    with StandIn(chunk_delay_s=0.05, chunk_count=4) as s:
        yield s


@pytest.fixture
def homes(tmp_path: Path) -> Iterator[Path]:
    """The CLI's throwaway home; every process still running with it is ended after the test
    (the CLIs leave helpers behind that outlive their tmux server)."""
    home = tmp_path / "agent-home"
    try:
        yield home
    finally:
        reap(home)


def need(program: str) -> None:
    if agent_bin(program) is None:
        pytest.skip(f"{program} is not installed under {clis_prefix()} "
                    "(run scripts/install-agent-clis.sh)")


def start_agent(m: Mesh, program: str, home: Path, standin: StandIn) -> dict[str, Any]:
    """Start ``program`` in a window of the mesh's tmux server; returns its registry entry once
    meshd has registered it and classifies its pane idle."""
    launch = seed(program, home, home.parent / "project", standin.base_url)
    if program == "claude":
        (home / ".claude" / "settings.json").write_text(json.dumps(ALLOW_MESH))
    # The CLI gets exactly its seeded environment, plus what lets it reach this meshd with
    # `mesh` (the venv's bin first on PATH) and be itself there: tmux's TMUX and TMUX_PANE.
    env = launch.env | {"PATH": f"{Path(sys.executable).parent}:{launch.env['PATH']}",
                        "TERM": "tmux-256color",
                        **{k: v for k, v in m.env.items() if k.startswith("MESHD_")}}
    assigns = " ".join(shlex.quote(f"{k}={v}") for k, v in env.items())
    command = (f"cd {shlex.quote(str(launch.cwd))} && exec env -i {assigns} "
               f'TMUX="$TMUX" TMUX_PANE="$TMUX_PANE" {shlex.join(launch.argv)}')
    pane = m.new_window(program, command)
    m.run("mesh", "resync")

    def ready() -> dict[str, Any] | None:
        agent = next((x for x in mesh_json(m, "agents") if x["pane"] == pane), None)
        return agent if agent and agent["tool"] == launch.tool and agent["state"] == "idle" else None

    return dict(until(ready, START_S, f"meshd sees {program} idle in {pane}"))


def submitted(standin: StandIn, needle: str) -> list[str]:
    """The prompts the CLI submitted that contain ``needle``."""
    return [p for p in standin.prompts() if needle in p]


def times_told(standin: StandIn, needle: str) -> int:
    """How often ``needle`` is in the CLI's conversation as the model last saw it: a text typed
    while the CLI was busy is not a prompt of its own (Claude Code queues it and sends it with
    the next tool result), so submissions alone would miss a second delivery."""
    return max((json.dumps(c.body).count(needle) for c in standin.calls() if c.main), default=0)


def briefed(m: Mesh, standin: StandIn, agent: dict[str, Any]) -> None:
    """meshd briefs every new agent CLI once: let that prompt go through and the pane settle."""
    until(lambda: submitted(standin, "Welcome to the mesh"), 20, "the briefing submitted")
    until(lambda: not standin.in_flight() and next(
        x for x in mesh_json(m, "agents") if x["id"] == agent["id"])["state"] == "idle",
        20, "the CLI idle after the briefing")


class TaskScript:
    """The stand-in's side of Claude Code's turns for one task: the prompt naming the task is
    answered with ``mesh task start ID``, that command's result with ``mesh task done ID``, the
    next with plain text. Each reply waits for the test to open its gate, so the test sees the
    task CLAIMED and then WORKING before the CLI moves it on."""

    def __init__(self) -> None:
        self.may_start = threading.Event()
        self.may_finish = threading.Event()

    def __call__(self, call: Call) -> str | None:
        messages = call.body.get("messages") or []
        asks = [i for i, msg in enumerate(messages) if msg.get("role") == "user"
                and TASK_ID.search(json.dumps(msg.get("content")))]
        if not asks:
            return None
        tid = TASK_ID.search(json.dumps(messages[asks[-1]].get("content")))
        assert tid is not None
        done = sum(1 for msg in messages[asks[-1]:] if msg.get("role") == "assistant"
                   for block in _blocks(msg) if block.get("type") == "tool_use")
        if done == 0 and self.may_start.wait(30):
            return f"mesh task start {tid.group(1)}"
        if done == 1 and self.may_finish.wait(30):
            return f"mesh task done {tid.group(1)} --note 'done by the CLI itself'"
        return None


@pytest.fixture
def script(standin: StandIn) -> Iterator[TaskScript]:
    """A :class:`TaskScript` installed in the stand-in; its gates open at teardown, so a failed
    test does not leave a held reply behind (the stand-in could not stop)."""
    standin.planner = plan = TaskScript()
    try:
        yield plan
    finally:
        plan.may_start.set()
        plan.may_finish.set()


def _blocks(msg: dict[str, Any]) -> list[dict[str, Any]]:
    content = msg.get("content")
    return [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []


def tool_results(standin: StandIn) -> str:
    """Everything the CLI sent back as tool results (the output of the commands it ran)."""
    bodies = [c.body for c in standin.calls() if c.main and isinstance(c.body, dict)]
    return "\n".join(json.dumps(b.get("content")) for body in bodies
                     for msg in body.get("messages") or [] for b in _blocks(msg)
                     if b.get("type") == "tool_result")


def test_claude_takes_a_task_and_reports_it_done_itself(mesh: Mesh, standin: StandIn,
                                                       script: TaskScript, homes: Path) -> None:
    need("claude")
    m = mesh
    m.env.update(FAST)
    m.new_window("shell", "bash --norc --noprofile")   # a person's shell: never bids
    m.start_daemon()
    agent = start_agent(m, "claude", homes, standin)
    briefed(m, standin, agent)

    r = m.run("mesh", "task", "add", "rename the parser module", "--tool", "claude", "--json")
    assert r.returncode == 0, r.stderr
    tid = json.loads(r.stdout)["id"]
    until(lambda: submitted(standin, f"TASK {tid}"), 20, f"{tid} submitted by the CLI")
    t = state_is(m, tid, "claimed")
    assert t["assignee"] == agent["address"] and t["attempts"] == 1
    assert t["bids"] == {"testhost": [agent["address"]]}      # the shell never bid
    until(lambda: "delivered:work" in events(show(m, tid)), 10, "delivery journaled")
    script.may_start.set()
    state_is(m, tid, "working", 20)
    script.may_finish.set()
    t = state_is(m, tid, "completed", 20)

    time.sleep(1.0)   # a second submission of the task would have arrived by now
    [prompt] = submitted(standin, f"TASK {tid}")
    assert times_told(standin, f"TASK {tid} (from") == 1
    assert "rename the parser module" in prompt and f"mesh task done {tid}" in prompt
    assert events(t) == ["add", "assign", "delivered:work", "start", "done"], t["history"]
    assert [h["by"] for h in t["history"][3:]] == [agent["address"]] * 2   # from its own pane
    assert t["result"]["note"] == "done by the CLI itself"
    ran = tool_results(standin)                # the CLI ran both commands and read their output
    assert f"{tid}: working" in ran and f"{tid}: completed" in ran, ran


@pytest.mark.parametrize("program", ["codex", "gemini", "aider"])
def test_cli_gets_the_task_once_and_its_pane_reports_it(program: str, mesh: Mesh,
                                                        standin: StandIn, homes: Path) -> None:
    need(program)
    m = mesh
    m.env.update(FAST)
    m.start_daemon()
    agent = start_agent(m, program, homes, standin)
    briefed(m, standin, agent)

    tid = mesh_json(m, "task", "add", "summarise the changelog", "--tool", agent["tool"])["id"]
    until(lambda: submitted(standin, f"TASK {tid}"), 20, f"{tid} submitted by the CLI")
    t = state_is(m, tid, "claimed")
    assert t["assignee"] == agent["address"]
    until(lambda: "delivered:work" in events(show(m, tid)), 10, "delivery journaled")
    pane = as_pane(m, agent["pane"])
    assert mesh_json(m, "task", "start", tid, env=pane)["state"] == "working"
    done = mesh_json(m, "task", "done", tid, "--note", "summarised", env=pane)
    assert done["state"] == "completed"
    time.sleep(1.0)
    assert len(submitted(standin, f"TASK {tid}")) == 1, standin.prompts()
    assert times_told(standin, f"TASK {tid} (from") == 1
    t = show(m, tid)
    assert events(t) == ["add", "assign", "delivered:work", "start", "done"], t["history"]
    assert t["history"][-1]["by"] == agent["address"]
