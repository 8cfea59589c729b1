"""The task service's reconciler: what this host must do now, given the board.

Level-triggered: every step looks at the whole board (folded from the journal)
and does what is due, so a missed wake-up, a restart or a replayed event costs
at most one tick.  A step has four parts:

* **home** (tasks this host added): open a bidding round (``task.offered``), close
  it after ``tasks.bid_window_s`` or once every reachable host bid, and journal the
  winner (``task.assigned``); cancel a task whose dependency failed; abandon a task
  whose worker's pane closed, whose worker's host stayed unreachable for
  ``tasks.unreachable_grace_s`` or that passed its ``--timeout``; requeue an
  abandoned task up to ``tasks.max_requeues`` times, then dead-letter it; watch
  headless runs.  A round nobody won is offered again after ``tasks.rebid_s``,
  doubling up to ``tasks.rebid_max_s`` (at once when a task ends or an agent appears);
* **bidder** (every host): for each open round it has not answered, one ``task.bid``
  with its eligible agents (:mod:`meshd.tasks.bidding`), possibly none;
* **worker host** and **briefing**: :mod:`meshd.daemon.tasks_deliver`.

Deliveries and headless launches run as tasks of :func:`run`'s TaskGroup, one per
key at a time (``TaskService.inflight``), so a slow pane never stalls the step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from meshd.daemon import tasks_deliver, tasks_exec
from meshd.daemon.tasks_service import TasksDaemon, by_meshd, settings_of
from meshd.errors import MeshError
from meshd.hardware import gpu, memory
from meshd.registry.fold import Entry
from meshd.tasks.bidding import Bid, Candidate, Free, Want, refusal, winner
from meshd.tasks.board import MOVES, Board, Task, Worker
from meshd.tasks.lifecycle import FINAL, IllegalTransition, TaskState, transition

log = logging.getLogger(__name__)
S = TaskState
GB = 1024 ** 3


async def run(d: TasksDaemon) -> None:
    """Tick until cancelled; deliveries run in this TaskGroup and are cancelled with it."""
    svc = d.tasks
    async with asyncio.TaskGroup() as tg:
        svc.tg = tg
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(svc.wake.wait(), svc.settings.tick_s)
                svc.wake.clear()
                await step(d, time.time())
        finally:
            svc.tg = None


async def step(d: TasksDaemon, now: float) -> None:
    d.tasks.settings = settings_of(d.cfg)   # follows a SIGHUP reload
    for part in (_home, _bid, tasks_deliver.work, tasks_deliver.brief):
        try:
            await part(d, now)
        except MeshError as exc:
            log.warning("tasks: %s failed: %s", part.__name__.strip("_"), exc.message)
        except Exception:  # a bug in one part must not stop messaging or the other parts
            log.exception("tasks: %s failed", part.__name__.strip("_"))


# -- home ----------------------------------------------------------------------------------
async def _home(d: TasksDaemon, now: float) -> None:
    svc, mono = d.tasks, time.monotonic()
    items: list[tuple[str, dict[str, Any]]] = []
    taken: set[str] = set()   # agents given a task in this step
    for t in list(svc.board.tasks.values()):
        if t.home != d.host:
            continue
        if t.exec and t.state in (S.CLAIMED, S.WORKING):
            svc.running.add(t.id)
            items += await tasks_exec.watch(d, t, now)
        elif t.id in svc.running:   # cancelled, paused or reported while its window runs
            svc.running.discard(t.id)
            await tasks_exec.stop(d, t)
        elif t.state in FINAL:
            continue
        else:
            items += _home_duty(d, t, now, mono, taken)
    items = [(k, b) for k, b in items if _legal(svc.board, k, b)]
    if items:
        await d.record_many(items)


def _legal(board: Board, kind: str, body: dict[str, Any]) -> bool:
    """Guard against a home duty the fold would refuse (it would be retried every tick)."""
    t = board.tasks.get(str(body.get("id")))
    event = {"task.done": "submit" if t and t.critic else "done"}.get(kind, MOVES.get(kind))
    if t is None or event is None:
        return True
    try:
        transition(t.state, event)
    except IllegalTransition as exc:
        log.error("tasks: not journaling %s for %s: %s", kind, t.id, exc.reason)
        return False
    return True


def _home_duty(d: TasksDaemon, t: Task, now: float, mono: float,
               taken: set[str]) -> list[tuple[str, dict[str, Any]]]:
    svc, by = d.tasks, by_meshd(d)
    if t.state is S.QUEUED:
        waiting, failed = svc.board.blockers(t)
        if failed:   # QUEUED cannot "fail" (nobody worked on it): it is cancelled, as FAILED
            return [("task.cancelled", {"id": t.id, "by": by,
                                        "note": f"dependency {', '.join(failed)} did not complete"})]
        if waiting:
            return []
        if t.exec:
            w = Worker(f"exec:{t.id}", f"exec:{t.id}", d.host)
            return [("task.assigned", {"id": t.id, "for": "work", "round": t.round, "by": by,
                                       **w.to_dict()})]
        return _offer_or_decide(d, t, "work", mono, taken)
    if t.state is S.REVIEW:
        if t.reviewer is None:
            return _offer_or_decide(d, t, "review", mono, taken)
        why = _gone(d, t.reviewer, mono)
        return [("task.review_abandoned", {"id": t.id, "reviewer": t.reviewer.agent, "by": by,
                                           "reason": why})] if why else []
    if t.state is S.ABANDONED:
        if t.requeues < svc.settings.max_requeues:
            return [("task.requeued", {"id": t.id, "by": by,
                                       "note": f"requeue {t.requeues + 1} of {svc.settings.max_requeues}"})]
        return [("task.deadlettered", {"id": t.id, "by": by,
                                       "reason": f"abandoned {t.requeues + 1} times"})]
    if t.state in (S.CLAIMED, S.WORKING) and t.assignee is not None:
        why = _gone(d, t.assignee, mono)
        if why is None and t.timeout_s and now - t.assigned_at > t.timeout_s:
            why = f"timed out after {t.timeout_s:g} s"
        if why:
            return [("task.abandoned", {"id": t.id, "attempt": t.attempts, "by": by, "reason": why})]
    return []


def _gone(d: TasksDaemon, w: Worker, mono: float) -> str | None:
    """Why the worker can no longer do the task, or None while it can."""
    svc = d.tasks
    if w.agent not in d.registry.agents:
        return f"{w.address}'s pane closed"
    if w.host in d.reachable():
        svc.missing_since.pop(w.host, None)
        return None
    since = svc.missing_since.setdefault(w.host, mono)
    grace = svc.settings.unreachable_grace_s
    return f"host {w.host} unreachable for {grace:g} s" if mono - since > grace else None


def _offer_or_decide(d: TasksDaemon, t: Task, kind: str, mono: float,
                     taken: set[str]) -> list[tuple[str, dict[str, Any]]]:
    svc = d.tasks
    key = (t.id, t.round)
    if t.offer != kind or key in svc.closed:
        if mono < svc.retry_at.get(t.id, 0.0):
            return []
        svc.retry_at.pop(t.id, None)
        svc.opened[(t.id, t.round + 1)] = mono
        return [("task.offered", {"id": t.id, "round": t.round + 1, "for": kind})]
    opened = svc.opened.setdefault(key, mono)
    if not d.reachable() <= t.bids.keys() and mono - opened < svc.settings.bid_window_s:
        return []
    busy = set(svc.board.active()) | taken
    exclude = frozenset({t.assignee.agent}) if kind == "review" and t.assignee else frozenset()
    win = winner([b for bs in t.bids.values() for b in bs], svc.board.given,
                 busy=busy, live=set(d.registry.agents), exclude=exclude)
    svc.opened.pop(key, None)
    if win is None:
        svc.closed.add(key)
        n = svc.empty_rounds[t.id] = svc.empty_rounds.get(t.id, 0) + 1
        svc.retry_at[t.id] = mono + min(svc.settings.rebid_s * 2 ** (n - 1), svc.settings.rebid_max_s)
        return []
    svc.empty_rounds.pop(t.id, None)
    taken.add(win.agent)
    return [("task.assigned", {"id": t.id, "round": t.round, "for": kind, "by": by_meshd(d),
                               "agent": win.agent, "address": win.address, "host": win.host})]


# -- bidder --------------------------------------------------------------------------------
async def _bid(d: TasksDaemon, now: float) -> None:
    board = d.tasks.board
    rounds = [t for t in board.tasks.values() if t.offer and d.host not in t.bids]
    if not rounds:
        return
    local = d.registry.of_host(d.host)
    states = await asyncio.to_thread(d.api._states, local) if local else {}
    needs = any(t.gpu_gb or t.ram_gb for t in rounds)
    free = await asyncio.to_thread(_free, board, d.host) if needs else Free()
    active = board.active()
    items: list[tuple[str, dict[str, Any]]] = []
    for t in rounds:
        want = _want(t)
        bids = [_bid_of(x) for x in local
                if refusal(_candidate(x, states, active), want, free) is None]
        items.append(("task.bid", {"id": t.id, "round": t.round, "host": d.host,
                                   "bids": [b.to_dict() for b in bids]}))
    await d.record_many(items)


def _want(t: Task) -> Want:
    if t.offer == "review":
        return Want(exclude=frozenset({t.assignee.agent}) if t.assignee else frozenset())
    return Want(to=t.to_id or t.to, role=t.role, tool=t.tool, gpu_gb=t.gpu_gb, ram_gb=t.ram_gb)


def _candidate(x: Entry, states: dict[str, str], active: dict[str, int]) -> Candidate:
    a = x.agent
    return Candidate(a.id, a.address, a.tool, a.role, a.session, states.get(a.id, "unknown"),
                     active.get(a.id, 0))


def _bid_of(x: Entry) -> Bid:
    a = x.agent
    return Bid(a.id, a.address, a.host, a.tool, a.role, x.since)


def _free(board: Board, host: str) -> Free:
    """Free GPU memory (the emptiest GPU) and RAM, less what running tasks here declared."""
    gpus = gpu.probe()
    gpu_gb = max(((g.total_bytes - g.used_bytes) / GB for g in gpus), default=0.0)
    ram_gb = memory.probe().ram_available_bytes / GB
    for t in board.tasks.values():
        if t.state in (S.CLAIMED, S.WORKING) and t.assignee and t.assignee.host == host:
            gpu_gb, ram_gb = gpu_gb - t.gpu_gb, ram_gb - t.ram_gb
    return Free(max(gpu_gb, 0.0), max(ram_gb, 0.0))
