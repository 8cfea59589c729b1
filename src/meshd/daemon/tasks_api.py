"""Unix-socket ops of the task service, and its wiring into the daemon.

Ops (args -> result; every write returns the task as ``task_show`` does):

* ``task_add``    {text, to?, role?, tool?, critic?, gpu_gb?, ram_gb?, timeout_s?,
  depends_on?, exec?, worktree?, cwd?} -> task (``id`` = ``t-<host>-<n>``)
* ``task_list``   {state?} -> [task];  ``task_show`` {id} -> task
* ``task_claim`` / ``task_start`` / ``task_done`` / ``task_fail`` {id, note?}
* ``task_cancel`` / ``task_pause`` / ``task_resume`` {id, note?}
* ``task_review`` {id, approve: bool, note?}
* ``agent_spawn`` {tool, role?, worktree?, cwd?, name?, backoff_s?, fast_s?, give_up_after?}

The caller is the agent of ``sender_pane``/``sender_socket`` (as for ``whoami``), else
``sender``.  An agent may start/finish only a task it was given, and may not review
its own work; a person or a script (no pane) may act on any task.  A move the
lifecycle refuses raises :class:`meshd.errors.Refused` (exit 3) with the reason and
the legal moves; an unknown task id is a UsageError (exit 1).

Any host may write any task event: the fold settles races (docs/tasks.md), so no op
needs the task's home to be reachable, and no peer call is needed either -- the
winner's host acts on the replicated ``task.assigned``.

Wiring (docs/tasks.md, "Wiring"): ``self.tasks = tasks_api.attach(self)`` in
``Daemon.__init__``; ``tasks_api.on_events(self, events)`` in ``Daemon._note``;
``tasks_api.run(self)`` in the root TaskGroup; :data:`OPS` in ``Api.ops``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from meshd.daemon import architect, tasks_exec
from meshd.daemon.tasks_loop import run as run
from meshd.daemon.tasks_service import TasksDaemon, TaskService, settings_of
from meshd.errors import Refused, UnknownAgent, UsageError
from meshd.journal.event import Event
from meshd.registry.fold import Entry
from meshd.tasks.board import Task, Worker
from meshd.tasks.lifecycle import IllegalTransition, TaskState, transition

Op = Callable[[TasksDaemon, dict[str, Any]], Awaitable[Any]]


def attach(daemon: Any) -> TaskService:
    """A task service for ``daemon``, from its config.  Sync and cheap: no I/O."""
    return TaskService(settings_of(daemon.cfg))


def on_events(daemon: TasksDaemon, events: list[Event]) -> None:
    """Every new event, local or replicated (called from ``Daemon._note``): fold and wake."""
    daemon.tasks.note(events)


# -- reads ---------------------------------------------------------------------------------
async def op_task_list(d: TasksDaemon, args: dict[str, Any]) -> list[dict[str, Any]]:
    state = str(args.get("state") or "") or None
    if state is not None and state not in {s.value for s in TaskState}:
        raise UsageError(f"unknown state {state!r}",
                         hint=f"states: {', '.join(s.value for s in TaskState)}")
    return [t.to_dict() for t in d.tasks.board.listing(state)]


async def op_task_show(d: TasksDaemon, args: dict[str, Any]) -> dict[str, Any]:
    return _task(d, args).to_dict()


# -- add -----------------------------------------------------------------------------------
async def op_task_add(d: TasksDaemon, args: dict[str, Any]) -> dict[str, Any]:
    _check_term(d, args)
    svc = d.tasks
    body = await _added_body(d, args)
    async with svc.add_lock:
        tid = svc.board.next_id(d.host)
        await d.record("task.added", {"id": tid, **body})
    return svc.board.tasks[tid].to_dict()


async def _added_body(d: TasksDaemon, args: dict[str, Any]) -> dict[str, Any]:
    text = str(args.get("text") or "").strip()
    if not text:
        raise UsageError("a task needs a text")
    limit = d.cfg.delivery.max_message_bytes
    if len(text.encode()) > limit:
        raise UsageError(f"the task text is {len(text.encode())} bytes, over the {limit}-byte "
                         "message limit", hint="put the details in a file and name it")
    to, role, tool = (str(args.get(k) or "") for k in ("to", "role", "tool"))
    ex, tree = bool(args.get("exec")), bool(args.get("worktree"))
    if to and (role or tool):
        raise UsageError("--to names one agent; it does not combine with --role or --tool")
    to_id = ""
    if to:
        entry = _resolve(d, to)
        to, to_id = entry.agent.address, entry.agent.id
    if ex and (to or role or not tool):
        raise UsageError("--exec runs a tool headless: give --tool TOOL, not --to or --role")
    if tree and not ex:
        raise UsageError("--worktree goes with --exec (a headless run in its own git worktree)")
    cwd = str(args.get("cwd") or "")
    if ex:
        await asyncio.to_thread(tasks_exec.binary_of, tool)
        if tree and (not cwd or await asyncio.to_thread(tasks_exec.git_toplevel, Path(cwd)) is None):
            raise UsageError(f"--worktree: {cwd or 'the caller'} is not inside a git repository")
    deps = [str(x) for x in args.get("depends_on") or ()]
    unknown = [x for x in deps if x not in d.tasks.board.tasks]
    if unknown:
        raise UsageError(f"unknown task(s) in --depends-on: {', '.join(unknown)}",
                         hint="see `mesh task list`")
    return {"text": text, "to": to, "to_id": to_id, "role": role, "tool": tool,
            "gpu_gb": _nonneg(args, "gpu_gb"), "ram_gb": _nonneg(args, "ram_gb"),
            "timeout_s": _nonneg(args, "timeout_s"), "depends_on": deps,
            "critic": bool(args.get("critic")), "exec": ex, "worktree": tree, "cwd": cwd,
            "by": _caller_name(d, args)}


def _nonneg(args: dict[str, Any], key: str) -> float:
    try:
        v = float(args.get(key) or 0)
    except (TypeError, ValueError):
        raise UsageError(f"{key} must be a number") from None
    if v < 0:
        raise UsageError(f"{key} must be >= 0")
    return v


# -- moves ---------------------------------------------------------------------------------
async def op_task_claim(d: TasksDaemon, args: dict[str, Any]) -> dict[str, Any]:
    t, me = _task(d, args), _caller(d, args)
    if me is None:
        raise UsageError("claim from an agent's pane: the agent becomes the worker",
                         hint="run it in the agent's tmux pane ($TMUX_PANE)")
    if t.to_id and t.to_id != me.agent.id:
        raise Refused(f"{t.id} is for {t.to}, not for {me.agent.address}")
    w = Worker(me.agent.id, me.agent.address, me.agent.host)
    return await _move(d, t, "task.claimed", "claim", args, w.to_dict())


async def op_task_start(d: TasksDaemon, args: dict[str, Any]) -> dict[str, Any]:
    t = _task(d, args)
    _must_be_worker(d, t, args)
    return await _move(d, t, "task.started", "start", args)


async def op_task_done(d: TasksDaemon, args: dict[str, Any]) -> dict[str, Any]:
    t = _task(d, args)
    _must_be_worker(d, t, args)
    return await _move(d, t, "task.done", "submit" if t.critic else "done", args)


async def op_task_fail(d: TasksDaemon, args: dict[str, Any]) -> dict[str, Any]:
    t = _task(d, args)
    _must_be_worker(d, t, args)
    return await _move(d, t, "task.failed", "fail", args)


async def op_task_cancel(d: TasksDaemon, args: dict[str, Any]) -> dict[str, Any]:
    return await _move(d, _task(d, args), "task.cancelled", "cancel", args)


async def op_task_pause(d: TasksDaemon, args: dict[str, Any]) -> dict[str, Any]:
    return await _move(d, _task(d, args), "task.paused", "pause", args)


async def op_task_resume(d: TasksDaemon, args: dict[str, Any]) -> dict[str, Any]:
    return await _move(d, _task(d, args), "task.resumed", "resume", args)


async def op_task_review(d: TasksDaemon, args: dict[str, Any]) -> dict[str, Any]:
    t, me = _task(d, args), _caller(d, args)
    if me is not None and t.assignee is not None and me.agent.id == t.assignee.agent:
        raise Refused(f"{me.agent.address} did {t.id}; another agent reviews it")
    if bool(args.get("approve")):
        return await _move(d, t, "task.approved", "approve", args)
    return await _move(d, t, "task.rejected", "reject", args)


async def _move(d: TasksDaemon, t: Task, kind: str, event: str, args: dict[str, Any],
                extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check the move on this host's board, journal it, and confirm the fold took it."""
    _check_term(d, args)
    try:
        transition(t.state, event)
    except IllegalTransition as exc:
        raise Refused(f"{t.id}: {exc.reason}", hint=f"`mesh task show {t.id}`") from None
    body = {"id": t.id, "by": _caller_name(d, args), "note": str(args.get("note") or ""),
            **(extra or {})}
    ev = await d.record(kind, body)
    now = d.tasks.board.tasks[t.id]   # a refold may have replaced the record
    step = next((s for s in reversed(now.history)
                 if s.event == event and s.time == ev.time and s.by == body["by"]), None)
    if step is not None and step.rejected:  # an event from another host got in first
        raise Refused(f"{t.id}: {step.rejected}", hint=f"`mesh task show {t.id}`")
    return now.to_dict()


# -- agents --------------------------------------------------------------------------------
async def op_agent_spawn(d: TasksDaemon, args: dict[str, Any]) -> dict[str, Any]:
    tool = str(args.get("tool") or "")
    if not tool:
        raise UsageError("spawn needs --tool TOOL")
    policy = {k: float(args[k]) for k in ("backoff_s", "max_backoff_s", "fast_s", "give_up_after")
              if args.get(k) is not None}
    cwd = Path(str(args.get("cwd") or d.paths.home))
    out = await asyncio.to_thread(tasks_exec.spawn_agent, d.tmux, d.paths.state_dir, tool,
                                  str(args.get("role") or ""), cwd, bool(args.get("worktree")),
                                  str(args.get("name") or ""), policy)
    d.want_scan()
    return out


# -- helpers -------------------------------------------------------------------------------
def _task(d: TasksDaemon, args: dict[str, Any]) -> Task:
    tid = str(args.get("id") or "")
    t = d.tasks.board.tasks.get(tid)
    if t is None:
        raise UsageError(f"unknown task {tid!r}", hint="see `mesh task list`")
    return t


def _resolve(d: TasksDaemon, address: str) -> Entry:
    entry = d.registry.resolve(address, time.time(), d.cfg.discovery.alias_ttl_s)
    if entry is None:
        raise UnknownAgent(f"unknown agent {address!r}", hint="see `mesh agents`")
    return entry


def _caller(d: TasksDaemon, args: dict[str, Any]) -> Entry | None:
    return d.api._sender_entry(args)


def _check_term(d: TasksDaemon, args: dict[str, Any]) -> None:
    me = _caller(d, args) if args.get("term") not in (None, "") else None
    architect.check_term(d.term, args, me.agent.id if me is not None else None)


def _caller_name(d: TasksDaemon, args: dict[str, Any]) -> str:
    me = _caller(d, args)
    return me.agent.address if me else str(args.get("sender") or "?")


def _must_be_worker(d: TasksDaemon, t: Task, args: dict[str, Any]) -> None:
    me = _caller(d, args)
    if me is not None and t.assignee is not None and me.agent.id != t.assignee.agent:
        raise Refused(f"{t.id} is {t.assignee.address}'s task, not {me.agent.address}'s",
                      hint="`mesh task claim ID` takes a queued task")


OPS: dict[str, Op] = {
    "task_add": op_task_add, "task_list": op_task_list, "task_show": op_task_show,
    "task_claim": op_task_claim, "task_start": op_task_start, "task_done": op_task_done,
    "task_fail": op_task_fail, "task_cancel": op_task_cancel, "task_pause": op_task_pause,
    "task_resume": op_task_resume, "task_review": op_task_review,
    "agent_spawn": op_agent_spawn,
}
