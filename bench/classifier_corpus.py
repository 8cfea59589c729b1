"""The pane classifier's confusion matrix over the recorded corpus (tests/corpus).

Each corpus file is a real screen captured from a program in a known state (see
tests/corpus/record.py).  Prints, per program and overall, a matrix of recorded state
(rows) against classify()'s answer (columns), accuracy, and the two errors that matter
most for safety: a draft or dialog called idle (a message would clobber it / answer it).

usage: python bench/classifier_corpus.py [CORPUS_DIR]
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from meshd.delivery.classify import PaneSnapshot, PaneState, classify

STATES = [s.value for s in PaneState]


def load(path: Path) -> tuple[str, str, PaneSnapshot]:
    d = json.loads(path.read_text())
    snap = PaneSnapshot(tool=d["tool"], lines=tuple(d["lines"]), cursor_x=d["cursor_x"],
                        cursor_y=d["cursor_y"], width=d["width"], height=d["height"],
                        in_mode=d.get("pane_in_mode", False), changing=d.get("changing", False),
                        shell_child=d.get("shell_child", False), title=d.get("title", ""),
                        cursor_visible=d.get("cursor_visible"))
    return d.get("program", d["tool"]), d["state"], snap


def table(counts: Counter[tuple[str, str]], title: str) -> None:
    total = sum(counts.values())
    right = sum(n for (want, got), n in counts.items() if want == got)
    print(f"\n{title}: {right}/{total} correct ({100 * right / max(total, 1):.1f} %)")
    print("  recorded \\ classified " + "".join(f"{s:>9}" for s in STATES))
    for want in STATES:
        row = [counts.get((want, got), 0) for got in STATES]
        if any(row):
            print(f"  {want:<22}" + "".join(f"{n:>9}" for n in row))


def main() -> None:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else \
        Path(__file__).resolve().parent.parent / "tests" / "corpus"
    per: dict[str, Counter[tuple[str, str]]] = {}
    unsafe = []
    for path in sorted(root.rglob("*.json")):
        program, want, snap = load(path)
        got = classify(snap).state.value
        per.setdefault(program, Counter())[(want, got)] += 1
        if want in ("typing", "dialog") and got == "idle":
            unsafe.append(str(path.relative_to(root)))
    overall: Counter[tuple[str, str]] = Counter()
    for program in sorted(per):
        table(per[program], program)
        overall.update(per[program])
    table(overall, "all programs")
    print(f"\nunsafe errors (draft or dialog classified idle): {len(unsafe)}")
    for p in unsafe:
        print(f"  {p}")


if __name__ == "__main__":
    main()
