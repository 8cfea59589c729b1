"""The task lifecycle as one transition table.  Pure.

Every legal move is one entry of :data:`TABLE` (state -> event -> next state);
anything else raises :class:`IllegalTransition` naming the state, the event
and the events that are legal there.  The journal kinds map onto these events
in :mod:`meshd.tasks.board` (``task.done`` of a ``--critic`` task is
``submit``, everything else is its own name).

::

    QUEUED ──assign/claim──► CLAIMED ──start──► WORKING ──done──► COMPLETED
      │                        │                  │ └──submit──► REVIEW ──approve──► COMPLETED
      │                        │                  │               └──reject──► WORKING
      │                        └──────fail────────┴──► FAILED
      │                        └──────abandon─────┴──► ABANDONED ──requeue──► QUEUED
      │                                                   └──deadletter──► DEAD
      └──pause──► PAUSED ──resume──► QUEUED          cancel: any live state ──► FAILED
"""

from __future__ import annotations

from enum import StrEnum


class TaskState(StrEnum):
    QUEUED = "queued"          # offered to the mesh, waiting for a worker
    CLAIMED = "claimed"        # a worker was picked (or claimed it); not started yet
    WORKING = "working"        # the worker said it started
    REVIEW = "review"          # the worker is done; a critic reviews it (--critic)
    COMPLETED = "completed"
    FAILED = "failed"          # the worker gave up, a dependency failed, or it was cancelled
    ABANDONED = "abandoned"    # the worker died, timed out or could not be reached
    PAUSED = "paused"          # held: not offered, no worker
    DEAD = "dead"              # dead-lettered: abandoned more often than the requeue limit


S = TaskState
TABLE: dict[TaskState, dict[str, TaskState]] = {
    S.QUEUED: {"assign": S.CLAIMED, "claim": S.CLAIMED, "pause": S.PAUSED, "cancel": S.FAILED},
    S.CLAIMED: {"start": S.WORKING, "done": S.COMPLETED, "submit": S.REVIEW, "fail": S.FAILED,
                "abandon": S.ABANDONED, "pause": S.PAUSED, "cancel": S.FAILED},
    S.WORKING: {"done": S.COMPLETED, "submit": S.REVIEW, "fail": S.FAILED,
                "abandon": S.ABANDONED, "pause": S.PAUSED, "cancel": S.FAILED},
    S.REVIEW: {"approve": S.COMPLETED, "reject": S.WORKING, "cancel": S.FAILED},
    S.ABANDONED: {"requeue": S.QUEUED, "deadletter": S.DEAD, "cancel": S.FAILED},
    S.PAUSED: {"resume": S.QUEUED, "cancel": S.FAILED},
    S.COMPLETED: {},
    S.FAILED: {},
    S.DEAD: {},
}
EVENTS: frozenset[str] = frozenset(ev for moves in TABLE.values() for ev in moves)
FINAL: frozenset[TaskState] = frozenset(s for s, moves in TABLE.items() if not moves)
# States in which the task has a worker (an assignee agent).
ASSIGNED: frozenset[TaskState] = frozenset({S.CLAIMED, S.WORKING, S.REVIEW})


class IllegalTransition(Exception):
    """``event`` is not legal in ``state``; ``reason`` says so and lists what is."""

    def __init__(self, state: TaskState, event: str) -> None:
        self.state, self.event = state, event
        legal = legal_events(state)
        self.reason = (f"a {state.value} task cannot take {event!r}; legal: "
                       + (", ".join(legal) if legal else f"nothing ({state.value} is final)"))
        super().__init__(self.reason)


def legal_events(state: TaskState) -> list[str]:
    return sorted(TABLE[state])


def transition(state: TaskState, event: str) -> TaskState:
    """The state after ``event``; raises :class:`IllegalTransition` when it is not legal."""
    try:
        return TABLE[state][event]
    except KeyError:
        raise IllegalTransition(state, event) from None
