"""Tasks end to end with real daemons and real tmux: offer, bid, deliver, report, requeue,
critic review, dependencies, two hosts, headless runs, supervised spawns, the briefing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Mesh, rawreader_cmd, until
from test_replication import link, make, running

FAST = {"MESHD_TASKS_REBID_S": "0.2", "MESHD_TASKS_REBID_MAX_S": "0.5",
        "MESHD_TASKS_TICK_S": "0.05", "MESHD_TASKS_BID_WINDOW_S": "0.3"}




def fast(m: Mesh, **extra: str) -> Mesh:
    m.env.update(FAST, **extra)
    return m


def reader(m: Mesh, name: str, *, scan: bool = True) -> tuple[str, Path]:
    log = m.root / f"{name}.log"
    log.touch()
    pane = m.new_window(name, rawreader_cmd(log))
    m.wait_for(pane, ">")
    if scan:
        m.run("mesh", "resync")
    return pane, log


def as_pane(m: Mesh, pane: str) -> dict[str, str]:
    return {"TMUX": f"{m.tmux.socket},1,0", "TMUX_PANE": pane}


def mesh_json(m: Mesh, *argv: str, env: dict[str, str] | None = None) -> Any:
    r = m.run("mesh", *argv, "--json", env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def add(m: Mesh, *argv: str) -> str:
    return str(mesh_json(m, "task", "add", *argv)["id"])


def show(m: Mesh, tid: str) -> dict[str, Any]:
    return dict(mesh_json(m, "task", "show", tid))


def state_is(m: Mesh, tid: str, state: str, timeout: float = 15) -> dict[str, Any]:
    return dict(until(lambda: (t := show(m, tid))["state"] == state and t, timeout,
                      f"{tid} {state}"))


def got(log: Path, text: str, timeout: float = 10) -> None:
    until(lambda: text.encode() in log.read_bytes(), timeout, f"{text!r} in {log.name}")


def events(t: dict[str, Any]) -> list[str]:
    return [h["event"] + ("!" if h.get("rejected") else "") for h in t["history"]]


@pytest.fixture
def one(mesh: Mesh) -> Mesh:
    """A daemon with a bare shell window (first agent, never bids) and fast task timings."""
    fast(mesh).new_window("shell", "bash --norc --noprofile")
    mesh.start_daemon()
    return mesh


def test_offer_bid_deliver_done_from_the_pane(one: Mesh) -> None:
    m = one
    pane, log = reader(m, "w1")
    tid = add(m, "write the report")
    assert tid == "t-testhost-1"
    got(log, f"TASK {tid}")
    # The delivery is journaled once the submit is verified, a moment after the text shows.
    until(lambda: "delivered:work" in events(show(m, tid)), what="delivery journaled")
    t = state_is(m, tid, "claimed")
    assert t["assignee"] == "testhost-main-w1" and t["attempts"] == 1
    assert t["bids"] == {"testhost": ["testhost-main-w1"]}
    shell = m.tmux.run("list-panes", "-t", "main:shell", "-F", "#{pane_id}").strip()
    r = m.run("mesh", "task", "start", tid, env=as_pane(m, shell))
    assert r.returncode == 3 and "testhost-main-w1's" in r.stderr       # not the shell's task
    assert m.run("mesh", "task", "start", tid, env=as_pane(m, pane)).returncode == 0
    r = m.run("mesh", "task", "done", tid, "--note", "all written", env=as_pane(m, pane))
    assert r.returncode == 0, r.stderr
    t = show(m, tid)
    assert t["state"] == "completed" and t["result"]["note"] == "all written"
    assert events(t) == ["add", "assign", "delivered:work", "start", "done"]
    assert t["history"][-1]["by"] == "testhost-main-w1"
    r = m.run("mesh", "task", "start", tid)
    assert r.returncode == 3 and "completed is final" in r.stderr
    assert m.run("mesh", "task", "show", "t-nope").returncode == 1
    assert [x["id"] for x in mesh_json(m, "task", "list", "--state", "completed")] == [tid]
    assert tid in m.run("mesh", "task", "list").stdout


def test_dependencies_to_and_claim(one: Mesh) -> None:
    m = one
    p1, log1 = reader(m, "w1")
    p2, log2 = reader(m, "w2")
    first = add(m, "build it", "--to", "testhost-main-w2")
    second = add(m, "ship it", "--depends-on", first)
    got(log2, f"TASK {first}")
    time.sleep(0.5)
    assert show(m, second)["state"] == "queued" and f"TASK {second}".encode() not in log1.read_bytes()
    assert m.run("mesh", "task", "done", first, env=as_pane(m, p2)).returncode == 0
    got(log1, f"TASK {second}")                        # w2 got the first, so w1 takes turns
    assert m.run("mesh", "task", "fail", second, "--note", "no", env=as_pane(m, p1)).returncode == 0
    third = add(m, "after a failure", "--depends-on", second)
    t = state_is(m, third, "failed")
    assert second in t["history"][-1]["note"]
    held = add(m, "held", "--role", "nobody")       # no agent has the role: it waits
    assert m.run("mesh", "task", "pause", held).returncode == 0
    assert [x["id"] for x in mesh_json(m, "task", "list", "--state", "paused")] == [held]
    r = m.run("mesh", "task", "claim", held, env=as_pane(m, p2))
    assert r.returncode == 3 and "legal: cancel, resume" in r.stderr
    assert m.run("mesh", "task", "resume", held).returncode == 0
    assert m.run("mesh", "task", "claim", held).returncode == 1         # not from a pane
    t = mesh_json(m, "task", "claim", held, env=as_pane(m, p2))
    assert t["state"] == "claimed" and t["assignee"] == "testhost-main-w2"


def test_pane_death_requeues_then_timeouts_dead_letter(mesh: Mesh) -> None:
    m = fast(mesh, MESHD_TASKS_MAX_REQUEUES="1")
    m.new_window("shell", "bash --norc --noprofile")
    m.start_daemon()
    p1, log1 = reader(m, "w1")
    p2, log2 = reader(m, "w2")
    tid = add(m, "survive me")
    got(log1, f"TASK {tid}")
    m.tmux.run("kill-window", "-t", p1)
    m.run("mesh", "resync")
    got(log2, f"TASK {tid}")
    t = state_is(m, tid, "claimed")
    assert t["assignee"] == "testhost-main-w2" and t["attempts"] == 2 and t["requeues"] == 1
    # The home ("pane closed") and the delivery ("pane gone") may both abandon attempt 1:
    # the second is refused in the history, never applied twice.
    moves = [h for h in t["history"] if not h["event"].startswith("delivered")
             and not h.get("rejected")]
    assert [h["event"] for h in moves] == ["add", "assign", "abandon", "requeue", "assign"]
    assert "testhost-main-w1" in moves[2]["note"]      # its pane closed (or took no delivery)
    assert m.run("mesh", "task", "done", tid, env=as_pane(m, p2)).returncode == 0
    slow = add(m, "too slow", "--timeout", "1s")
    t = state_is(m, slow, "dead", timeout=20)
    assert t["attempts"] == 2 and t["requeues"] == 1
    assert [h["note"] for h in t["history"] if h["event"] == "abandon"] == ["timed out after 1 s"] * 2
    r = m.run("mesh", "task", "done", slow, env=as_pane(m, p2))
    assert r.returncode == 3 and "dead is final" in r.stderr


def test_critic_reject_then_approve(one: Mesh) -> None:
    m = one
    p1, log1 = reader(m, "w1")
    p2, log2 = reader(m, "w2")
    tid = add(m, "careful work", "--critic")
    got(log1, f"TASK {tid}")
    assert m.run("mesh", "task", "done", tid, "--note", "v1", env=as_pane(m, p1)).returncode == 0
    got(log2, f"REVIEW {tid}")
    t = show(m, tid)
    assert t["state"] == "review" and t["reviewer"] == "testhost-main-w2"
    r = m.run("mesh", "task", "review", tid, "--approve", env=as_pane(m, p1))
    assert r.returncode == 3 and "another agent reviews it" in r.stderr
    r = m.run("mesh", "task", "review", tid, "--reject", "--note", "add tests", env=as_pane(m, p2))
    assert r.returncode == 0, r.stderr
    got(log1, "add tests")
    assert show(m, tid)["state"] == "working"
    assert m.run("mesh", "task", "done", tid, "--note", "v2", env=as_pane(m, p1)).returncode == 0
    until(lambda: (log2.read_bytes().count(f"REVIEW {tid}".encode()) == 2), what="second review")
    assert m.run("mesh", "task", "review", tid, "--approve", env=as_pane(m, p2)).returncode == 0
    t = show(m, tid)
    assert t["state"] == "completed" and t["result"]["note"] == "v2"
    assert [e for e in events(t) if e in ("submit", "reject", "approve")] == \
        ["submit", "reject", "submit", "approve"]


# -- two hosts -----------------------------------------------------------------------------
def host(tmp: Path, name: str) -> Mesh:
    return fast(make(tmp, name))


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Mesh, Mesh]]:
    a, b = host(tmp_path, "alpha"), host(tmp_path, "beta")
    link(a, b)
    with running(a, b):
        yield a, b


def test_task_added_on_one_host_lands_on_the_other(pair: tuple[Mesh, Mesh]) -> None:
    a, b = pair
    a.new_window("lead", "bash --norc --noprofile")
    pane, log = reader(b, "worker", scan=False)
    a.start_daemon()
    b.start_daemon()
    until(lambda: any(x["address"] == "beta-main-worker" for x in mesh_json(a, "agents")),
          what="alpha sees beta's agent")
    tid = add(a, "cross the wire")
    assert tid == "t-alpha-1"
    got(log, f"TASK {tid}")
    r = b.run("mesh", "task", "done", tid, "--note", "from beta", env=as_pane(b, pane))
    assert r.returncode == 0, r.stderr
    t = state_is(a, tid, "completed")
    assert t["assignee"] == "beta-main-worker" and t["assignee_host"] == "beta"
    assert t["bids"] == {"alpha": [], "beta": ["beta-main-worker"]}
    assert t["history"][1]["by"] == "meshd@alpha"
    until(lambda: show(b, tid) == show(a, tid), what="both boards agree")
    arch = [x["address"] for x in mesh_json(b, "agents") if x["architect"]]
    assert arch == ["alpha-main-lead"]


# -- headless and spawn ---------------------------------------------------------------------
def fake_tools(m: Mesh, scripts: dict[str, str]) -> Path:
    bin_dir = m.root / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in scripts.items():
        p = bin_dir / name
        p.write_text("#!/bin/sh\n" + body)
        p.chmod(0o755)
    m.env["PATH"] = f"{bin_dir}{os.pathsep}{m.env['PATH']}"
    return bin_dir


def test_headless_exec_and_worktree(mesh: Mesh, tmp_path: Path) -> None:
    m = fast(mesh)
    fake_tools(m, {"codex": 'echo "codex $1: $2 in $(pwd)"\n',
                   "gemini": 'echo "gemini is unwell" >&2; exit 3\n'})
    m.new_window("shell", "bash --norc --noprofile")
    m.start_daemon()
    ok = add(m, "--exec", "--tool", "codex", "say hi")
    bad = add(m, "--exec", "--tool", "gemini", "x")
    t = state_is(m, ok, "completed")
    assert t["result"]["exit_code"] == 0 and t["assignee"] == f"exec:{ok}"
    assert Path(t["result"]["output"]).read_text().startswith("codex exec: say hi in ")
    t = state_is(m, bad, "failed")
    assert t["result"]["exit_code"] == 3 and "unwell" in Path(t["result"]["output"]).read_text()
    r = m.run("mesh", "task", "add", "--exec", "--tool", "aider", "y")
    assert r.returncode == 1 and "not installed" in r.stderr
    r = m.run("mesh", "task", "add", "--worktree", "y")
    assert r.returncode == 1 and "--exec" in r.stderr
    repo = tmp_path / "repo"
    repo.mkdir()
    for cmd in (["init", "-q"], ["-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q",
                                 "--allow-empty", "-m", "init"]):
        subprocess.run(["git", "-C", str(repo), *cmd], check=True)
    code = ("import sys; from meshd.cli.mesh_main import main; sys.argv[0] = 'mesh'; "
            "sys.exit(main())")
    r = subprocess.run([sys.executable, "-c", code, "task", "add", "--exec", "--tool", "codex",
                        "--worktree", "--json", "in a tree"], cwd=repo, env=m.env,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    tid = json.loads(r.stdout)["id"]
    t = state_is(m, tid, "completed")
    tree = Path(t["result"]["worktree"])
    assert Path(t["result"]["output"]).read_text().strip().endswith(f"in {tree}")
    branches = subprocess.run(["git", "-C", str(repo), "branch", "--list", f"mesh/{tid}"],
                              capture_output=True, text=True).stdout
    assert f"mesh/{tid}" in branches


def test_spawn_supervises_and_gives_up(mesh: Mesh) -> None:
    m = fast(mesh)
    starts = m.root / "starts"
    fake_tools(m, {"aider": f"echo start >> {starts}; exit 1\n", "cursor-agent": "exec cat\n"})
    m.new_window("shell", "bash --norc --noprofile")
    m.start_daemon()
    out = mesh_json(m, "spawn", "--tool", "cursor-agent", "--role", "reviewer")
    assert out["session"] == "meshd-agents" and out["window"] == "reviewer"
    until(lambda: any(x["role"] == "reviewer" and x["session"] == "meshd-agents"
                      for x in mesh_json(m, "agents")), what="spawned agent registered")
    r = m.run("mesh", "spawn", "--tool", "aider", "--backoff-s", "0.05", "--fast-s", "5",
              "--give-up-after", "3")
    assert r.returncode == 0, r.stderr
    until(lambda: starts.exists() and starts.read_text().count("start") == 3, what="3 starts")
    until(lambda: "aider" not in m.tmux.run("list-windows", "-t", "meshd-agents", "-F",
                                            "#{window_name}"), what="supervisor gave up")
    time.sleep(0.3)
    assert starts.read_text().count("start") == 3


# -- architect and briefing ------------------------------------------------------------------
def architect(m: Mesh) -> tuple[str, int | None] | None:
    marked = [(x["address"], x.get("architect_term")) for x in mesh_json(m, "agents") if x["architect"]]
    assert len(marked) <= 1, marked
    return marked[0] if marked else None


def test_architect_of_an_unreachable_host_is_replaced_after_the_grace(pair: tuple[Mesh, Mesh]) -> None:
    """The earliest agent's host goes away: after tasks.architect_grace_s the next live agent
    leads with a higher term, and a command under the old term is refused; when the host
    is back its agent leads again, under a term higher than both."""
    a, b = pair
    for m in (a, b):
        m.env["MESHD_TASKS_ARCHITECT_GRACE_S"] = "2"
    a.new_window("lead", "bash --norc --noprofile")
    b.new_window("dev", "bash --norc --noprofile")
    a.start_daemon()
    until(lambda: architect(a) == ("alpha-main-lead", 1), what="alpha's lead claims term 1")
    b.start_daemon()
    until(lambda: architect(b) == ("alpha-main-lead", 1), what="beta agrees")
    a.stop_daemon()
    until(lambda: architect(b) == ("beta-main-dev", 2), timeout=20, what="beta's dev takes over")
    r = b.run("mesh", "task", "add", "stale", "--term", "1")
    assert r.returncode == 3 and "stale architect term 1" in r.stderr, r.stderr
    a.start_daemon()
    for m in (a, b):
        until(lambda m=m: architect(m) == ("alpha-main-lead", 3), timeout=20, what="lead is back")
    assert b.run("mesh", "task", "add", "stale", "--term", "2").returncode == 3


def test_briefing_once_and_architect_takeover(mesh: Mesh) -> None:
    m = fast(mesh, MESHD_TASKS_BRIEF_TOOLS="other")
    lead, lead_log = reader(m, "lead", scan=False)
    _, dev_log = reader(m, "dev", scan=False)
    m.start_daemon()
    got(lead_log, "You are the ARCHITECT")
    got(lead_log, "Your term is 1")
    got(dev_log, "The ARCHITECT is testhost-main-lead")
    got(dev_log, "FRAMEWORK.md")
    assert architect(m) == ("testhost-main-lead", 1)
    m.tmux.run("kill-window", "-t", lead)
    m.run("mesh", "resync")
    until(lambda: architect(m) == ("testhost-main-dev", 2), what="dev takes over with term 2")
    r = m.run("mesh", "task", "add", "under the old term", "--term", "1")
    assert r.returncode == 3 and "stale architect term 1" in r.stderr, r.stderr
    assert m.run("mesh", "task", "add", "under the new one", "--term", "2").returncode == 0
    _, late_log = reader(m, "late")
    got(late_log, "The ARCHITECT is testhost-main-dev")
    m.stop_daemon()
    m.start_daemon()           # the journal remembers who was briefed
    time.sleep(1.0)
    assert dev_log.read_bytes().count(b"Welcome to the mesh") == 1
    assert late_log.read_bytes().count(b"Welcome to the mesh") == 1
