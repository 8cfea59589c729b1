"""``mesh task``: offer work to the mesh and report on it; ``mesh spawn``: supervised agents.

A thin client of the daemon's ``task_*`` ops (docs/tasks.md).  Run from an agent's
tmux pane (``$TMUX_PANE``), the agent is the caller: ``claim`` makes it the worker,
and only the worker may ``start``/``done``/``fail`` its task.

Exit codes: 0 done, 1 usage or unknown task, 2 unknown agent (``--to``), 3 the
lifecycle refused the move (the message names the state and the legal moves),
4 the daemon is not reachable.

``python -m meshd.cli.task_cmd supervise [OPTIONS] -- ARGV...`` is the supervisor
that ``mesh spawn`` runs in the new window (:mod:`meshd.tasks.supervise`).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from typing import Any

import click

from meshd.errors import MeshError, UsageError
from meshd.paths import StatePaths
from meshd.tasks.lifecycle import TaskState
from meshd.tasks.supervise import Policy, after_exit
from meshd.transport import client

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "": 1.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)?")


class TaskGroup(click.Group):
    """Turns MeshErrors into their exit codes (also when used outside ``mesh``)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MeshError as exc:
            click.echo(f"mesh task: {exc}", err=True)
            sys.exit(exc.exit_code)


def _call(op: str, args: dict[str, Any], timeout_s: float = 30.0) -> Any:
    from meshd.cli.notify import caller_args

    return client.call(StatePaths.from_env().socket, op, {**caller_args(), **args}, timeout_s)


def parse_duration(text: str) -> float:
    """``90`` / ``90s`` / ``10m`` / ``1h30m`` / ``500ms`` -> seconds."""
    s = text.strip().lower().replace(" ", "")
    total, pos = 0.0, 0
    for m in _PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2) or ""]
        pos = m.end()
    if not s or pos != len(s):
        raise click.BadParameter(f"{text!r} is not a duration like 90s, 10m or 1h30m")
    return total


def parse_needs(text: str) -> dict[str, float]:
    """``gpu=8,ram=16`` (GB; a trailing G/GB is allowed) -> {"gpu_gb": 8, "ram_gb": 16}."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = part.partition("=")
        key, value = key.strip().lower(), value.strip().lower().removesuffix("b").removesuffix("g")
        if key not in ("gpu", "ram"):
            raise click.BadParameter(f"{key!r}: only gpu= and ram= (in GB)", param_hint="--needs")
        try:
            out[f"{key}_gb"] = float(value)
        except ValueError:
            raise click.BadParameter(f"{part!r}: not a number of GB", param_hint="--needs") from None
    return out


def _show_line(t: dict[str, Any]) -> str:
    who = t.get("assignee") or "-"
    text = t["text"].replace("\n", " ")
    return f"{t['id']:<18} {t['state']:<10} {t['attempts']:>3}  {who:<28} {text[:60]}"


def _emit(t: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(t, indent=2))
    else:
        click.echo(f"{t['id']}: {t['state']}" + (f" ({t['assignee']})" if t.get("assignee") else ""))


_JSON = click.option("--json", "as_json", is_flag=True, help="print JSON")
_NOTE = click.option("--note", default="", help="a word for the history (what, or why)")
_TERM = click.option("--term", type=int, default=None, metavar="N",
                     help="the ARCHITECT's term this command acts under; refused (exit 3) if stale")


@click.group("task", cls=TaskGroup)
def task() -> None:
    """Offer work to the mesh's agents, see the board, report progress."""


@task.command("add")
@click.argument("text", nargs=-1, required=True)
@click.option("--to", "to", default=None, metavar="ADDR", help="only this agent")
@click.option("--role", default=None, help="an agent with this @agent-role")
@click.option("--tool", default=None, help="an agent running this CLI (claude, codex, ...)")
@click.option("--critic", is_flag=True, help="another agent reviews the work before it completes")
@click.option("--needs", default="", metavar="gpu=GB,ram=GB", help="resources the host must have free")
@click.option("--timeout", "timeout", default=None, metavar="DURATION",
              help="abandon and requeue when not done this long after assignment (10m, 1h)")
@click.option("--depends-on", "depends_on", multiple=True, metavar="ID",
              help="start only after these tasks completed (repeat, or comma-separated)")
@click.option("--exec", "exec_", is_flag=True, help="run --tool headless in a new tmux window")
@click.option("--worktree", is_flag=True, help="with --exec: in a new git worktree of this repository")
@_TERM
@_JSON
def add(text: tuple[str, ...], to: str | None, role: str | None, tool: str | None, critic: bool,
        needs: str, timeout: str | None, depends_on: tuple[str, ...], exec_: bool, worktree: bool,
        term: int | None, as_json: bool) -> None:
    """Offer TEXT to the mesh; print the task id."""
    body = " ".join(text)
    if body == "-":
        body = sys.stdin.read()
    deps = [d.strip() for item in depends_on for d in item.split(",") if d.strip()]
    args: dict[str, Any] = {"text": body, "to": to, "role": role, "tool": tool, "critic": critic,
                            "depends_on": deps, "exec": exec_, "worktree": worktree,
                            "cwd": os.getcwd(), "term": term, **parse_needs(needs)}
    if timeout is not None:
        args["timeout_s"] = parse_duration(timeout)
    t = _call("task_add", args)
    if as_json:
        click.echo(json.dumps(t, indent=2))
        return
    click.echo(t["id"])
    click.echo(f"queued on {t['home']}" + (f", after {', '.join(deps)}" if deps else ""), err=True)


@task.command("list")
@click.option("--state", type=click.Choice([s.value for s in TaskState]), default=None)
@_JSON
def list_(state: str | None, as_json: bool) -> None:
    """The board: every task with its state, attempts and worker."""
    tasks = _call("task_list", {"state": state})
    if as_json:
        click.echo(json.dumps(tasks, indent=2))
        return
    click.echo(f"{'ID':<18} {'STATE':<10} {'TRY':>3}  {'ASSIGNEE':<28} TEXT")
    for t in tasks:
        click.echo(_show_line(t))


@task.command("show")
@click.argument("task_id", metavar="ID")
@_JSON
def show(task_id: str, as_json: bool) -> None:
    """One task with its history."""
    t = _call("task_show", {"id": task_id})
    if as_json:
        click.echo(json.dumps(t, indent=2))
        return
    click.echo(f"{t['id']}  {t['state']}  attempts {t['attempts']}, requeues {t['requeues']}, "
               f"home {t['home']}, by {t['by']}")
    click.echo(f"  {t['text']}")
    for k in ("assignee", "reviewer", "to", "role", "tool", "depends_on", "feedback", "result"):
        if t.get(k):
            click.echo(f"  {k}: {t[k]}")
    for h in t["history"]:
        stamp = time.strftime("%H:%M:%S", time.localtime(h["time"]))
        refused = f"  REFUSED: {h['rejected']}" if h.get("rejected") else ""
        click.echo(f"  {stamp} {h['event']:<16} {h['by']:<28} {h['note']}{refused}")


def _move_command(name: str, op: str, doc: str) -> None:
    @task.command(name, help=doc)
    @click.argument("task_id", metavar="ID")
    @_NOTE
    @_TERM
    @_JSON
    def cmd(task_id: str, note: str, term: int | None, as_json: bool) -> None:
        _emit(_call(op, {"id": task_id, "note": note, "term": term}), as_json)


for _name, _doc in (("claim", "Take a queued task: this pane's agent becomes its worker."),
                    ("start", "Say you started the task given to you."),
                    ("done", "Report the task done (to review first with --critic)."),
                    ("fail", "Report that the task cannot be done (say why with --note)."),
                    ("cancel", "Withdraw a task for good (it ends as failed)."),
                    ("pause", "Hold a task: it is not offered, its worker is released."),
                    ("resume", "Offer a paused task again.")):
    _move_command(_name, f"task_{_name}", _doc)


@task.command("review")
@click.argument("task_id", metavar="ID")
@click.option("--approve/--reject", "approve", default=None, help="the verdict")
@_NOTE
@_TERM
@_JSON
def review(task_id: str, approve: bool | None, note: str, term: int | None, as_json: bool) -> None:
    """Judge a task under review: approve completes it, reject sends it back with the note."""
    if approve is None:
        raise UsageError("say --approve or --reject")
    _emit(_call("task_review", {"id": task_id, "approve": approve, "note": note, "term": term}),
          as_json)


# -- spawn ---------------------------------------------------------------------------------
@click.command("spawn", cls=click.Command)
@click.option("--tool", required=True, help="the agent CLI to run (claude, codex, gemini, aider, ...)")
@click.option("--role", default="", help="its @agent-role")
@click.option("--name", default="", help="window name (default: the role, else the tool)")
@click.option("--worktree", is_flag=True, help="in a new git worktree of this repository")
@click.option("--backoff-s", type=float, default=None, hidden=True)
@click.option("--fast-s", type=float, default=None, hidden=True)
@click.option("--give-up-after", type=int, default=None, hidden=True)
@_JSON
def spawn(tool: str, role: str, name: str, worktree: bool, backoff_s: float | None,
          fast_s: float | None, give_up_after: int | None, as_json: bool) -> None:
    """Start a long-lived agent window, restarted after crashes (gives up on fast failures)."""
    try:
        out = _call("agent_spawn", {"tool": tool, "role": role, "name": name, "worktree": worktree,
                                    "cwd": os.getcwd(), "backoff_s": backoff_s, "fast_s": fast_s,
                                    "give_up_after": give_up_after})
    except MeshError as exc:
        click.echo(f"mesh spawn: {exc}", err=True)
        sys.exit(exc.exit_code)
    if as_json:
        click.echo(json.dumps(out, indent=2))
    else:
        click.echo(f"{out['session']}:{out['window']} ({out['tool']}"
                   + (f", role {out['role']}" if out["role"] else "") + f") in {out['cwd']}")


@click.command("supervise")
@click.option("--backoff-s", type=float, default=Policy.backoff_s)
@click.option("--max-backoff-s", type=float, default=Policy.max_backoff_s)
@click.option("--fast-s", type=float, default=Policy.fast_s)
@click.option("--give-up-after", type=float, default=Policy.give_up_after)
@click.argument("argv", nargs=-1, required=True)
def supervise(backoff_s: float, max_backoff_s: float, fast_s: float, give_up_after: float,
              argv: tuple[str, ...]) -> None:
    """Run ARGV in this terminal; restart it after a crash (see meshd.tasks.supervise)."""
    policy = Policy(backoff_s, max_backoff_s, fast_s, int(give_up_after))
    fast = 0
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is for the agent CLI, not for us
    while True:
        started = time.monotonic()
        try:
            status = subprocess.call(list(argv), preexec_fn=_default_sigint)
        except OSError as exc:
            click.echo(f"supervise: cannot run {argv[0]}: {exc.strerror or exc}", err=True)
            status = 127
        d = after_exit(policy, status, time.monotonic() - started, fast)
        click.echo(f"supervise: {argv[0]}: {d.reason}" +
                   (f"; restarting in {d.delay_s:g} s" if d.restart else "; not restarting"),
                   err=True)
        if not d.restart:
            sys.exit(0 if status == 0 else 1)
        fast = d.fast_failures
        time.sleep(d.delay_s)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


if __name__ == "__main__":
    if sys.argv[1:2] != ["supervise"]:
        sys.exit("usage: python -m meshd.cli.task_cmd supervise [OPTIONS] -- ARGV...")
    supervise.main(sys.argv[2:], prog_name="meshd-supervise")
