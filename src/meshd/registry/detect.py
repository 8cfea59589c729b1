"""Which agent CLI runs in a pane, from its process tree.  Pure.

The tmux adapter hands us the pane's processes, the pane's own process
first, then its descendants breadth-first.  The deepest recognisable agent
wins, so ``bash -> node .../claude`` is ``claude`` and ``bash -> sleep`` is a
busy ``shell``.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from dataclasses import dataclass

TOOLS = ("claude", "codex", "gemini", "aider", "cursor-agent", "ollama", "shell", "repl", "other")
SHELLS = frozenset({"bash", "zsh", "fish", "sh", "dash", "ksh", "tcsh", "csh", "nu", "xonsh"})
_REPLS = frozenset({"python", "python3", "ipython", "node", "irb", "ghci", "lua", "R", "sqlite3",
                    "psql", "julia"})

# tool -> (executable basenames, substrings of a script path or module argument)
_MARKERS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "claude": (("claude",), ("claude-code", "/claude")),
    "codex": (("codex",), ("@openai/codex", "/codex")),
    "gemini": (("gemini",), ("gemini-cli", "/gemini")),
    "cursor-agent": (("cursor-agent",), ("cursor-agent",)),
    "aider": (("aider",), ("/aider", "aider")),
    "ollama": (("ollama",), ()),
}


@dataclass(frozen=True)
class Proc:
    pid: int
    name: str
    argv: tuple[str, ...]


def tool_of(p: Proc) -> str | None:
    """The agent tool one process is, or None when it is not a known agent."""
    exe = {posixpath.basename(p.name).lower()}
    if p.argv:
        exe.add(posixpath.basename(p.argv[0]).lower())
    # node/python run the tool as a script or module: look at the next two argv words.
    args = [a.lower() for a in p.argv[1:3] if (a and not a.startswith("-")) or a == "-m"]
    for tool, (names, paths) in _MARKERS.items():
        if any(e == n or e.startswith(n + "-") for e in exe for n in names):
            return tool
        if any(m in a for a in args for m in paths):
            return tool
    return None


def detect(chain: Sequence[Proc]) -> str:
    """Tool name for a pane whose processes (pane process first) are ``chain``."""
    found: str | None = None
    for p in chain:
        t = tool_of(p)
        if t is not None:
            found = t
    if found:
        return found
    if not chain:
        return "other"
    leaf = chain[-1]
    base = posixpath.basename(leaf.name).lstrip("-")
    if base in SHELLS:
        return "shell"
    root = posixpath.basename(chain[0].name).lstrip("-")
    if root in SHELLS and len(chain) > 1:
        # A shell running a command: the command decides, unknown commands are "shell" (busy).
        return _repl_or(leaf, "shell")
    return _repl_or(leaf, "other")


def _repl_or(p: Proc, default: str) -> str:
    base = posixpath.basename(p.name).rstrip("0123456789.") or p.name
    if base in _REPLS or posixpath.basename(p.name) in _REPLS:
        script_args = [a for a in p.argv[1:] if not a.startswith("-")]
        if not script_args or "-i" in p.argv:
            return "repl"
    return default
