"""classify() on recorded screens of the real CLIs (tests/corpus), plus focused rules.

The corpus is recorded by tests/corpus/record.py from the real programs in tmux; each file's
state is known from how it was produced, never from classify() itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from meshd.delivery.classify import (
    PASTE_SETTLE_S,
    QUEUES_WHILE_BUSY,
    PaneSnapshot,
    PaneState,
    cells,
    classify,
    faint_cells,
    strip_sgr,
    typed_text,
)

CORPUS = Path(__file__).parent / "corpus"
FILES = sorted(CORPUS.glob("*/*.json"))


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def snapshot_of(rec: dict[str, Any], **changes: Any) -> PaneSnapshot:
    fields: dict[str, Any] = {
        "tool": rec["tool"], "lines": tuple(rec["lines"]), "cursor_x": rec["cursor_x"],
        "cursor_y": rec["cursor_y"], "width": rec["width"], "height": rec["height"],
        "in_mode": rec["pane_in_mode"], "changing": rec.get("changing", False),
        "shell_child": rec.get("shell_child", False), "title": rec.get("title", ""),
        "cursor_visible": rec.get("cursor_visible"),
    }
    return PaneSnapshot(**(fields | changes))


def test_corpus_is_present() -> None:
    programs = {p.parent.name for p in FILES}
    assert {"claude", "codex", "gemini", "aider", "bash", "python"} <= programs


@pytest.mark.parametrize("path", FILES, ids=[f"{p.parent.name}/{p.stem}" for p in FILES])
def test_recorded_screen(path: Path) -> None:
    rec = load(path)
    verdict = classify(snapshot_of(rec))
    screen = "\n".join(strip_sgr(line).rstrip() for line in rec["lines"]).rstrip()
    assert verdict.state == rec["state"], f"{rec['note']}: {verdict}\n{screen}"


@pytest.mark.parametrize("path", [p for p in FILES if load(p)["state"] == "idle"],
                         ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_idle_screens_without_title_or_cursor_flag_are_not_misread(path: Path) -> None:
    """meshd may not read pane_title / cursor_flag: an idle screen must still read idle."""
    verdict = classify(snapshot_of(load(path), title="", cursor_visible=None))
    assert verdict.state is PaneState.IDLE, verdict


@pytest.mark.parametrize("path", [p for p in FILES if load(p)["state"] != "idle"],
                         ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_no_busy_typing_or_dialog_screen_reads_idle_without_title(path: Path) -> None:
    rec = load(path)
    verdict = classify(snapshot_of(rec, title="", cursor_visible=None))
    if rec["program"] == "codex" and rec["state"] == "busy" and "streaming" in rec["note"]:
        pytest.skip("Codex hides its 'Working' row while text streams: only the title shows it")
    assert verdict.state is not PaneState.IDLE, verdict


@pytest.mark.parametrize("path", FILES[:: max(1, len(FILES) // 12)],
                         ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_copy_mode_is_never_idle(path: Path) -> None:
    verdict = classify(snapshot_of(load(path), in_mode=True))
    assert verdict.state is PaneState.UNKNOWN
    assert "copy-mode" in verdict.reason


def _snap(tool: str, rows: list[str], cursor: tuple[int, int], **kw: Any) -> PaneSnapshot:
    height = max(len(rows), 10)
    return PaneSnapshot(tool=tool, lines=tuple(rows + [""] * (height - len(rows))),
                        cursor_x=cursor[0], cursor_y=cursor[1], width=80, height=height, **kw)


CLAUDE_BOX = ["\x1b[38;5;244m" + "─" * 80, "", "\x1b[38;5;244m" + "─" * 80,
              "  ? for shortcuts"]


def test_claude_dim_placeholder_is_not_a_draft() -> None:
    rows = ["", "❯ \x1b[7mT\x1b[0;2mry \"fix lint errors\"\x1b[0m"]
    box = [CLAUDE_BOX[0], *rows[1:], CLAUDE_BOX[2], CLAUDE_BOX[3]]
    verdict = classify(_snap("claude", box, (2, 1)))
    assert verdict.state is PaneState.IDLE, verdict


def test_claude_same_text_undimmed_is_a_draft() -> None:
    box = [CLAUDE_BOX[0], "❯ Try \"fix lint errors\"\x1b[7m \x1b[0m", CLAUDE_BOX[2], CLAUDE_BOX[3]]
    verdict = classify(_snap("claude", box, (24, 1)))
    assert verdict.state is PaneState.TYPING
    assert verdict.evidence == ('❯ Try "fix lint errors"',)


def test_claude_one_letter_draft_under_the_drawn_cursor_is_a_draft() -> None:
    box = [CLAUDE_BOX[0], "❯ \x1b[7mx\x1b[0m", CLAUDE_BOX[2], CLAUDE_BOX[3]]
    assert classify(_snap("claude", box, (2, 1))).state is PaneState.TYPING


def test_claude_spinner_with_empty_input_is_busy() -> None:
    rows = ["✻ Quantumizing… (2s · ↓ 13 tokens)", "", *CLAUDE_BOX[:1], "❯ \x1b[7m \x1b[0m",
            CLAUDE_BOX[2], "  ⏸ manual mode on"]
    verdict = classify(_snap("claude", rows, (2, 3)))
    assert verdict.state is PaneState.BUSY
    assert verdict.evidence[0].startswith("✻ Quantumizing")


def test_claude_finished_turn_line_is_not_busy() -> None:
    rows = ["✻ Brewed for 6s · done 6:29 PM", "", *CLAUDE_BOX[:1], "❯ \x1b[7m \x1b[0m",
            CLAUDE_BOX[2], "  ⏸ manual mode on"]
    assert classify(_snap("claude", rows, (2, 3))).state is PaneState.IDLE


def test_changing_screen_is_never_idle() -> None:
    rows = [CLAUDE_BOX[0], "❯ \x1b[7m \x1b[0m", CLAUDE_BOX[2]]
    assert classify(_snap("claude", rows, (2, 1), changing=True)).state is PaneState.BUSY


def test_codex_dim_placeholder_is_not_a_draft_but_plain_is() -> None:
    placeholder = ["\x1b[1m›\x1b[0m \x1b[2mAsk Codex to do anything\x1b[0m", "",
                   "  gpt-5-codex default · /w", "  ? for shortcuts"]
    assert classify(_snap("codex", placeholder, (2, 0))).state is PaneState.IDLE
    typed = ["\x1b[1m›\x1b[0m Ask Codex to do anything", "", "  gpt-5-codex default · /w", ""]
    assert classify(_snap("codex", typed, (26, 0))).state is PaneState.TYPING


def test_codex_title_spinner_means_busy() -> None:
    rows = ["• word0 word1", "", "\x1b[1m›\x1b[0m \x1b[2mAsk Codex to do anything\x1b[0m", "",
            "  gpt-5-codex default · /w", "  ? for shortcuts"]
    assert classify(_snap("codex", rows, (2, 2), title="⠋ project")).state is PaneState.BUSY
    assert classify(_snap("codex", rows, (2, 2), title="project")).state is PaneState.IDLE


def test_gemini_grey_placeholder_is_not_a_draft() -> None:
    rows = ["─" * 80, " \x1b[38;5;183m> \x1b[7m \x1b[0m\x1b[38;5;248m Type your message or "
            "@path/to/file\x1b[39m", "", " workspace (/directory)    sandbox    /model"]
    assert classify(_snap("gemini", rows, (3, 1))).state is PaneState.IDLE
    rows[1] = " \x1b[38;5;183m> \x1b[38;5;231mType your message\x1b[7m \x1b[0m"
    assert classify(_snap("gemini", rows, (20, 1))).state is PaneState.TYPING


def test_aider_yes_no_question_is_a_dialog() -> None:
    rows = ["touch x", "Run shell command? (Y)es/(N)o/(D)on't ask again [Yes]: "]
    verdict = classify(_snap("aider", rows, (55, 1)))
    assert verdict.state is PaneState.DIALOG


def test_shell_states() -> None:
    prompt = "user@host:~/src$ "
    assert classify(_snap("shell", [prompt], (len(prompt), 0))).state is PaneState.IDLE
    assert classify(_snap("shell", [prompt + "make"], (len(prompt) + 4, 0))).state \
        is PaneState.TYPING
    assert classify(_snap("shell", [prompt + "sleep 9", ""], (0, 1), shell_child=True)).state \
        is PaneState.BUSY
    assert classify(_snap("shell", [prompt + "for x in 1", "> "], (2, 1))).state \
        is PaneState.TYPING
    assert classify(_snap("shell", ["no prompt here"], (14, 0))).state is PaneState.UNKNOWN


def test_fish_grey_autosuggestion_is_not_typed_text() -> None:
    rows = ["root@vm ~# \x1b[38;5;240msleep 30"]
    assert classify(_snap("shell", rows, (11, 0))).state is PaneState.IDLE


def test_repl_states() -> None:
    assert classify(_snap("repl", [">>> "], (4, 0))).state is PaneState.IDLE
    assert classify(_snap("repl", [">>> x = 1"], (9, 0))).state is PaneState.TYPING
    assert classify(_snap("repl", [">>> for i in x:", "... "], (4, 1))).state is PaneState.TYPING
    assert classify(_snap("repl", [">>> time.sleep(9)", ""], (0, 1))).state is PaneState.BUSY


def test_unknown_tool_prefers_unknown_to_idle() -> None:
    assert classify(_snap("other", ["$ "], (2, 0))).state is PaneState.UNKNOWN
    assert classify(_snap("other", ["Overwrite? (y/n)"], (16, 0))).state is PaneState.DIALOG


def test_empty_screen_is_unknown() -> None:
    assert classify(_snap("claude", [], (0, 0))).state is PaneState.UNKNOWN


def test_strip_sgr_and_cells() -> None:
    line = "a\x1b[2mbc\x1b[0m界\x1b[38;5;248md\x1b[39me"
    assert strip_sgr(line) == "abc界de"
    assert [c.col for c in cells(line)] == [0, 1, 2, 3, 5, 6]
    assert faint_cells(line) == (False, True, True, False, False, True, False)
    assert typed_text(line) == "a界e"


def test_truecolor_grey_is_faint_and_white_is_not() -> None:
    assert faint_cells("\x1b[38;2;128;128;128mx\x1b[38;2;255;255;255my") == (True, False)


def test_tables_cover_the_agent_tools() -> None:
    for tool in ("claude", "codex", "gemini", "aider", "shell", "repl"):
        assert tool in QUEUES_WHILE_BUSY and tool in PASTE_SETTLE_S
    assert QUEUES_WHILE_BUSY["codex"] is False
    assert QUEUES_WHILE_BUSY["claude"] and QUEUES_WHILE_BUSY["gemini"]


def _with_row(rec: dict[str, Any], row: int, text: str) -> PaneSnapshot:
    lines = list(rec["lines"])
    lines[row] = text
    return snapshot_of(rec, lines=tuple(lines))


@pytest.mark.parametrize(("program", "text"), [
    ("claude", "● Do you want to proceed? 1. Yes 2. No — Esc to cancel"),
    ("codex", "• Would you like to run the following command? Press enter to confirm"),
    ("gemini", "✦ Allow execution of [Shell]? Do you trust this folder?"),
])
def test_dialog_words_in_the_transcript_do_not_make_a_dialog(program: str, text: str) -> None:
    """Model output may quote a dialog; only the live input area decides."""
    rec = load(CORPUS / program / "idle__120x40__2.json")
    snap = _with_row(rec, 8, text)
    assert classify(snap).state is PaneState.IDLE, classify(snap)


def test_codex_numbered_draft_is_a_draft_not_a_menu() -> None:
    rec = load(CORPUS / "codex" / "idle__120x40__2.json")
    row = rec["cursor_y"]
    lines = list(rec["lines"])
    lines[row - 1], lines[row] = "› 1. fix the parser", "  2. add a test"
    snap = snapshot_of(rec, lines=tuple(lines), cursor_y=row, cursor_x=17)
    assert classify(snap).state is PaneState.TYPING


def test_gemini_busy_needs_no_title() -> None:
    rec = load(CORPUS / "gemini" / "busy__120x40__1.json")
    assert classify(snapshot_of(rec, title="")).state is PaneState.BUSY
