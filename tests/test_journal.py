"""Journal store (real SQLite WAL) and the registry fold's algebra."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.journal.event import Event, ordered, version_vector
from meshd.journal.store import Journal
from meshd.registry.fold import Agent, changes, fold


def mk_agent(host: str, pane: int, window: str = "w", tool: str = "shell") -> Agent:
    return Agent(id=f"{host}:1:%{pane}", host=host, address=f"{host}-s-{window}", session="s",
                 session_id="$0", window=window, window_id=f"@{pane}", pane_id=f"%{pane}",
                 pane_index=0, pane_pid=100 + pane, tool=tool)


def test_append_persists_and_seq_never_reused(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.db", tmp_path / "audit.jsonl", "a")
    e1 = j.append("x", {"n": 1}, 1.0)
    e2 = j.append("x", {"n": 2}, 2.0)
    assert (e1.seq, e2.seq) == (1, 2) and e2.lamport > e1.lamport
    gen = j.generation
    j.close()
    j = Journal(tmp_path / "j.db", tmp_path / "audit.jsonl", "a")
    assert j.generation == gen + 1
    assert j.append("x", {}, 3.0).seq == 3
    assert [e.seq for e in j.all()] == [1, 2, 3]
    mode = j._db.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal" and j._db.execute("PRAGMA synchronous").fetchone()[0] == 2


def test_audit_mirrors_every_event_and_heals_after_crash(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    j = Journal(tmp_path / "j.db", audit, "a")
    j.append_many([("k", {"i": i}) for i in range(5)], 1.0)
    j.close()
    lines = audit.read_text().splitlines()
    assert len(lines) == 5
    # Simulate a crash that committed an event but tore its audit line.
    audit.write_text("\n".join(lines[:3]) + "\n" + lines[3][:10])
    j = Journal(tmp_path / "j.db", audit, "a")
    keys = set()
    for line in audit.read_text().splitlines():
        try:
            d = json.loads(line)
        except ValueError:
            continue
        keys.add((d["origin"], d["seq"]))
    assert {("a", s) for s in range(1, 6)} <= keys


def test_ingest_is_idempotent_and_advances_lamport(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.db", tmp_path / "a.jsonl", "a")
    remote = [Event("b", i, 10 + i, 0.0, "x", {}) for i in range(1, 4)]
    assert len(j.ingest(remote)) == 3
    assert j.ingest(remote) == []
    assert j.append("x", {}, 0.0).lamport > 13
    assert version_vector(j.all()) == {"a": 1, "b": 3}
    assert [e.key for e in j.since({"b": 2})] == [("b", 3), ("a", 1)] or \
        sorted(e.key for e in j.since({"b": 2})) == [("a", 1), ("b", 3)]


def test_sigkill_during_appends_loses_no_acknowledged_event(tmp_path: Path) -> None:
    """A writer acknowledges each append on stdout; SIGKILL it; every ack must be on disk."""
    code = (
        "import sys; from pathlib import Path; from meshd.journal.store import Journal\n"
        f"j = Journal(Path({str(tmp_path / 'j.db')!r}), Path({str(tmp_path / 'a.jsonl')!r}), 'a')\n"
        "i = 0\n"
        "while True:\n"
        "    e = j.append('x', {'i': i}, 0.0); print(e.seq, flush=True); i += 1\n"
    )
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        acked = [int(proc.stdout.readline()) for _ in range(30)]  # type: ignore[union-attr]
        os.kill(proc.pid, 9)
        proc.wait()
        j = Journal(tmp_path / "j.db", tmp_path / "a.jsonl", "a")
        seqs = [e.seq for e in j.all()]
        assert set(acked) <= set(seqs)
        assert seqs == list(range(1, len(seqs) + 1))  # a gap-free prefix, no reuse
        j.close()


# -- fold algebra ----------------------------------------------------------------------------
hosts = st.sampled_from(["a", "b", "c"])


@st.composite
def histories(draw: st.DrawFn) -> list[Event]:
    """Per-host event sequences with causal lamports, as a real journal would hold."""
    events: list[Event] = []
    lamport = 0
    seq: dict[str, int] = {}
    for _ in range(draw(st.integers(0, 30))):
        host = draw(hosts)
        pane = draw(st.integers(0, 4))
        lamport += draw(st.integers(0, 2))
        seq[host] = seq.get(host, 0) + 1
        if draw(st.booleans()):
            a = mk_agent(host, pane, window=draw(st.sampled_from(["w", "x", "y"])))
            events.append(Event(host, seq[host], lamport, 0.0, "agent.seen", {"agent": a.to_dict()}))
        else:
            events.append(Event(host, seq[host], lamport, 0.0, "agent.gone",
                                {"id": f"{host}:1:%{pane}"}))
    return events


def snapshot(events: list[Event]) -> dict[str, tuple[Agent, tuple[str, ...]]]:
    reg = fold(events)
    return {k: (v.agent, tuple(sorted(v.aliases))) for k, v in reg.agents.items()}


@settings(max_examples=300)
@given(histories(), st.randoms())
def test_fold_is_independent_of_arrival_order(events: list[Event], rnd) -> None:  # type: ignore[no-untyped-def]
    shuffled = list(events)
    rnd.shuffle(shuffled)
    assert snapshot(shuffled) == snapshot(events)


@settings(max_examples=200)
@given(histories(), histories())
def test_merge_is_commutative_associative_idempotent(x: list[Event], y: list[Event]) -> None:
    y = [Event("z" + e.origin, e.seq, e.lamport, e.time, e.kind, e.body) for e in y]
    union = lambda *hs: list({e.key: e for h in hs for e in h}.values())  # noqa: E731
    assert snapshot(union(x, y)) == snapshot(union(y, x))
    assert snapshot(union(x, x)) == snapshot(x)
    assert snapshot(union(union(x, y), y)) == snapshot(union(x, union(y, y)))


def test_rename_keeps_identity_and_alias() -> None:
    a = mk_agent("h", 1, window="old")
    b = mk_agent("h", 1, window="new")
    events = [Event("h", 1, 1, 100.0, "agent.seen", {"agent": a.to_dict()}),
              Event("h", 2, 2, 200.0, "agent.seen", {"agent": b.to_dict()})]
    reg = fold(events)
    assert len(reg.agents) == 1
    assert reg.resolve("h-s-new", 300.0, 60)
    assert reg.resolve("h-s-old", 250.0, 60) is not None
    assert reg.resolve("h-s-old", 1000.0, 60) is None  # the alias expired


def test_changes_emit_seen_and_gone_only_for_differences() -> None:
    a, b = mk_agent("h", 1), mk_agent("h", 2, window="x")
    assert changes({a.id: a}, [a]) == []
    kinds = [k for k, _ in changes({a.id: a}, [b])]
    assert sorted(kinds) == ["agent.gone", "agent.seen"]
    assert ordered([]) == []
