"""Classify a pane from one capture: idle, typing, busy, dialog or unknown.  Pure.

Input is what tmux shows: ``capture-pane -p -e`` rows (with SGR escapes), the cursor, the
pane size, copy-mode, and optionally the pane title and cursor visibility. Attributes matter:
the agent CLIs draw placeholders (``Ask Codex to do anything``, ``Type your message or
@path/to/file``, ``Press up to edit queued messages``) dim or grey, in the very place a draft
would be, and Claude Code and Gemini CLI draw their own cursor as a reverse-video cell.

Rules are per tool and were read off the real CLIs (versions in docs/delivery-classifier.md);
the screens they were checked on are in ``tests/corpus``. Where a screen fits no rule the
answer is UNKNOWN, never a guessed IDLE. A draft wins over busy: keys sent into a pane holding
a draft would join it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum


class PaneState(StrEnum):
    IDLE = "idle"
    TYPING = "typing"
    BUSY = "busy"
    DIALOG = "dialog"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class PaneSnapshot:
    """One look at a pane.

    ``tool`` is "claude", "codex", "gemini", "aider", "shell", "repl" or anything else
    (treated as "other"). ``cursor_x``/``cursor_y`` are 0-based cells. ``changing``: the screen
    differed between two captures ~100 ms apart. ``shell_child``: for "shell", the shell has a
    foreground child (``pane_current_command`` is not the shell). ``title`` is ``pane_title``
    (Codex and Gemini CLI put a spinner or "Action Required" there); ``cursor_visible`` is
    ``cursor_flag`` (None when not read).
    """

    tool: str
    lines: tuple[str, ...]
    cursor_x: int
    cursor_y: int
    width: int
    height: int
    in_mode: bool = False
    changing: bool = False
    shell_child: bool = False
    title: str = ""
    cursor_visible: bool | None = None


@dataclass(frozen=True)
class Verdict:
    state: PaneState
    reason: str
    evidence: tuple[str, ...]  # the screen rows (plain text) that decided it


# Enter pressed while the agent works: queued as the next prompt (True), or taken into the
# running turn / lost (False). Codex "steers" the running turn with it.
QUEUES_WHILE_BUSY: dict[str, bool] = {
    "claude": True, "gemini": True, "codex": False, "aider": False,
    "shell": False, "repl": False, "other": False,
}

# Seconds to wait after a bracketed paste before Enter, so that Enter submits instead of
# landing in the paste. Measured with tests/agents/settle.py (docs/delivery-classifier.md):
# Claude Code, Codex, aider, bash and python3 submitted every trial with Enter sent right after
# the paste; Gemini CLI turns an Enter within 40 ms of a paste into a newline (no kitty
# keyboard protocol under tmux) and needed >= 0.07 s. Values: that minimum with a margin.
PASTE_SETTLE_S: dict[str, float] = {
    "claude": 0.05, "codex": 0.05, "gemini": 0.2, "aider": 0.05,
    "shell": 0.02, "repl": 0.02, "other": 0.15,
}


# -- cells and attributes ------------------------------------------------------------------

_ESC = re.compile(r"\x1b\[([0-9;:]*)m|\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?")


@dataclass(frozen=True)
class Cell:
    """One character on screen with the attributes that tell drafts from decoration."""

    char: str
    col: int
    width: int
    dim: bool = False
    reverse: bool = False
    fg: tuple[int, ...] = ()  # () default, (n,) palette index 0-255, (r, g, b) true colour

    @property
    def faint(self) -> bool:
        """Dim (SGR 2) or drawn in a grey: how the CLIs draw placeholders and hints."""
        return self.dim or _grey(self.fg)


def strip_sgr(line: str) -> str:
    """The row as plain text (all escape sequences removed)."""
    return _ESC.sub("", line)


def cells(line: str) -> tuple[Cell, ...]:
    """The printable cells of a captured row, with their column and attributes."""
    out: list[Cell] = []
    col, dim, rev = 0, False, False
    fg: tuple[int, ...] = ()
    pos = 0
    for m in _ESC.finditer(line + "\x1b[m"):  # sentinel flushes the tail
        for ch in line[pos:m.start()]:
            w = _width(ch)
            if w == 0 and out:
                last = out[-1]
                out[-1] = Cell(last.char + ch, last.col, last.width, last.dim, last.reverse, last.fg)
                continue
            out.append(Cell(ch, col, w, dim, rev, fg))
            col += w
        pos = m.end()
        if m.group(1) is not None:
            dim, rev, fg = _apply_sgr(m.group(1), dim, rev, fg)
    return tuple(out)


def faint_cells(line: str) -> tuple[bool, ...]:
    """For each screen column of the row: True where the cell is dim or grey (placeholder)."""
    cs = cells(line)
    mask = [False] * (cs[-1].col + cs[-1].width if cs else 0)
    for c in cs:
        for i in range(c.col, c.col + c.width):
            mask[i] = c.faint
    return tuple(mask)


def _width(ch: str) -> int:
    if unicodedata.combining(ch) or ch in "\u200b\u200d\ufe0f":
        return 0
    return 2 if unicodedata.east_asian_width(ch) in "WF" else 1


def _apply_sgr(params: str, dim: bool, rev: bool,
               fg: tuple[int, ...]) -> tuple[bool, bool, tuple[int, ...]]:
    nums = [int(p) if p.isdigit() else 0 for p in re.split("[;:]", params)] if params else [0]
    i = 0
    while i < len(nums):
        n = nums[i]
        if n == 0:
            dim, rev, fg = False, False, ()
        elif n == 2:
            dim = True
        elif n == 22:
            dim = False
        elif n == 7:
            rev = True
        elif n == 27:
            rev = False
        elif 30 <= n <= 37 or 90 <= n <= 97:
            fg = (n - 30 if n < 90 else n - 82,)
        elif n == 39:
            fg = ()
        elif n in (38, 48) and i + 1 < len(nums):
            kind = nums[i + 1]
            arg = tuple(nums[i + 2:i + 3]) if kind == 5 else tuple(nums[i + 2:i + 5])
            if n == 38:
                fg = arg
            i += 1 + len(arg)
        i += 1
    return dim, rev, fg


def _grey(fg: tuple[int, ...]) -> bool:
    if len(fg) == 1:
        n = fg[0]
        # bright black; the grey ramp up to #bcbcbc; the cube's greys #5f5f5f..#afafaf
        return n == 8 or 232 <= n <= 250 or n in (59, 102, 145)
    if len(fg) == 3:
        return max(fg) - min(fg) <= 24 and 0x40 <= max(fg) <= 0xc0
    return False


def typed_text(line: str, start_col: int = 0) -> str:
    """The text a user could have typed in the row from ``start_col``: faint cells dropped,
    and a reverse-video cell dropped when it is a drawn cursor (a blank, or sitting on the
    first letter of a faint placeholder)."""
    cs = [c for c in cells(line) if c.col >= start_col]
    out: list[str] = []
    for i, c in enumerate(cs):
        if c.char.isspace():
            out.append(" ")
        elif c.faint or (c.reverse and _faint_follows(cs[i + 1:])):
            continue
        else:
            out.append(c.char)
    return " ".join("".join(out).split())


def _faint_follows(rest: Sequence[Cell]) -> bool:
    nxt = next((c for c in rest if not c.char.isspace()), None)
    return nxt is not None and nxt.faint


# -- the screen ----------------------------------------------------------------------------

class _Screen:
    def __init__(self, snap: PaneSnapshot) -> None:
        self.snap = snap
        self.raw = list(snap.lines[:snap.height]) + [""] * max(0, snap.height - len(snap.lines))
        self.plain = [strip_sgr(r).rstrip() for r in self.raw]
        last = max((i for i, p in enumerate(self.plain) if p.strip()), default=-1)
        self.last = last  # last non-empty row

    def find(self, pattern: re.Pattern[str], rows: Iterable[int]) -> int | None:
        return next((r for r in rows if 0 <= r < len(self.plain)
                     and pattern.search(self.plain[r])), None)

    def rows_up(self, start: int, count: int) -> range:
        return range(start, max(-1, start - count), -1)

    def bottom(self, count: int) -> range:
        """The ``count`` rows up from the last non-empty one (inline UIs leave blank rows)."""
        return self.rows_up(self.last, count)

    def ev(self, *rows: int | None) -> tuple[str, ...]:
        return tuple(self.plain[r].strip() for r in rows if r is not None and 0 <= r < len(self.plain))

    def cursor_row(self) -> int | None:
        y = self.snap.cursor_y
        return y if 0 <= y < len(self.plain) else None


def _v(state: PaneState, reason: str, evidence: tuple[str, ...] = ()) -> Verdict:
    return Verdict(state, reason, evidence)


def _idle_or_busy(s: _Screen, busy_row: int | None, why_busy: str, at: tuple[str, ...]) -> Verdict:
    if busy_row is not None:
        return _v(PaneState.BUSY, why_busy, s.ev(busy_row) + at)
    if s.snap.changing:
        return _v(PaneState.BUSY, "empty input, but the screen is still changing", at)
    return _v(PaneState.IDLE, "empty input and no sign of work", at)


# -- Claude Code ---------------------------------------------------------------------------

_RULE = re.compile(r"^\s*[─━╌]{20,}\s*$")
_CLAUDE_PROMPT = re.compile(r"^([❯>!#]) ?")
_CLAUDE_SPINNER = re.compile(r"^[·✢✳✶✻✽∗*] \S[^()]*…")  # "✻ Verb… (3s · ↓ 9 tokens)", column 0
_CLAUDE_DIALOG = re.compile(
    r"Do you want to |Esc to cancel|Enter to confirm|Would you like to |trust the files in"
    r"|Yes, I trust|Make auto mode your default|^\s*[❯›>]\s*1\.\s", re.IGNORECASE)
_INTERRUPT = re.compile(r"esc to interrupt", re.IGNORECASE)


def _claude(s: _Screen) -> Verdict:
    box = _claude_box(s)
    if box is None:
        hit = s.find(_CLAUDE_DIALOG, s.bottom(30))
        if hit is not None:
            return _v(PaneState.DIALOG, "a menu or permission prompt, and no input box", s.ev(hit))
        spin = s.find(_CLAUDE_SPINNER, s.bottom(30))
        if spin is not None:
            return _v(PaneState.BUSY, "spinner line, no input box", s.ev(spin))
        return _v(PaneState.UNKNOWN, "no Claude Code input box on screen")
    top, first, last = box
    draft = " ".join(t for t in (_claude_draft(s, r, r == first) for r in range(first, last + 1)) if t)
    spin = s.find(_CLAUDE_SPINNER, s.rows_up(top - 1, 12))
    footer = s.find(_INTERRUPT, range(last + 1, min(last + 4, len(s.plain))))
    busy = spin if spin is not None else footer
    rows = s.ev(*range(first, last + 1))
    if draft:
        why = "draft in the input box" + (" while the agent works" if busy is not None else "")
        return _v(PaneState.TYPING, why, rows)
    return _idle_or_busy(s, busy, "spinner line above the input box" if spin is not None
                         else "'esc to interrupt' in the footer", rows)


def _claude_box(s: _Screen) -> tuple[int, int, int] | None:
    """(top rule row, first input row, last input row) of the bottom-most input box."""
    for r in s.bottom(len(s.plain)):
        if not _RULE.match(s.plain[r]) or r < 2:
            continue
        first = r - 1
        while first > 0 and not _CLAUDE_PROMPT.match(s.plain[first]) and s.plain[first].startswith("  "):
            first -= 1
        if _CLAUDE_PROMPT.match(s.plain[first]) and first > 0 and _RULE.match(s.plain[first - 1]):
            return first - 1, first, r - 1
        return None
    return None


def _claude_draft(s: _Screen, row: int, first: bool) -> str:
    m = _CLAUDE_PROMPT.match(s.plain[row])
    start = m.end() if first and m else 0
    return typed_text(s.raw[row], start)


# -- Codex CLI -----------------------------------------------------------------------------

_CODEX_DIALOG = re.compile(
    r"Would you like to |Press enter to confirm|Do you trust |Trust this folder\?|Allow Codex to"
    r"|enter continue · esc|\(y\)\s*$|\(esc\)\s*$", re.IGNORECASE)
_MENU_PICKED = re.compile(r"^\s*[›❯>●]\s*\d+\.\s")  # the selected row of a numbered menu
_MENU_OTHER = re.compile(r"^\s+\d+\.\s")
_CODEX_WORKING = re.compile(r"^\s*\S\s+Working\b.*\(.*\d+s|esc to interrupt", re.IGNORECASE)
_CODEX_QUEUE_HINT = re.compile(r"tab to queue message", re.IGNORECASE)
_BRAILLE_SPINNER = re.compile(r"^\s*[\u2800-\u28ff]")


def _is_menu(s: _Screen, row: int) -> bool:
    """``row`` is the selected entry of a numbered menu (another numbered row next to it)."""
    near = [r for r in (row - 1, row + 1) if 0 <= r < len(s.plain)]
    return bool(_MENU_PICKED.match(s.plain[row])) and any(_MENU_OTHER.match(s.plain[r]) for r in near)


def _codex(s: _Screen) -> Verdict:
    flagged = s.snap.title.startswith("[ ! ]")  # Codex titles the pane "[ ! ] Action Required"
    comp = next((r for r in s.bottom(12) if s.plain[r].startswith("›")), None)
    if comp is not None and _is_menu(s, comp):
        phrase = s.find(_CODEX_DIALOG, range(comp, s.last + 1))
        if flagged or phrase is not None or s.snap.cursor_visible is False:
            return _v(PaneState.DIALOG, "a numbered menu where the composer would be",
                      s.ev(comp, phrase))
    if flagged:
        return _v(PaneState.DIALOG, f"pane title {s.snap.title!r}", s.ev(comp))
    if comp is None:
        phrase = s.find(_CODEX_DIALOG, s.bottom(20))
        if phrase is not None:
            return _v(PaneState.DIALOG, "Codex asks for approval, no composer", s.ev(phrase))
        return _v(PaneState.UNKNOWN, "no Codex composer (›) near the bottom")
    end = comp  # a draft's continuation rows are indented; a blank row ends the composer
    while end + 1 < len(s.plain) and s.plain[end + 1].startswith("  ") and s.plain[end + 1].strip():
        end += 1
    draft = " ".join(t for t in (typed_text(s.raw[r], 2 if r == comp else 0)
                                 for r in range(comp, end + 1)) if t)
    work = s.find(_CODEX_WORKING, s.rows_up(comp - 1, 6))
    hint = s.find(_CODEX_QUEUE_HINT, range(comp, len(s.plain)))
    rows = s.ev(*range(comp, end + 1))
    busy = work if work is not None else hint
    if draft:
        why = "draft in the composer" + (" while the agent works" if busy is not None else "")
        return _v(PaneState.TYPING, why, rows)
    if busy is None and _BRAILLE_SPINNER.match(s.snap.title):
        return _v(PaneState.BUSY, f"spinner in the pane title {s.snap.title!r}", rows)
    return _idle_or_busy(s, busy, "'Working' status row", rows)


# -- Gemini CLI ----------------------------------------------------------------------------

_GEMINI_DIALOG = re.compile(
    r"Allow execution|Apply this change\?|Do you trust this folder|Allow for this session"
    r"|Waiting for user confirmation|^\s*│\s*●\s*1\.", re.IGNORECASE)
_GEMINI_PROMPT = re.compile(r"^\s?(>|!|\*)\s")
_GEMINI_BUSY = re.compile(r"\(esc to cancel|esc to interrupt", re.IGNORECASE)


def _gemini(s: _Screen) -> Verdict:
    title = s.snap.title
    if title.startswith("✋") or "Action Required" in title:
        return _v(PaneState.DIALOG, f"pane title {title.strip()!r}")
    # The input sits right above the footer (blank row, "workspace … sandbox … /model", paths);
    # rows higher up that start with " > " are earlier prompts in the transcript. Dialogs take
    # the input's place, so their wording counts only when no input is shown.
    comp = next((r for r in s.bottom(6) if _GEMINI_PROMPT.match(s.plain[r])), None)
    if comp is None:
        phrase = s.find(_GEMINI_DIALOG, s.bottom(25))
        if phrase is not None:
            return _v(PaneState.DIALOG, "Gemini CLI asks for confirmation", s.ev(phrase))
        return _v(PaneState.UNKNOWN, "no Gemini CLI input prompt right above the footer")
    m = _GEMINI_PROMPT.match(s.plain[comp])
    end = comp
    while end + 1 < len(s.plain) and s.plain[end + 1].startswith("   ") and s.plain[end + 1].strip():
        end += 1
    draft = " ".join(t for t in (typed_text(s.raw[r], m.end() if m and r == comp else 0)
                                 for r in range(comp, end + 1)) if t)
    busy = s.find(_GEMINI_BUSY, s.rows_up(comp - 1, 8))
    rows = s.ev(*range(comp, end + 1))
    if draft:
        why = "draft in the input" + (" while the agent works" if busy is not None else "")
        return _v(PaneState.TYPING, why, rows)
    if busy is None and (title.startswith("✦") or "Working" in title):
        return _v(PaneState.BUSY, f"pane title says working: {title!r}", rows)
    return _idle_or_busy(s, busy, "'esc to cancel' spinner row", rows)


# -- aider ---------------------------------------------------------------------------------

_AIDER_CONFIRM = re.compile(r"\(Y\)es/\(N\)o.*:\s*\S*\s*$|\[Yes\]:\s*\S*\s*$|\(y/n\)", re.IGNORECASE)
_AIDER_PROMPT = re.compile(r"^(?:[\w-]+)?> ?")
_AIDER_WAIT = re.compile(r"Waiting for |Thinking|░|█")


def _aider(s: _Screen) -> Verdict:
    row = s.cursor_row()
    if row is None:
        return _v(PaneState.UNKNOWN, "cursor outside the screen")
    for r in (row, s.last):
        if r >= 0 and _AIDER_CONFIRM.search(s.plain[r]):
            return _v(PaneState.DIALOG, "aider asks a yes/no question", s.ev(r))
    m = _AIDER_PROMPT.match(s.plain[row])
    if m and s.snap.cursor_visible is not False and s.snap.cursor_x >= m.end() - 1:
        if typed_text(s.raw[row], m.end()):
            return _v(PaneState.TYPING, "text after aider's prompt", s.ev(row))
        return _idle_or_busy(s, None, "", s.ev(row))
    wait = s.find(_AIDER_WAIT, s.rows_up(row, 3))
    if wait is not None or s.snap.cursor_visible is False:
        return _v(PaneState.BUSY, "aider is not at its prompt (working)", s.ev(wait, row))
    return _v(PaneState.BUSY, "no aider prompt at the cursor", s.ev(row))


# -- shells and REPLs ----------------------------------------------------------------------

_SHELL_PROMPT_END = re.compile(r"[$#%>❯➜»λ](?: |$)")
_CONTINUATION = re.compile(r"^(?:[a-z]+ ?)*>$")
_REPL_PROMPT = re.compile(
    r"^(?:>>>|\.\.\.|In \[\d+\]:|\s+\.\.\.:|>>|=>|>|irb\([^)]*\)[>*]|sqlite>|mysql>|"
    r"\w+=[#>]|\w+-[#>]|iex\(\d+\)>|ghci>|λ>|scala>|julia>|> ?\.\.\.)(?: |$)")
_REPL_MORE = re.compile(r"^(?:\.\.\.|\s+\.\.\.:|\w+-[#>]|> ?\.\.\.)(?: |$)")


def _shell(s: _Screen) -> Verdict:
    if s.snap.shell_child:
        return _v(PaneState.BUSY, "the shell runs a foreground command", s.ev(s.cursor_row()))
    row = s.cursor_row()
    if row is None:
        return _v(PaneState.UNKNOWN, "cursor outside the screen")
    upto = _text_before(s, row)
    m = _SHELL_PROMPT_END.search(upto)
    if m is None:
        return _v(PaneState.UNKNOWN, "no shell prompt at the cursor", s.ev(row))
    if _CONTINUATION.match(upto[:m.start() + 1].strip()):
        return _v(PaneState.TYPING, "continuation prompt: a command is half typed", s.ev(row - 1, row))
    draft = _without_right_prompt(typed_text(s.raw[row], _col_of(s.raw[row], m.end())), s, row)
    if draft:
        return _v(PaneState.TYPING, "text after the shell prompt", s.ev(row))
    return _idle_or_busy(s, None, "", s.ev(row))


def _repl(s: _Screen) -> Verdict:
    row = s.cursor_row()
    if row is None:
        return _v(PaneState.UNKNOWN, "cursor outside the screen")
    m = _REPL_PROMPT.match(_text_before(s, row))
    if m is None:
        if s.snap.changing or (s.snap.cursor_x == 0 and not s.plain[row].strip()):
            return _v(PaneState.BUSY, "no prompt at the cursor: the program is running", s.ev(row))
        return _v(PaneState.UNKNOWN, "no REPL prompt at the cursor", s.ev(row))
    if _REPL_MORE.match(m.group(0)):
        return _v(PaneState.TYPING, "continuation prompt: a statement is half typed", s.ev(row))
    if typed_text(s.raw[row], _col_of(s.raw[row], m.end())):
        return _v(PaneState.TYPING, "text after the prompt", s.ev(row))
    return _idle_or_busy(s, None, "", s.ev(row))


_GENERIC_DIALOG = re.compile(
    r"\(y/n\)|\[y/n\]|\(Y\)es/\(N\)o|Do you want to proceed|Press enter to confirm"
    r"|Allow execution|Esc to cancel", re.IGNORECASE)


def _other(s: _Screen) -> Verdict:
    hit = s.find(_GENERIC_DIALOG, s.bottom(15))
    if hit is not None:
        return _v(PaneState.DIALOG, "a yes/no or menu prompt near the bottom", s.ev(hit))
    if s.snap.changing:
        return _v(PaneState.BUSY, "the screen is changing", ())
    return _v(PaneState.UNKNOWN, f"no rules for tool {s.snap.tool!r}")


def _text_before(s: _Screen, row: int) -> str:
    return "".join(c.char for c in cells(s.raw[row]) if c.col < s.snap.cursor_x).rstrip() + (
        " " if _cell_at(s.raw[row], s.snap.cursor_x - 1).isspace() else "")


def _cell_at(raw: str, col: int) -> str:
    return next((c.char for c in cells(raw) if c.col == col), " ")


def _col_of(raw: str, index: int) -> int:
    """Screen column of the ``index``-th character of the row's plain text."""
    cs = cells(raw)
    return cs[index].col if index < len(cs) else (cs[-1].col + cs[-1].width if cs else 0)


def _without_right_prompt(draft: str, s: _Screen, row: int) -> str:
    """Drop a zsh/fish right prompt: text flush with the right edge after a wide gap."""
    text = s.plain[row]
    if len(text) >= s.snap.width - 1 and re.search(r"\S {3,}\S+$", text) and s.snap.cursor_x < len(text):
        tail = text.split()[-1]
        return draft.removesuffix(tail).strip()
    return draft


_RULES: dict[str, Callable[[_Screen], Verdict]] = {
    "claude": _claude, "codex": _codex, "gemini": _gemini, "aider": _aider,
    "shell": _shell, "repl": _repl,
}


def classify(snap: PaneSnapshot) -> Verdict:
    """The pane's state; UNKNOWN whenever the screen fits none of the tool's rules."""
    if snap.in_mode:
        return _v(PaneState.UNKNOWN, "pane is in copy-mode (typed keys would be swallowed)")
    if snap.height <= 0 or not any(line.strip() for line in snap.lines):
        return _v(PaneState.UNKNOWN, "empty screen")
    return _RULES.get(snap.tool, _other)(_Screen(snap))
