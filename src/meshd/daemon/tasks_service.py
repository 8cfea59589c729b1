"""The task service's state, settings, and what it needs of the daemon.

Everything durable is in the journal (the board is its fold); :class:`TaskService`
holds only this host's timers and in-flight work, which a restart may forget: the
reconciler (:mod:`meshd.daemon.tasks_loop`) then redoes what is still due.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Protocol

from meshd.daemon.architect import Term
from meshd.journal.event import Event
from meshd.paths import StatePaths
from meshd.registry.fold import Entry, Registry
from meshd.tasks.board import Board
from meshd.tmux.runner import Tmux

# Events after which a task nobody took is offered again at once.
RESET_KINDS = frozenset({"task.done", "task.failed", "task.cancelled", "task.abandoned",
                         "task.approved", "task.deadlettered", "task.paused", "agent.seen"})


@dataclass(frozen=True)
class Settings:
    """The ``[tasks]`` config section (read with these defaults until config.py has it)."""

    bid_window_s: float = 0.5
    rebid_s: float = 2.0
    rebid_max_s: float = 60.0
    max_requeues: int = 3
    tick_s: float = 0.25
    deliver_wait_s: float = 5.0
    unreachable_grace_s: float = 60.0
    briefing: bool = True
    brief_tools: str = "claude,codex,gemini,aider,cursor-agent"
    framework_file: str = ""


def settings_of(cfg: Any) -> Settings:
    section = getattr(cfg, "tasks", None)
    if section is None:
        return Settings()
    default = Settings()
    return dataclasses.replace(default, **{f.name: getattr(section, f.name)
                                           for f in dataclasses.fields(Settings)
                                           if hasattr(section, f.name)})


class PeersLike(Protocol):
    def hosts_up(self) -> set[str]: ...


class ApiLike(Protocol):
    def _states(self, entries: list[Entry]) -> dict[str, str]: ...
    def _sender_entry(self, args: dict[str, Any]) -> Entry | None: ...


class TasksDaemon(Protocol):
    """What the task service needs of the daemon (meshd.daemon.app.Daemon has it)."""

    @property
    def host(self) -> str: ...
    @property
    def paths(self) -> StatePaths: ...
    @property
    def cfg(self) -> Any: ...
    @property
    def tmux(self) -> Tmux: ...
    @property
    def registry(self) -> Registry: ...
    @property
    def peers(self) -> PeersLike: ...
    @property
    def api(self) -> ApiLike: ...
    @property
    def last_seen(self) -> dict[str, float]: ...
    @property
    def tasks(self) -> TaskService: ...
    @property
    def term(self) -> Term: ...

    async def record(self, kind: str, body: dict[str, Any]) -> Event: ...
    async def record_many(self, items: list[tuple[str, dict[str, Any]]]) -> list[Event]: ...
    def architect_id(self) -> str | None: ...
    def reachable(self) -> set[str]: ...
    def want_scan(self) -> None: ...


def by_meshd(d: TasksDaemon) -> str:
    """The ``by`` of events the service writes on its own."""
    return f"meshd@{d.host}"


@dataclass
class TaskService:
    """The board and this host's memory of timers; everything durable is in the journal."""

    settings: Settings
    board: Board = field(default_factory=Board)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    add_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    opened: dict[tuple[str, int], float] = field(default_factory=dict)  # round -> monotonic
    closed: set[tuple[str, int]] = field(default_factory=set)           # rounds nobody won
    retry_at: dict[str, float] = field(default_factory=dict)            # task -> re-offer at
    empty_rounds: dict[str, int] = field(default_factory=dict)
    missing_since: dict[str, float] = field(default_factory=dict)       # host -> monotonic
    brief_next: dict[str, float] = field(default_factory=dict)          # agent -> monotonic
    inflight: set[str] = field(default_factory=set)
    running: set[str] = field(default_factory=set)                      # headless task ids
    tg: asyncio.TaskGroup | None = None

    def note(self, events: list[Event]) -> None:
        self.board.ingest(events)
        if any(e.kind in RESET_KINDS for e in events):
            self.retry_at.clear()
        self.wake.set()
