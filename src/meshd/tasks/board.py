"""The task board: a pure fold over the journal's ``task.*`` events.

Any host may write any task event; the fold orders them by the journal order
(lamport, origin, seq), so every host that holds the same events shows the
same board, whatever order they arrived in.  A move the lifecycle table
refuses (two hosts raced, a worker reported after it was timed out) is not
applied: it is kept in the task's history with the reason, and the fold goes
on -- it never raises on what is in the log.

Events (bodies are JSON objects, ``id`` is the task id):

=======================  ==================================================  ===========
kind                     body (besides ``id``; ``by`` = who, for history)    lifecycle
=======================  ==================================================  ===========
task.added               text, to, to_id, role, tool, gpu_gb, ram_gb,         (QUEUED)
                         timeout_s, depends_on, critic, exec, worktree, cwd
task.offered             round, for (work | review): a bidding round opens    --
task.bid                 round, host, bids [Bid]: a host's eligible agents    --
task.assigned            round, for (work | review), agent, address, host     assign
task.claimed             agent, address, host                                 claim
task.delivered           for (work | review | feedback), attempt, agent, ok   --
task.started             note                                                 start
task.done                note, output, exit_code                              done / submit
task.failed              note, output, exit_code                              fail
task.approved            note                                                 approve
task.rejected            note                                                 reject
task.cancelled           note                                                 cancel
task.paused              note                                                 pause
task.resumed             note                                                 resume
task.abandoned           attempt, reason                                      abandon
task.requeued            --                                                   requeue
task.deadlettered        reason                                               deadletter
task.review_abandoned    reviewer, reason: the critic went away               --
agent.briefed            agent, address: the briefing goes out (journaled     --
                         first, so a restart never repeats it)
agent.unbriefed          agent, reason: its delivery was refused: try again   --
=======================  ==================================================  ===========

``task.done`` of a ``--critic`` task is the ``submit`` move (to REVIEW).
``attempt``/``round`` bind an event to one assignment or one bidding round, so a
late event about an earlier one is refused instead of hitting the current one.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from meshd.journal.event import Event
from meshd.tasks.bidding import Bid
from meshd.tasks.lifecycle import IllegalTransition, TaskState, transition

S = TaskState
KINDS = frozenset({
    "task.added", "task.offered", "task.bid", "task.assigned", "task.claimed", "task.delivered",
    "task.started", "task.done", "task.failed", "task.approved", "task.rejected",
    "task.cancelled", "task.paused", "task.resumed", "task.abandoned", "task.requeued",
    "task.deadlettered", "task.review_abandoned", "agent.briefed", "agent.unbriefed",
})
# Journal kinds that are one lifecycle move each (task.done is done or submit).
MOVES = {"task.claimed": "claim", "task.started": "start", "task.failed": "fail",
         "task.approved": "approve", "task.rejected": "reject", "task.cancelled": "cancel",
         "task.paused": "pause", "task.resumed": "resume", "task.abandoned": "abandon",
         "task.requeued": "requeue", "task.deadlettered": "deadletter"}


@dataclass(frozen=True)
class Worker:
    agent: str       # agent id ("exec:<task id>" for a headless run)
    address: str
    host: str

    def to_dict(self) -> dict[str, str]:
        return {"agent": self.agent, "address": self.address, "host": self.host}


@dataclass(frozen=True)
class Step:
    """One line of a task's history.  ``rejected`` is why the fold refused it ("" = applied)."""

    time: float
    event: str
    by: str
    note: str = ""
    rejected: str = ""

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"time": self.time, "event": self.event, "by": self.by,
                             "note": self.note}
        if self.rejected:
            d["rejected"] = self.rejected
        return d


@dataclass
class Task:
    id: str
    text: str
    home: str                       # origin of task.added: decides offers, timeouts, requeues
    by: str
    created: float
    to: str = ""
    to_id: str = ""
    role: str = ""
    tool: str = ""
    gpu_gb: float = 0.0
    ram_gb: float = 0.0
    timeout_s: float = 0.0          # 0: none; counted from the assignment
    depends_on: tuple[str, ...] = ()
    critic: bool = False
    exec: bool = False
    worktree: bool = False
    cwd: str = ""
    state: TaskState = S.QUEUED
    assignee: Worker | None = None
    reviewer: Worker | None = None
    last_worker: Worker | None = None
    attempts: int = 0               # assignments to a worker (assign or claim)
    requeues: int = 0
    round: int = 0                  # the latest bidding round
    offer: str = ""                 # the open round is for "work" or "review"; "" none open
    bids: dict[str, tuple[Bid, ...]] = field(default_factory=dict)   # latest round: host -> bids
    assigned_at: float = 0.0
    delivered: bool = False         # the worker got the prompt (this attempt)
    review_delivered: bool = False
    feedback: str = ""              # the critic's last rejection note
    feedback_pending: bool = False  # ... not yet delivered to the worker
    result: dict[str, Any] = field(default_factory=dict)
    history: list[Step] = field(default_factory=list)
    updated: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        w, r = self.assignee, self.reviewer
        return {
            "id": self.id, "text": self.text, "state": self.state.value, "home": self.home,
            "by": self.by, "created": self.created, "updated": self.updated,
            "assignee": w.address if w else None, "assignee_id": w.agent if w else None,
            "assignee_host": w.host if w else None, "reviewer": r.address if r else None,
            "attempts": self.attempts, "requeues": self.requeues, "round": self.round,
            "to": self.to, "role": self.role, "tool": self.tool,
            "needs": {"gpu_gb": self.gpu_gb, "ram_gb": self.ram_gb},
            "timeout_s": self.timeout_s, "depends_on": list(self.depends_on),
            "critic": self.critic, "exec": self.exec, "worktree": self.worktree,
            "feedback": self.feedback, "result": dict(self.result),
            "bids": {h: [b.address for b in bs] for h, bs in sorted(self.bids.items())},
            "history": [s.to_dict() for s in self.history],
        }


def _worker(b: dict[str, Any]) -> Worker:
    return Worker(str(b.get("agent", "")), str(b.get("address", "")), str(b.get("host", "")))


def _num(v: Any) -> float:
    try:
        return max(0.0, float(v or 0))
    except (TypeError, ValueError):
        return 0.0


def _int(v: Any) -> int:
    try:
        return int(v or 0)
    except (TypeError, ValueError):
        return -1


@dataclass
class Board:
    tasks: dict[str, Task] = field(default_factory=dict)
    briefed: set[str] = field(default_factory=set)          # agent ids briefed once
    given: dict[str, int] = field(default_factory=dict)     # agent id -> tasks ever given
    _log: list[Event] = field(default_factory=list)         # task events, in fold order
    _keys: set[tuple[str, int]] = field(default_factory=set)

    # -- folding ---------------------------------------------------------------------------
    def ingest(self, events: Iterable[Event]) -> None:
        """Add events in any order: applied at once when they come last, else a refold."""
        new = sorted((e for e in events if e.kind in KINDS and e.key not in self._keys),
                     key=Event.sort_key)
        if not new:
            return
        self._keys.update(e.key for e in new)
        if not self._log or self._log[-1].sort_key() < new[0].sort_key():
            self._log.extend(new)
            for e in new:
                self._apply(e)
            return
        for e in new:
            bisect.insort(self._log, e, key=Event.sort_key)
        self.tasks, self.briefed, self.given = {}, set(), {}
        for e in self._log:
            self._apply(e)

    def _apply(self, e: Event) -> None:
        b = e.body
        if e.kind == "agent.briefed":
            self.briefed.add(str(b.get("agent", "")))
            return
        if e.kind == "agent.unbriefed":
            self.briefed.discard(str(b.get("agent", "")))
            return
        tid = str(b.get("id", ""))
        if e.kind == "task.added":
            if tid and tid not in self.tasks:
                self.tasks[tid] = _new_task(tid, e)
            return
        t = self.tasks.get(tid)
        if t is None:
            return  # about a task this log does not hold (malformed): nothing to update
        t.updated = max(t.updated, e.time)
        handler = _HANDLERS.get(e.kind)
        if handler is not None:
            handler(self, t, e)
        else:
            self._move(t, e, MOVES[e.kind])

    def _move(self, t: Task, e: Event, event: str, note: str = "") -> bool:
        """Apply one lifecycle move; a refused one goes into the history, never raises."""
        by = str(e.body.get("by") or e.origin)
        note = note or str(e.body.get("note") or e.body.get("reason") or "")
        try:
            new = transition(t.state, event)
        except IllegalTransition as exc:
            t.history.append(Step(e.time, event, by, note, exc.reason))
            return False
        t.history.append(Step(e.time, event, by, note))
        t.state, t.offer = new, ""
        if event in ("abandon", "pause"):
            t.last_worker, t.assignee = t.assignee or t.last_worker, None
        elif event == "requeue":
            t.requeues += 1
        return True

    def _refuse(self, t: Task, e: Event, event: str, reason: str) -> None:
        t.history.append(Step(e.time, event, str(e.body.get("by") or e.origin),
                              str(e.body.get("note") or ""), reason))

    def _give(self, t: Task, e: Event, w: Worker) -> None:
        t.assignee, t.attempts, t.assigned_at = w, t.attempts + 1, e.time
        self.given[w.agent] = self.given.get(w.agent, 0) + 1

    # -- queries ---------------------------------------------------------------------------
    def active(self) -> dict[str, int]:
        """Agent id -> tasks it works on now (CLAIMED/WORKING as worker, REVIEW as critic)."""
        out: dict[str, int] = {}
        for t in self.tasks.values():
            w = (t.assignee if t.state in (S.CLAIMED, S.WORKING)
                 else t.reviewer if t.state is S.REVIEW else None)
            if w is not None:
                out[w.agent] = out.get(w.agent, 0) + 1
        return out

    def blockers(self, t: Task) -> tuple[list[str], list[str]]:
        """(dependencies not finished yet, dependencies that ended without completing)."""
        waiting, failed = [], []
        for d in t.depends_on:
            dep = self.tasks.get(d)
            if dep is None or dep.state in (S.FAILED, S.DEAD):
                failed.append(d)
            elif dep.state is not S.COMPLETED:
                waiting.append(d)
        return waiting, failed

    def next_id(self, host: str) -> str:
        """``t-<host>-<n>``: unique mesh-wide because only ``host`` adds tasks with its name."""
        prefix, n = f"t-{host}-", 0
        for tid in self.tasks:
            if tid.startswith(prefix) and tid[len(prefix):].isdigit():
                n = max(n, int(tid[len(prefix):]))
        return f"{prefix}{n + 1}"

    def listing(self, state: str | None = None) -> list[Task]:
        """Tasks in the order they were added (fold order), optionally of one state."""
        return [t for t in self.tasks.values() if state is None or t.state.value == state]


def _new_task(tid: str, e: Event) -> Task:
    b = e.body
    deps = b.get("depends_on") or ()
    t = Task(id=tid, text=str(b.get("text", "")), home=e.origin, by=str(b.get("by") or e.origin),
             created=e.time, to=str(b.get("to") or ""), to_id=str(b.get("to_id") or ""),
             role=str(b.get("role") or ""), tool=str(b.get("tool") or ""),
             gpu_gb=_num(b.get("gpu_gb")), ram_gb=_num(b.get("ram_gb")),
             timeout_s=_num(b.get("timeout_s")),
             depends_on=tuple(str(d) for d in deps) if isinstance(deps, list | tuple) else (),
             critic=bool(b.get("critic")), exec=bool(b.get("exec")),
             worktree=bool(b.get("worktree")), cwd=str(b.get("cwd") or ""), updated=e.time)
    t.history.append(Step(e.time, "add", t.by, ""))
    return t


# -- handlers of the kinds that are not one plain move --------------------------------------
def _offered(board: Board, t: Task, e: Event) -> None:
    rnd, kind = _int(e.body.get("round")), str(e.body.get("for") or "work")
    open_ok = (t.state is S.QUEUED) if kind == "work" else (t.state is S.REVIEW and t.reviewer is None)
    if rnd > t.round and open_ok:
        t.round, t.offer, t.bids = rnd, kind, {}


def _bid(board: Board, t: Task, e: Event) -> None:
    host = str(e.body.get("host") or e.origin)
    if _int(e.body.get("round")) == t.round and t.offer and host not in t.bids:
        raw = e.body.get("bids") or []
        t.bids[host] = tuple(Bid.from_dict(x) for x in raw if isinstance(x, dict))


def _assigned(board: Board, t: Task, e: Event) -> None:
    b, w = e.body, _worker(e.body)
    kind = str(b.get("for") or "work")
    if kind == "review":
        if t.offer != "review" or _int(b.get("round")) != t.round or t.reviewer is not None:
            board._refuse(t, e, "review", f"not the open review round ({t.round})")
            return
        t.reviewer, t.review_delivered, t.offer = w, False, ""
        board.given[w.agent] = board.given.get(w.agent, 0) + 1
        t.history.append(Step(e.time, "review", str(b.get("by") or e.origin), w.address))
        return
    if not t.exec and (t.offer != "work" or _int(b.get("round")) != t.round):
        board._refuse(t, e, "assign", f"round {b.get('round')} is not the open round")
        return
    if board._move(t, e, "assign", note=w.address):
        board._give(t, e, w)
        t.delivered = False


def _claimed(board: Board, t: Task, e: Event) -> None:
    w = _worker(e.body)
    if board._move(t, e, "claim", note=w.address):
        board._give(t, e, w)
        t.delivered = True   # the claimer has the task in hand


def _delivered(board: Board, t: Task, e: Event) -> None:
    b = e.body
    kind, agent, ok = str(b.get("for") or "work"), str(b.get("agent", "")), bool(b.get("ok", True))
    if kind == "work" and t.assignee and t.assignee.agent == agent \
            and _int(b.get("attempt")) == t.attempts:
        t.delivered = True
    elif kind == "review" and t.reviewer and t.reviewer.agent == agent:
        t.review_delivered = True
    elif kind == "feedback":
        t.feedback_pending = False
    else:
        return
    t.history.append(Step(e.time, f"delivered:{kind}", str(b.get("by") or e.origin),
                          str(b.get("note") or ("" if ok else "not confirmed"))))


def _done(board: Board, t: Task, e: Event) -> None:
    if board._move(t, e, "submit" if t.critic else "done"):
        t.result = _result(e)
        t.reviewer, t.review_delivered = None, False


def _failed(board: Board, t: Task, e: Event) -> None:
    if board._move(t, e, "fail"):
        t.result = _result(e)


def _rejected(board: Board, t: Task, e: Event) -> None:
    if board._move(t, e, "reject"):
        t.feedback, t.feedback_pending = str(e.body.get("note") or ""), True
        t.reviewer, t.assigned_at = None, e.time


def _abandoned(board: Board, t: Task, e: Event) -> None:
    attempt = _int(e.body.get("attempt"))
    if attempt != t.attempts:
        board._refuse(t, e, "abandon", f"about attempt {attempt}, the task is on attempt {t.attempts}")
        return
    board._move(t, e, "abandon")


def _review_abandoned(board: Board, t: Task, e: Event) -> None:
    who = str(e.body.get("reviewer", ""))
    if t.state is S.REVIEW and t.reviewer is not None and t.reviewer.agent == who:
        t.history.append(Step(e.time, "review-abandoned", str(e.body.get("by") or e.origin),
                              str(e.body.get("reason") or "")))
        t.reviewer, t.review_delivered = None, False


def _result(e: Event) -> dict[str, Any]:
    return {k: e.body[k] for k in ("note", "output", "exit_code", "worktree") if k in e.body}


_HANDLERS = {"task.offered": _offered, "task.bid": _bid, "task.assigned": _assigned,
             "task.claimed": _claimed, "task.delivered": _delivered, "task.done": _done,
             "task.failed": _failed, "task.rejected": _rejected, "task.abandoned": _abandoned,
             "task.review_abandoned": _review_abandoned}


def fold(events: Iterable[Event]) -> Board:
    """The board of a set of events (any order; duplicates by ``(origin, seq)`` count once)."""
    board = Board()
    board.ingest(events)
    return board
