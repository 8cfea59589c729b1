"""Headless task runs and supervised agent windows, in the meshd tmux server.

A headless run (``mesh task add --exec --tool TOOL TEXT``) is the tool's
non-interactive argv (:mod:`meshd.toolcatalog`, the prompt one argv word, never
through a shell) started by ``/bin/sh`` in a new window of session
``meshd-exec`` on the task's home host::

    <state>/tasks/<id>/attempt-<n>.out   stdout and stderr
    <state>/tasks/<id>/attempt-<n>.rc    the exit status, written (atomically) at the end

The home's reconciler (:func:`watch`) turns the status into ``task.done`` (0) or
``task.failed``; a window that closed without a status, or a run past ``--timeout``
(its window is killed), abandons the attempt, so the task is requeued and run again.
Every path is derived from (id, attempt), so a restarted daemon picks a run up again.
``--worktree``: the run gets its own ``git worktree`` (branch ``mesh/<id>``) under
``<state>/worktrees/<id>``, reused by later attempts.

:func:`spawn_agent` opens a long-lived agent window (session ``meshd-agents``) whose
process is ``python -m meshd.cli.task_cmd supervise``: it restarts the CLI after a
crash with backoff and gives up after repeated fast failures
(:mod:`meshd.tasks.supervise`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshd import toolcatalog
from meshd.daemon.tasks_service import by_meshd
from meshd.errors import MeshError, TmuxError, UsageError
from meshd.files import private_dir
from meshd.tasks.bidding import EXEC_SESSION, SPAWN_SESSION
from meshd.tasks.board import Task
from meshd.tmux.runner import Tmux

if TYPE_CHECKING:
    from meshd.daemon.tasks_service import TasksDaemon

GIT_TIMEOUT_S = 30.0


def run_files(state_dir: Path, tid: str, attempt: int) -> tuple[Path, Path]:
    d = state_dir / "tasks" / tid
    return d / f"attempt-{attempt}.out", d / f"attempt-{attempt}.rc"


def window_name(tid: str, attempt: int) -> str:
    return f"{tid}-{attempt}"


def binary_of(tool_name: str) -> tuple[toolcatalog.Tool, str]:
    """The catalog entry and the installed binary; UsageError when unknown or missing."""
    try:
        tool = toolcatalog.by_name(tool_name)
    except KeyError:
        known = ", ".join(t.name for t in toolcatalog.CATALOG)
        raise UsageError(f"unknown tool {tool_name!r}", hint=f"known: {known}") from None
    found = toolcatalog.locate(tool, toolcatalog.search_path(dict(os.environ)))
    if found is None:
        raise UsageError(f"{tool_name} is not installed on this host", hint="see `mesh tools`")
    return tool, found


# -- headless runs -------------------------------------------------------------------------
async def launch(d: TasksDaemon, t: Task) -> None:
    """Start attempt ``t.attempts`` of a headless task; journal started + delivered."""
    attempt, by = t.attempts, by_meshd(d)
    assert t.assignee is not None
    try:
        tool, binary = binary_of(t.tool)
        cwd = Path(t.cwd or d.paths.home)
        tree = None
        if t.worktree:
            tree = d.paths.state_dir / "worktrees" / t.id
            await asyncio.to_thread(make_worktree, cwd, tree, f"mesh/{t.id}")
            cwd = tree
        out, rc = run_files(d.paths.state_dir, t.id, attempt)
        argv = toolcatalog.render_argv(tool, t.text, binary=binary)
        await asyncio.to_thread(_start_run, d.tmux, window_name(t.id, attempt), cwd, argv, out, rc)
    except MeshError as exc:
        await d.record("task.failed", {"id": t.id, "by": by,
                                       "note": f"headless {t.tool} could not start: {exc.message}"})
        return
    note = f"headless {t.tool} in window {EXEC_SESSION}:{window_name(t.id, attempt)}"
    await d.record_many([
        ("task.started", {"id": t.id, "by": by, "note": note}),
        ("task.delivered", {"id": t.id, "for": "work", "attempt": attempt, "by": by,
                            "agent": t.assignee.agent, "note": str(out),
                            **({"worktree": str(tree)} if tree else {})}),
    ])


def _start_run(tmux: Tmux, name: str, cwd: Path, argv: list[str], out: Path, rc: Path) -> str:
    private_dir(out.parent)
    tmp = rc.with_suffix(".rc.tmp")
    script = (f"{shlex.join(argv)} </dev/null >{shlex.quote(str(out))} 2>&1; "
              f"echo $? >{shlex.quote(str(tmp))}; mv {shlex.quote(str(tmp))} {shlex.quote(str(rc))}")
    return open_window(tmux, EXEC_SESSION, name, cwd, ["/bin/sh", "-c", script])


async def watch(d: TasksDaemon, t: Task, now: float) -> list[tuple[str, dict[str, Any]]]:
    """The home's check of a running headless attempt: finished, vanished or overdue."""
    if not t.delivered:
        return []   # still starting (launch is in flight)
    by, attempt = by_meshd(d), t.attempts
    out, rc = run_files(d.paths.state_dir, t.id, attempt)
    name = window_name(t.id, attempt)
    code = await asyncio.to_thread(_status, rc)
    if code is None and not await asyncio.to_thread(_window_alive, d.tmux, name):
        code = await asyncio.to_thread(_status, rc)   # it may have ended just now
        if code is None:
            return [("task.abandoned", {"id": t.id, "attempt": attempt, "by": by,
                                        "reason": "the headless window closed without an exit status"})]
    if code is not None:
        tree = d.paths.state_dir / "worktrees" / t.id
        body = {"id": t.id, "by": by, "note": f"exit status {code}", "output": str(out),
                "exit_code": code, **({"worktree": str(tree)} if t.worktree else {})}
        return [("task.done" if code == 0 else "task.failed", body)]
    if t.timeout_s and now - t.assigned_at > t.timeout_s:
        await asyncio.to_thread(_kill_window, d.tmux, name)
        return [("task.abandoned", {"id": t.id, "attempt": attempt, "by": by,
                                    "reason": f"timed out after {t.timeout_s:g} s"})]
    return []


async def stop(d: TasksDaemon, t: Task) -> None:
    """Kill the window of the task's latest attempt, if it still runs."""
    await asyncio.to_thread(_kill_window, d.tmux, window_name(t.id, t.attempts))


def _status(rc: Path) -> int | None:
    try:
        return int(rc.read_text().strip() or "-1")
    except FileNotFoundError:
        return None
    except ValueError:
        return -1


def _windows(tmux: Tmux, session: str) -> dict[str, str]:
    """Window name -> id in ``session``; {} when the session or the server is gone."""
    try:
        text = tmux.run("list-windows", "-t", f"={session}", "-F", "#{window_name}\t#{window_id}")
    except TmuxError:
        return {}
    return dict(line.split("\t", 1) for line in text.splitlines() if "\t" in line)


def _window_alive(tmux: Tmux, name: str) -> bool:
    return name in _windows(tmux, EXEC_SESSION)


def _kill_window(tmux: Tmux, name: str) -> None:
    wid = _windows(tmux, EXEC_SESSION).get(name)
    if wid:
        with contextlib.suppress(TmuxError):
            tmux.run("kill-window", "-t", wid)


def open_window(tmux: Tmux, session: str, name: str, cwd: Path, argv: list[str]) -> str:
    """A new detached window running ``argv`` (exec'd by tmux, no shell); its window id."""
    fmt = ["-P", "-F", "#{window_id}"]
    try:
        tmux.run("has-session", "-t", f"={session}")
    except TmuxError:
        try:
            return tmux.run("new-session", "-d", "-s", session, "-n", name, "-c", str(cwd),
                            "-x", "200", "-y", "50", *fmt, *argv).strip()
        except TmuxError as exc:
            if "duplicate session" not in exc.message:
                raise
    return tmux.run("new-window", "-d", "-t", f"={session}:", "-n", name, "-c", str(cwd),
                    *fmt, *argv).strip()


def make_worktree(repo: Path, dest: Path, branch: str) -> Path:
    """``git worktree add`` (a new branch, or the existing one); reuses ``dest`` if there."""
    if (dest / ".git").exists():
        return dest
    private_dir(dest.parent)
    has_branch = _git(repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}").returncode == 0
    args = ["worktree", "add", str(dest), branch] if has_branch else \
        ["worktree", "add", "-b", branch, str(dest)]
    proc = _git(repo, *args)
    if proc.returncode != 0:
        raise UsageError(f"git worktree add failed in {repo}: {proc.stderr.strip()}",
                         hint="--worktree needs the task added from inside a git repository")
    return dest


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S, check=False)
    except FileNotFoundError:
        raise UsageError("git is not installed") from None
    except subprocess.TimeoutExpired:
        raise MeshError(f"git {args[0]} took longer than {GIT_TIMEOUT_S:g} s") from None


def git_toplevel(cwd: Path) -> Path | None:
    proc = _git(cwd, "rev-parse", "--show-toplevel")
    return Path(proc.stdout.strip()) if proc.returncode == 0 else None


# -- supervised agent windows --------------------------------------------------------------
def spawn_agent(tmux: Tmux, state_dir: Path, tool_name: str, role: str, cwd: Path,
                worktree: bool, name: str, policy: dict[str, float]) -> dict[str, Any]:
    """Open a supervised agent window; returns {session, window, window_id, cwd}."""
    _, binary = binary_of(tool_name)
    base = name or role or tool_name
    taken = _windows(tmux, SPAWN_SESSION)
    name = base if base not in taken else next(
        f"{base}-{i}" for i in range(2, 10_000) if f"{base}-{i}" not in taken)
    if worktree:
        cwd = make_worktree(cwd, state_dir / "worktrees" / f"spawn-{name}", f"mesh/{name}")
    argv = [sys.executable, "-m", "meshd.cli.task_cmd", "supervise",
            *(x for k, v in sorted(policy.items()) for x in (f"--{k.replace('_', '-')}", f"{v:g}")),
            "--", binary]
    wid = open_window(tmux, SPAWN_SESSION, name, cwd, argv)
    if role:
        tmux.run("set-option", "-w", "-t", wid, "@agent-role", role)
    return {"session": SPAWN_SESSION, "window": name, "window_id": wid, "cwd": str(cwd),
            "tool": tool_name, "role": role}
