"""The agent CLIs meshd knows: how to find them, their versions, how to run them headless.

``CATALOG`` is data: one frozen :class:`Tool` per CLI, with the argv that runs
it non-interactively (``{prompt}`` and ``{model}`` are placeholders, one argv
word each, so a prompt never passes through a shell).  The flags were checked
against each CLI's ``--help`` (claude 2.1, codex 0.169, gemini 0.61, aider
0.86) and their docs (cursor-agent, ollama); ``notes`` names the options worth
knowing.

:func:`probe_all` looks each binary up on ``PATH`` plus the project-local
install of ``scripts/install-agent-clis.sh`` (``$MESHD_AGENT_CLIS``, default
``~/.cache/meshd-agent-clis``) and runs ``--version`` in parallel threads, each
under its own deadline; a CLI that hangs or fails is reported, never waited on.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VERSION_TIMEOUT_S = 5.0
_VERSION = re.compile(r"\d+(?:\.\d+)+(?:[-+.]?[0-9A-Za-z]+)*")


@dataclass(frozen=True)
class Tool:
    """One agent CLI.  ``headless_argv`` is a template: see :func:`render_argv`."""

    name: str
    binaries: tuple[str, ...]
    version_args: tuple[str, ...]
    headless_argv: tuple[str, ...]
    notes: str
    docs: str


CATALOG: tuple[Tool, ...] = (
    Tool("claude", ("claude",), ("--version",),
         ("claude", "-p", "{prompt}", "--output-format", "json"),
         "--output-format text|json|stream-json; --permission-mode acceptEdits|plan|dontAsk|"
         "bypassPermissions; --allowedTools 'Bash(git:*) Edit'",
         "https://docs.anthropic.com/en/docs/claude-code/cli-reference"),
    Tool("codex", ("codex",), ("--version",),
         ("codex", "exec", "{prompt}"),
         "stdout is the final message; --json streams JSONL events; read-only by default: "
         "--sandbox workspace-write|danger-full-access (--full-auto is deprecated); "
         "--skip-git-repo-check outside a repository; -o FILE; -m MODEL",
         "https://developers.openai.com/codex/noninteractive"),
    Tool("gemini", ("gemini",), ("--version",),
         ("gemini", "-p", "{prompt}", "--output-format", "json"),
         "--approval-mode default|auto_edit|yolo|plan (or --yolo); "
         "--output-format text|json|stream-json; -m MODEL",
         "https://github.com/google-gemini/gemini-cli/blob/main/docs/cli/headless.md"),
    Tool("aider", ("aider",), ("--version",),
         ("aider", "--message", "{prompt}", "--yes-always", "--no-pretty", "--no-stream"),
         "--message-file FILE; --no-auto-commits; --no-git outside a repository; "
         "FILES... to add to the chat",
         "https://aider.chat/docs/scripting.html"),
    Tool("cursor-agent", ("cursor-agent",), ("--version",),
         ("cursor-agent", "-p", "{prompt}", "--output-format", "text"),
         "--output-format text|json|stream-json; --force runs tools without asking; "
         "--trust for an untrusted workspace; --model NAME; newer installs also name it `agent`",
         "https://docs.cursor.com/en/cli/headless"),
    Tool("ollama", ("ollama",), ("--version",),
         ("ollama", "run", "{model}", "{prompt}"),
         "needs `ollama serve` running and the model pulled (`ollama pull MODEL`); "
         "--format json; --nowordwrap",
         "https://github.com/ollama/ollama/blob/main/docs/cli.md"),
)


@dataclass(frozen=True)
class Probe:
    """What :func:`probe` found for one tool."""

    tool: Tool
    path: str | None
    version: str | None
    version_text: str | None
    error: str | None

    @property
    def installed(self) -> bool:
        return self.path is not None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.tool.name, "installed": self.installed, "path": self.path,
                "version": self.version, "version_text": self.version_text,
                "error": self.error, "headless_argv": list(self.tool.headless_argv),
                "notes": self.tool.notes, "docs": self.tool.docs}


def agent_cli_dirs(env: dict[str, str]) -> list[Path]:
    """Bin folders of the project-local CLI install (scripts/install-agent-clis.sh)."""
    home = Path(env.get("HOME") or Path.home())
    prefix = Path(env.get("MESHD_AGENT_CLIS") or home / ".cache" / "meshd-agent-clis")
    return [prefix / "node_modules" / ".bin", prefix / "aider-venv" / "bin"]


def search_path(env: dict[str, str]) -> str:
    """``PATH`` followed by the project-local install folders that exist."""
    extra = [str(d) for d in agent_cli_dirs(env) if d.is_dir()]
    return os.pathsep.join([p for p in env.get("PATH", "").split(os.pathsep) if p] + extra)


def locate(tool: Tool, path: str) -> str | None:
    """First of the tool's binaries found on ``path`` (an os.pathsep-joined string)."""
    for name in tool.binaries:
        found = shutil.which(name, path=path)
        if found:
            return found
    return None


def parse_version(text: str) -> str | None:
    """``2.0.0 (Claude Code)`` -> ``2.0.0``; ``codex-cli 0.169.0`` -> ``0.169.0``."""
    m = _VERSION.search(text)
    return m.group(0) if m else None


def run_version(argv: list[str], env: dict[str, str],
                timeout_s: float = VERSION_TIMEOUT_S) -> tuple[str | None, str | None]:
    """(first output line, error) of ``argv``; the process group is killed at the deadline."""
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env, start_new_session=True)
    except OSError as exc:
        return None, f"cannot run: {exc.strerror or exc}"
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        return None, f"`{' '.join(argv[-2:])}` did not finish within {timeout_s:g} s"
    text = (out or err).decode("utf-8", errors="replace").strip()
    first = text.splitlines()[0].strip() if text else None
    if proc.returncode != 0:
        return first, f"exit status {proc.returncode}"
    return first, None


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


def probe(tool: Tool, env: dict[str, str], timeout_s: float = VERSION_TIMEOUT_S) -> Probe:
    """Locate one tool and ask it for its version."""
    path = search_path(env)
    found = locate(tool, path)
    if found is None:
        return Probe(tool, None, None, None, None)
    text, error = run_version([found, *tool.version_args], {**env, "PATH": path}, timeout_s)
    return Probe(tool, found, parse_version(text or ""), text, error)


def probe_all(tools: tuple[Tool, ...] = CATALOG, env: dict[str, str] | None = None,
              timeout_s: float = VERSION_TIMEOUT_S) -> list[Probe]:
    """Probe every tool in parallel; the whole call takes about the slowest one's time."""
    env = dict(os.environ) if env is None else env
    with ThreadPoolExecutor(max_workers=max(1, len(tools))) as pool:
        return list(pool.map(lambda t: probe(t, env, timeout_s), tools))


def by_name(name: str) -> Tool:
    for t in CATALOG:
        if t.name == name:
            return t
    raise KeyError(name)


def render_argv(tool: Tool, prompt: str, *, model: str = "", binary: str | None = None) -> list[str]:
    """The headless argv with ``{prompt}``/``{model}`` filled in (whole words, no shell)."""
    values = {"{prompt}": prompt, "{model}": model}
    argv = [values.get(word, word) for word in tool.headless_argv]
    if binary:
        argv[0] = binary
    return argv
