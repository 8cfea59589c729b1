"""The texts meshd types into panes for tasks, reviews and briefings.  Pure.

Each says what to do and how to report back with ``mesh task ...``; the
delivery layer adds the ``[from ...]`` tag and sanitises them.
"""

from __future__ import annotations

from meshd.tasks.board import Task


def work(t: Task) -> str:
    """The prompt a worker gets with the task."""
    lines = [f"TASK {t.id} (from {t.by}): {t.text}"]
    if t.feedback:
        lines.append(f"An earlier attempt was sent back by its reviewer: {t.feedback}")
    lines += [f"Report back: `mesh task start {t.id}` now, then "
              f"`mesh task done {t.id} --note 'what you did'` "
              f"or `mesh task fail {t.id} --note 'why'`."]
    if t.timeout_s:
        lines.append(f"Time limit: {t.timeout_s:g} s from now; after that it goes to someone else.")
    return "\n".join(lines)


def review(t: Task) -> str:
    """The prompt a critic gets: the task, what the worker said, how to judge."""
    worker = t.assignee.address if t.assignee else "?"
    note = str(t.result.get("note") or "(no note)")
    return "\n".join([
        f"REVIEW {t.id}: {worker} reports this task done: {t.text}",
        f"Their note: {note}",
        f"Check the work, then `mesh task review {t.id} --approve` or "
        f"`mesh task review {t.id} --reject --note 'what is wrong'`.",
    ])


def feedback(t: Task) -> str:
    """The critic's rejection, sent back to the worker."""
    return "\n".join([
        f"TASK {t.id} was sent back by its reviewer: {t.feedback or '(no note)'}",
        f"Fix it, then `mesh task done {t.id} --note 'what changed'` "
        f"(or `mesh task fail {t.id} --note 'why'`).",
    ])


def briefing(me: str, architect: str | None, framework: str, term: int | None = None) -> str:
    """What a new agent learns on arrival: who leads, the rules, the tools."""
    lead = ("You are the ARCHITECT: the earliest agent in the mesh. You keep the framework file "
            f"{framework} and split work into tasks."
            + (f" Your term is {term}: add `--term {term}` to the task commands you give as "
               "architect, so that they are refused if another agent has taken over."
               if term else "")
            if architect == me else
            f"The ARCHITECT is {architect or '(none yet)'}; follow {framework}, which it keeps.")
    return "\n".join([
        f"Welcome to the mesh, {me}. {lead}",
        "Rules: lock a shared file before you edit it (`mesh lock acquire PATH --mode write`, "
        "then `mesh lock release PATH`); report every task you take; never type into "
        "another agent's pane yourself.",
        "Talk: `notify-pane --list` shows the agents; `notify-pane ADDR 'message'` "
        "(--file PATH to hand over a file).",
        "Tasks: `mesh task list`, `mesh task add 'text' [--role R | --tool T | --to ADDR]`; "
        "when one is given to you: `mesh task start ID`, then `mesh task done ID --note ...` "
        "or `mesh task fail ID --note ...`.",
    ])
