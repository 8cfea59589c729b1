"""Task deliveries into this host's panes, and the briefing of new agents.

* **worker host**: deliver the task, the review, or the critic's rejection into its
  own agents' panes (section 5 rules, in a thread, waiting up to
  ``tasks.deliver_wait_s`` for a pane that turned busy); a refused task delivery
  abandons the attempt (the home then requeues it), a refused review delivery
  drops the reviewer (the home picks another); headless attempts are launched here;
* **briefing**: once per new agent whose tool is in ``tasks.brief_tools``, when its
  pane can take it: who the architect is, the rules, the tools, the framework file.
  ``agent.briefed`` is journaled before the delivery (``agent.unbriefed`` if it was
  refused), so it is sent once, across restarts too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

from meshd.daemon import tasks_exec
from meshd.daemon.tasks_service import TasksDaemon, by_meshd
from meshd.delivery.message import compose
from meshd.delivery.service import SendOptions, deliver
from meshd.errors import MeshError
from meshd.registry.fold import Agent
from meshd.tasks import prompts
from meshd.tasks.bidding import EXEC_SESSION, available
from meshd.tasks.board import Task, Worker
from meshd.tasks.lifecycle import TaskState
from meshd.tmux.runner import PaneGone

log = logging.getLogger(__name__)
S = TaskState
BRIEF_RETRY_S = 2.0


async def work(d: TasksDaemon, now: float) -> None:
    for t in list(d.tasks.board.tasks.values()):
        w, r = t.assignee, t.reviewer
        if t.state is S.CLAIMED and w and w.host == d.host and not t.delivered:
            if t.exec:
                _spawn(d, f"exec:{t.id}:{t.attempts}", partial(tasks_exec.launch, d, t))
            else:
                _spawn(d, f"work:{t.id}:{t.attempts}", partial(_deliver_task, d, t, w, "work", t.attempts))
        elif t.state is S.REVIEW and r and r.host == d.host and not t.review_delivered:
            _spawn(d, f"review:{t.id}:{t.round}", partial(_deliver_task, d, t, r, "review", t.attempts))
        elif t.state is S.WORKING and t.feedback_pending and w and w.host == d.host:
            _spawn(d, f"feedback:{t.id}:{t.assigned_at}",
                   partial(_deliver_task, d, t, w, "feedback", t.attempts))


def _spawn(d: TasksDaemon, key: str, make: Callable[[], Awaitable[None]]) -> None:
    """Run ``make()`` in the service's TaskGroup unless a job with ``key`` is running."""
    svc = d.tasks
    if key in svc.inflight or svc.tg is None:
        return
    svc.inflight.add(key)

    async def guarded() -> None:
        try:
            await make()
        except MeshError as exc:
            log.warning("tasks: %s: %s", key, exc.message)
        except Exception:
            log.exception("tasks: %s failed", key)
        finally:
            svc.inflight.discard(key)
            svc.wake.set()

    svc.tg.create_task(guarded())


_TEXT: dict[str, Callable[[Task], str]] = {
    "work": prompts.work, "review": prompts.review, "feedback": prompts.feedback}


async def _deliver_task(d: TasksDaemon, t: Task, w: Worker, kind: str, attempt: int) -> None:
    base = {"id": t.id, "for": kind, "attempt": attempt, "agent": w.agent, "by": by_meshd(d)}
    entry = d.registry.agents.get(w.agent)
    try:
        if entry is None:
            raise PaneGone(f"{w.address} is gone")
        receipt = await asyncio.to_thread(deliver_text, d, entry.agent, t.by, _TEXT[kind](t))
    except MeshError as exc:
        reason = f"delivery to {w.address} failed: {exc.message}"
        if isinstance(exc, PaneGone):
            d.want_scan()
        if kind == "work":
            await d.record("task.abandoned", {"id": t.id, "attempt": attempt, "by": by_meshd(d),
                                              "reason": reason})
        elif kind == "review":
            await d.record("task.review_abandoned", {"id": t.id, "reviewer": w.agent,
                                                     "by": by_meshd(d), "reason": reason})
        else:
            await d.record("task.delivered", {**base, "ok": False, "note": reason})
        return
    await d.record("task.delivered", {**base, "ok": receipt.submitted, "pane": receipt.pane_id})


def deliver_text(d: TasksDaemon, agent: Agent, sender: str, body: str) -> Any:
    """Blocking: one delivery into a local pane by the section 5 rules (waits a little)."""
    dc = d.cfg.delivery
    opts = SendOptions(wait_s=d.tasks.settings.deliver_wait_s,
                       enter_delay_s=dc.enter_delay_ms / 1000,
                       verify_timeout_s=dc.verify_timeout_ms / 1000, enter_retries=dc.enter_retries)
    text = compose(sender, body, time.time())
    return deliver(d.tmux, agent.pane_id, agent.pane_pid, agent.tool, text, opts,
                   d.paths.state_dir / "panes")


# -- briefing ------------------------------------------------------------------------------
async def brief(d: TasksDaemon, now: float) -> None:
    svc, mono = d.tasks, time.monotonic()
    if not svc.settings.briefing:
        return
    tools = {x.strip() for x in svc.settings.brief_tools.split(",") if x.strip()}
    todo = [x for x in d.registry.of_host(d.host)
            if x.agent.tool in tools and x.agent.session != EXEC_SESSION
            and x.agent.id not in svc.board.briefed and mono >= svc.brief_next.get(x.agent.id, 0.0)
            and f"brief:{x.agent.id}" not in svc.inflight]
    if not todo:
        return
    states = await asyncio.to_thread(d.api._states, todo)
    for x in todo:
        if available(x.agent.tool, states.get(x.agent.id, "unknown")):
            _spawn(d, f"brief:{x.agent.id}", partial(_deliver_briefing, d, x.agent))
        else:
            svc.brief_next[x.agent.id] = mono + BRIEF_RETRY_S


def framework_path(d: TasksDaemon) -> Path:
    configured = d.tasks.settings.framework_file
    return Path(configured).expanduser() if configured else d.paths.framework


async def _deliver_briefing(d: TasksDaemon, agent: Agent) -> None:
    """Journal the briefing first, then deliver it; a refusal takes the mark back.

    At most once: a daemon stop while the text is being typed must not repeat it after
    the restart (the thread finishes the delivery; the mark is already journaled).
    """
    arch = d.architect_id()
    if arch == agent.id and d.term.architect != arch:
        d.tasks.brief_next[agent.id] = time.monotonic() + 0.5   # its term is being claimed
        return
    entry = d.registry.agents.get(arch) if arch else None
    lead = entry.agent.address if entry else None
    term = d.term.term if arch is not None and d.term.architect == arch else None
    text = prompts.briefing(agent.address, lead, str(framework_path(d)), term)
    await d.record("agent.briefed", {"agent": agent.id, "address": agent.address, "architect": lead})
    try:
        await asyncio.to_thread(deliver_text, d, agent, by_meshd(d), text)
    except MeshError as exc:
        d.tasks.brief_next[agent.id] = time.monotonic() + BRIEF_RETRY_S
        log.info("briefing %s waits: %s", agent.address, exc.message)
        await d.record("agent.unbriefed", {"agent": agent.id, "reason": exc.message})
