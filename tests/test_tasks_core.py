"""The pure task core: lifecycle table, board fold, bidding rule, supervisor policy."""

from __future__ import annotations

import itertools
import random
from typing import Any

import click
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.cli.task_cmd import parse_duration, parse_needs
from meshd.journal.event import Event
from meshd.tasks import prompts
from meshd.tasks.bidding import Bid, Candidate, Free, Want, available, refusal, winner
from meshd.tasks.board import Board, fold
from meshd.tasks.lifecycle import EVENTS, FINAL, TABLE, IllegalTransition, TaskState, transition
from meshd.tasks.supervise import Policy, after_exit

S = TaskState


# -- lifecycle -----------------------------------------------------------------------------
@pytest.mark.parametrize("state,event", list(itertools.product(TaskState, sorted(EVENTS))))
def test_every_state_event_pair(state: TaskState, event: str) -> None:
    if event in TABLE[state]:
        assert transition(state, event) is TABLE[state][event]
    else:
        with pytest.raises(IllegalTransition) as exc:
            transition(state, event)
        assert state.value in exc.value.reason and repr(event) in exc.value.reason
        for legal in TABLE[state]:
            assert legal in exc.value.reason


def test_table_shape_follows_the_design() -> None:
    path = [(S.QUEUED, "assign"), (S.CLAIMED, "start"), (S.WORKING, "submit"),
            (S.REVIEW, "reject"), (S.WORKING, "submit"), (S.REVIEW, "approve")]
    for state, event in path[:-1]:
        assert transition(state, event) is not None
    assert transition(S.REVIEW, "approve") is S.COMPLETED
    assert {S.COMPLETED, S.FAILED, S.DEAD} == FINAL
    assert all(TABLE[s].get("cancel") is S.FAILED for s in TaskState if s not in FINAL)
    assert TABLE[S.ABANDONED] == {"requeue": S.QUEUED, "deadletter": S.DEAD, "cancel": S.FAILED}
    assert set(TABLE) == set(TaskState)
    with pytest.raises(IllegalTransition, match=r"nothing \(completed is final\)"):
        transition(S.COMPLETED, "start")


# -- board fold ----------------------------------------------------------------------------
class Log:
    """Builds events of several hosts with per-origin seqs and a shared lamport clock."""

    def __init__(self) -> None:
        self.seq: dict[str, int] = {}
        self.lamport = 0
        self.events: list[Event] = []

    def add(self, origin: str, kind: str, lamport: int | None = None, /, **body: Any) -> Event:
        self.seq[origin] = self.seq.get(origin, 0) + 1
        self.lamport += 1
        e = Event(origin, self.seq[origin], self.lamport if lamport is None else lamport,
                  1000.0 + self.lamport, kind, body)
        self.events.append(e)
        return e


W1 = {"agent": "b:1:%1", "address": "b-main-w1", "host": "b"}
W2 = {"agent": "c:1:%2", "address": "c-main-w2", "host": "c"}


def assigned(log: Log, tid: str = "t-a-1", worker: dict[str, str] = W1, rnd: int = 1,
             **extra: Any) -> None:
    log.add("a", "task.offered", id=tid, round=rnd, **{"for": "work"})
    log.add("b", "task.bid", id=tid, round=rnd, host="b", bids=[{**worker, "since": [1, "b", 1]}])
    log.add("a", "task.assigned", id=tid, round=rnd, **{"for": "work"}, **worker, **extra)


def test_happy_path() -> None:
    log = Log()
    log.add("a", "task.added", id="t-a-1", text="do it", by="a-main-lead")
    assigned(log)
    log.add("b", "task.delivered", id="t-a-1", attempt=1, agent=W1["agent"], **{"for": "work"})
    log.add("b", "task.started", id="t-a-1", by="b-main-w1")
    log.add("b", "task.done", id="t-a-1", by="b-main-w1", note="did it")
    t = fold(log.events).tasks["t-a-1"]
    assert t.state is S.COMPLETED and t.attempts == 1 and t.home == "a"
    assert t.assignee is not None and t.assignee.address == "b-main-w1" and t.delivered
    assert t.result == {"note": "did it"}
    assert [h.event for h in t.history] == ["add", "assign", "delivered:work", "start", "done"]
    assert t.to_dict()["bids"] == {"b": ["b-main-w1"]}


def test_critic_reject_then_approve() -> None:
    log = Log()
    log.add("a", "task.added", id="t-a-1", text="x", critic=True)
    assigned(log)
    log.add("b", "task.done", id="t-a-1", note="v1")
    b = fold(log.events)
    assert b.tasks["t-a-1"].state is S.REVIEW and b.active() == {}
    log.add("a", "task.offered", id="t-a-1", round=2, **{"for": "review"})
    log.add("a", "task.assigned", id="t-a-1", round=2, **{"for": "review"}, **W2)
    assert fold(log.events).active() == {W2["agent"]: 1}
    log.add("c", "task.rejected", id="t-a-1", by="c-main-w2", note="tests fail")
    t = fold(log.events).tasks["t-a-1"]
    assert t.state is S.WORKING and t.feedback == "tests fail" and t.feedback_pending
    assert t.reviewer is None and t.assignee is not None and t.assignee.agent == W1["agent"]
    log.add("b", "task.delivered", id="t-a-1", **{"for": "feedback"}, agent=W1["agent"])
    log.add("b", "task.done", id="t-a-1", note="v2")
    log.add("a", "task.offered", id="t-a-1", round=3, **{"for": "review"})
    log.add("a", "task.assigned", id="t-a-1", round=3, **{"for": "review"}, **W2)
    log.add("c", "task.approved", id="t-a-1", by="c-main-w2")
    t = fold(log.events).tasks["t-a-1"]
    assert t.state is S.COMPLETED and not t.feedback_pending and t.result["note"] == "v2"


def test_race_done_vs_abandoned_is_settled_by_journal_order() -> None:
    """The worker reports done while the home times it out: whichever sorts first wins."""
    for done_first in (True, False):
        log = Log()
        log.add("a", "task.added", id="t-a-1", text="x")
        assigned(log)
        base = log.lamport
        log.add("b", "task.done", base + (1 if done_first else 2), id="t-a-1")
        log.add("a", "task.abandoned", base + (2 if done_first else 1), id="t-a-1",
                attempt=1, reason="timed out")
        t = fold(log.events).tasks["t-a-1"]
        assert t.state is (S.COMPLETED if done_first else S.ABANDONED)
        refused = [h for h in t.history if h.rejected]
        assert len(refused) == 1 and refused[0].event == ("abandon" if done_first else "done")


def test_stale_round_attempt_and_duplicates_are_refused() -> None:
    log = Log()
    log.add("a", "task.added", id="t-a-1", text="x")
    log.add("a", "task.added", id="t-a-1", text="a second add of the same id is ignored")
    assigned(log)
    log.add("a", "task.abandoned", id="t-a-1", attempt=1, reason="pane closed")
    log.add("a", "task.requeued", id="t-a-1")
    log.add("a", "task.assigned", id="t-a-1", round=1, **{"for": "work"}, **W2)  # round 1 is over
    assigned(log, worker=W2, rnd=2)
    log.add("a", "task.abandoned", id="t-a-1", attempt=1, reason="late news of attempt 1")
    log.add("x", "task.started", id="t-nobody")                                  # unknown task
    b = fold(log.events + log.events[:3])                                        # duplicates
    t = b.tasks["t-a-1"]
    assert t.text == "x" and t.state is S.CLAIMED and t.attempts == 2 and t.requeues == 1
    assert t.assignee is not None and t.assignee.agent == W2["agent"]
    assert t.last_worker is not None and t.last_worker.agent == W1["agent"]
    assert [h.event for h in t.history if h.rejected] == ["assign", "abandon"]
    assert b.given == {W1["agent"]: 1, W2["agent"]: 1}


def test_pause_resume_deadletter_blockers_and_ids() -> None:
    log = Log()
    log.add("a", "task.added", id="t-a-1", text="x")
    log.add("a", "task.added", id="t-a-2", text="y", depends_on=["t-a-1", "t-a-9"])
    log.add("a", "task.added", id="t-a-3", text="z", depends_on=["t-a-1"])
    assigned(log)
    log.add("a", "task.paused", id="t-a-1")
    b = fold(log.events)
    t = b.tasks["t-a-1"]
    assert t.state is S.PAUSED and t.assignee is None and b.active() == {}
    assert b.blockers(b.tasks["t-a-2"]) == (["t-a-1"], ["t-a-9"])
    assert b.blockers(b.tasks["t-a-3"]) == (["t-a-1"], [])
    log.add("a", "task.resumed", id="t-a-1")
    for n in range(2, 6):
        assigned(log, rnd=n)
        log.add("a", "task.abandoned", id="t-a-1", attempt=n, reason="gone")
        log.add("a", "task.requeued" if n < 5 else "task.deadlettered", id="t-a-1")
    b = fold(log.events)
    assert b.tasks["t-a-1"].state is S.DEAD and b.tasks["t-a-1"].requeues == 3
    assert b.blockers(b.tasks["t-a-3"]) == ([], ["t-a-1"])
    assert b.next_id("a") == "t-a-4" and b.next_id("b") == "t-b-1"
    assert [t.id for t in b.listing("queued")] == ["t-a-2", "t-a-3"]


def test_briefed_is_remembered() -> None:
    log = Log()
    log.add("b", "agent.briefed", agent="b:1:%1", address="b-main-w1")
    log.add("b", "agent.briefed", agent="b:1:%2", address="b-main-w2")
    log.add("b", "agent.unbriefed", agent="b:1:%2", reason="typing")
    assert fold(log.events).briefed == {"b:1:%1"}


KINDS = ["task.added", "task.offered", "task.bid", "task.assigned", "task.claimed",
         "task.delivered", "task.started", "task.done", "task.failed", "task.approved",
         "task.rejected", "task.cancelled", "task.paused", "task.resumed", "task.abandoned",
         "task.requeued", "task.deadlettered", "task.review_abandoned", "agent.briefed",
         "agent.unbriefed"]
_action = st.tuples(st.sampled_from(["a", "b", "c"]), st.sampled_from(KINDS),
                    st.sampled_from(["t-a-1", "t-b-1"]), st.integers(1, 3), st.integers(0, 3),
                    st.sampled_from([W1, W2]), st.sampled_from(["work", "review", "feedback"]),
                    st.booleans(), st.integers(1, 40))


def _events(actions: list[tuple[Any, ...]]) -> list[Event]:
    log = Log()
    for tid in ("t-a-1", "t-b-1"):
        log.add(tid[2], "task.added", 0, id=tid, text=tid, critic=tid == "t-b-1")
    for origin, kind, tid, rnd, attempt, w, what, flag, lamport in actions:
        body = {"id": tid, "round": rnd, "attempt": attempt, "for": what, "reviewer": w["agent"],
                "host": origin, "bids": [{**w, "since": [1, w["host"], 1]}], **w}
        if kind == "task.added":
            body["critic"] = flag
        log.add(origin, kind, lamport, **body)
    return log.events


def _snapshot(b: Board) -> Any:
    return ({k: t.to_dict() for k, t in b.tasks.items()}, sorted(b.briefed), b.given,
            list(b.tasks))


@settings(max_examples=300, deadline=None)
@given(st.lists(_action, max_size=40), st.randoms(use_true_random=False))
def test_fold_is_order_independent(actions: list[tuple[Any, ...]], rnd: random.Random) -> None:
    events = _events(actions)
    want = _snapshot(fold(events))
    shuffled = events[:]
    rnd.shuffle(shuffled)
    assert _snapshot(fold(shuffled)) == want
    # Arrival in random chunks (replication), with duplicates: the same board.
    board, i = Board(), 0
    while i < len(shuffled):
        n = rnd.randint(1, 5)
        board.ingest(shuffled[i:i + n] + shuffled[max(0, i - 2):i])
        i += n
    assert _snapshot(board) == want


# -- bidding -------------------------------------------------------------------------------
def cand(**kw: Any) -> Candidate:
    base: dict[str, Any] = {"id": "h:1:%1", "address": "h-main-a", "tool": "claude", "role": "",
                            "session": "main", "pane_state": "idle", "active_tasks": 0}
    return Candidate(**{**base, **kw})


def test_eligibility() -> None:
    free = Free(gpu_gb=8, ram_gb=16)
    assert refusal(cand(), Want(), free) is None
    assert refusal(cand(pane_state="busy"), Want(), free) == "the pane is busy"
    assert refusal(cand(pane_state="typing"), Want(), free)
    assert refusal(cand(pane_state="dialog", tool="other"), Want(), free)
    assert refusal(cand(pane_state="unknown", tool="other"), Want(), free) is None
    assert refusal(cand(pane_state="unknown"), Want(), free) == "the pane is unknown"
    assert refusal(cand(role="dev"), Want(role="review"), free)
    assert refusal(cand(role="dev"), Want(role="dev"), free) is None
    assert refusal(cand(), Want(tool="codex"), free)
    assert refusal(cand(tool="shell"), Want(), free)
    assert refusal(cand(tool="shell"), Want(tool="shell"), free) is None
    assert refusal(cand(tool="shell"), Want(to="h-main-a"), free) is None
    assert refusal(cand(), Want(to="h-main-b"), free)
    assert refusal(cand(), Want(to="h:1:%1", role="ignored-with-to"), free) is None
    assert refusal(cand(active_tasks=1), Want(), free)
    assert refusal(cand(session="meshd-exec"), Want(), free)
    assert refusal(cand(), Want(exclude=frozenset({"h:1:%1"})), free)
    assert refusal(cand(), Want(gpu_gb=8, ram_gb=16), free) is None
    assert "GPU" in str(refusal(cand(), Want(gpu_gb=9), free))
    assert "RAM" in str(refusal(cand(), Want(ram_gb=17), free))
    assert available("repl", "unknown") and not available("codex", "unknown")


BIDS = [Bid("a:1", "a-main-x", "a", since=(5, "a", 3)), Bid("b:1", "b-main-y", "b", since=(2, "b", 1)),
        Bid("b:2", "b-main-z", "b", since=(2, "b", 1)), Bid("c:1", "c-main-q", "c", since=(9, "c", 1))]


@given(st.permutations(BIDS))
def test_winner_is_deterministic(bids: list[Bid]) -> None:
    assert winner(bids, {}) == BIDS[1]                           # earliest registered, then address
    assert winner(bids, {"b:1": 1}) == BIDS[2]                   # fewer tasks given wins first
    assert winner(bids, {"b:1": 1, "b:2": 1}, busy={"a:1"}) == BIDS[3]
    assert winner(bids, {}, live={"c:1", "a:1"}) == BIDS[0]
    assert winner(bids, {}, exclude={"b:1", "b:2"}) == BIDS[0]
    assert winner(bids, {}, busy={b.agent for b in BIDS}) is None
    assert Bid.from_dict(BIDS[0].to_dict()) == BIDS[0]


# -- supervisor, CLI parsing, prompts -------------------------------------------------------
def test_supervisor_policy() -> None:
    p = Policy(backoff_s=1, max_backoff_s=5, fast_s=10, give_up_after=3)
    assert not after_exit(p, 0, 1, 2).restart
    d1 = after_exit(p, 1, 1, 0)
    d2 = after_exit(p, 1, 1, d1.fast_failures)
    assert (d1.restart, d1.delay_s, d2.delay_s) == (True, 1, 2)
    assert not after_exit(p, 1, 1, d2.fast_failures).restart          # third fast failure
    long = after_exit(p, 1, 60, 2)
    assert long.restart and long.fast_failures == 0 and long.delay_s == 1
    assert after_exit(Policy(1, 5, 10, 99), 1, 0, 10).delay_s == 5


def test_cli_parsing() -> None:
    assert parse_duration("90") == 90 and parse_duration("10m") == 600
    assert parse_duration("1h30m") == 5400 and parse_duration("500ms") == 0.5
    for bad in ("", "ten", "5x", "m5"):
        with pytest.raises(click.BadParameter):
            parse_duration(bad)
    assert parse_needs("gpu=8,ram=16GB") == {"gpu_gb": 8, "ram_gb": 16}
    assert parse_needs("") == {}
    with pytest.raises(click.BadParameter):
        parse_needs("cpu=4")


def test_prompts_say_how_to_report() -> None:
    log = Log()
    log.add("a", "task.added", id="t-a-1", text="fix the build", by="a-main-lead", timeout_s=60)
    t = fold(log.events).tasks["t-a-1"]
    text = prompts.work(t)
    assert "t-a-1" in text and "mesh task done t-a-1" in text and "mesh task fail t-a-1" in text
    assert "fix the build" in text and "60 s" in text
    assert "mesh task review t-a-1 --approve" in prompts.review(t)
    b = prompts.briefing("h-main-b", "h-main-a", "/home/u/.agents/FRAMEWORK.md")
    assert "ARCHITECT is h-main-a" in b and "FRAMEWORK.md" in b and "notify-pane" in b
    assert "mesh lock" in b and "mesh task" in b
    assert "You are the ARCHITECT" in prompts.briefing("h-main-a", "h-main-a", "F")


# -- the ARCHITECT: choice and terms (pure) ---------------------------------------------------
def _entries(*spec: tuple[str, str]) -> list[Any]:
    from meshd.registry.fold import Agent, Entry

    return [Entry(Agent(id=f"id-{name}", host=host, address=name, session="s", session_id="$1",
                        window=name, window_id="@1", pane_id="%1", pane_index=0, pane_pid=1,
                        tool="claude"), (i, host, i), 0.0)
            for i, (name, host) in enumerate(spec)]


def test_architect_is_the_earliest_agent_of_a_live_host() -> None:
    from meshd.daemon.architect import choose

    listing = _entries(("a-lead", "a"), ("b-dev", "b"), ("c-x", "c"))
    pick = lambda **kw: (choose(listing, **{"here": "c", "up": set(), "last_seen": {}, "started": 0.0,  # noqa: E731
                                            "grace_s": 20.0, "now": 100.0, **kw}) or listing[0]).agent.address
    assert pick(up={"a"}) == "a-lead"
    assert pick(last_seen={"a": 90.0}) == "a-lead"                     # within the grace
    assert pick(last_seen={"a": 50.0}, up={"b"}) == "b-dev"           # a is gone, b is up
    assert pick(last_seen={"a": 50.0, "b": 50.0}) == "c-x"            # only this host
    assert pick(started=95.0) == "a-lead"                             # just started: count all
    assert choose([], here="c", up=set(), last_seen={}, started=0, grace_s=1, now=1) is None


def test_terms_fold_to_the_largest_and_stale_terms_are_refused() -> None:
    from meshd.daemon.architect import Term, TermBook, check_term
    from meshd.errors import Refused, UsageError

    ev = lambda o, s, body: Event(o, s, s, 0.0, "architect.term", body)  # noqa: E731
    events = [ev("a", 1, {"architect": "x", "term": 1}), ev("b", 1, {"architect": "y", "term": 1}),
              ev("b", 2, {"architect": "x", "term": 2}), ev("a", 2, {"architect": "x", "term": 2}),
              ev("c", 1, {"term": "bad"})]
    for perm in itertools.permutations(events):
        book = TermBook()
        book.apply(perm)
        assert book.current == Term(2, "x") and not book.contested
    split = TermBook()
    split.apply(events[:2])                       # both sides of a partition claimed term 1
    assert split.current == Term(1, "y") and split.contested
    check_term(Term(2, "x"), {"term": 2})
    check_term(Term(2, "x"), {"term": 2}, caller="x")
    check_term(Term(2, "x"), {})
    with pytest.raises(Refused, match="stale architect term 1"):
        check_term(Term(2, "x"), {"term": "1"})
    with pytest.raises(Refused, match="belongs to architect"):
        check_term(Term(2, "x"), {"term": 2}, caller="y")
    with pytest.raises(UsageError):
        check_term(Term(2, "x"), {"term": "two"})
