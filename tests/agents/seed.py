"""Throwaway homes with each agent CLI's first-run state pre-seeded, so that the real CLI starts
offline straight into its input screen, talking to :class:`tests.agents.standin.StandIn`
(the model APIs themselves cannot be reached from the test machines).

Each ``seed_*`` function writes config files under ``home`` and returns a :class:`Launch`: the
argv, environment and working directory to start the CLI with. What each file and variable does
was read from the installed CLIs (see docs/delivery-classifier.md); seeding options can bring
back one real first-run dialog on purpose (``trusted=False`` etc.) for the dialog corpus.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .panes import base_env

AGENT_TOOLS = ("claude", "codex", "gemini", "aider")
CLAUDE_KEY = "sk-ant-api03-standin-0123456789abcdefghijklmnopqrstuvwxyz-AAAA"


@dataclass(frozen=True)
class Launch:
    argv: tuple[str, ...]
    env: dict[str, str]
    cwd: Path
    tool: str  # classify() tool name
    notes: tuple[str, ...] = field(default=())


def clis_prefix() -> Path:
    """Where scripts/install-agent-clis.sh installs the CLIs."""
    default = Path(os.environ.get("HOME", "/root")) / ".cache" / "meshd-agent-clis"
    return Path(os.environ.get("MESHD_AGENT_CLIS", default))


def agent_bin(tool: str) -> Path | None:
    """The installed CLI for ``tool`` ("claude", "codex", "gemini", "aider"), or None."""
    prefix = clis_prefix()
    path = prefix / "aider-venv" / "bin" / "aider" if tool == "aider" else \
        prefix / "node_modules" / ".bin" / tool
    return path if path.exists() else None


def _need(tool: str) -> str:
    path = agent_bin(tool)
    if path is None:
        raise FileNotFoundError(f"{tool} is not installed; run scripts/install-agent-clis.sh")
    return str(path)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def seed_claude(home: Path, cwd: Path, base_url: str, *, trusted: bool = True,
                auto_mode_nudge: bool = False) -> Launch:
    """Claude Code: onboarding done, the stand-in's API key approved, ``cwd`` trusted, manual
    permission mode (so tool calls ask), no auto-updater or non-essential traffic."""
    state = {
        "hasCompletedOnboarding": True,
        "customApiKeyResponses": {"approved": [CLAUDE_KEY[-20:]], "rejected": []},
        "projects": {str(cwd): {"hasTrustDialogAccepted": trusted, "allowedTools": []}},
        "hasSeenAutoDefaultNotice": True,
        "hasSeenAutoDefaultNudge": not auto_mode_nudge,
        "theme": "dark",
        "numStartups": 3,
    }
    _write(home / ".claude.json", json.dumps(state, indent=1))
    _write(home / ".claude" / "settings.json",
           json.dumps({"permissions": {"defaultMode": "default"}}))
    env = base_env(home) | {
        "ANTHROPIC_API_KEY": CLAUDE_KEY, "ANTHROPIC_BASE_URL": base_url,
        "DISABLE_AUTOUPDATER": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1", "DISABLE_ERROR_REPORTING": "1",
    }
    return Launch((_need("claude"),), env, cwd, "claude")


def seed_codex(home: Path, cwd: Path, base_url: str, *, trusted: bool = True) -> Launch:
    """Codex CLI: a ``standin`` model provider (Responses API) at ``base_url``, on-request
    approvals with a read-only sandbox (so an escalated command asks), ``cwd`` trusted."""
    config = f"""\
model = "gpt-5-codex"
model_provider = "standin"
approval_policy = "on-request"
sandbox_mode = "read-only"
check_for_update_on_startup = false

[model_providers.standin]
name = "Stand-in"
base_url = "{base_url}/v1"
env_key = "OPENAI_API_KEY"
wire_api = "responses"

[analytics]
enabled = false
"""
    if trusted:
        config += f'\n[projects."{cwd}"]\ntrust_level = "trusted"\n'
    _write(home / ".codex" / "config.toml", config)
    env = base_env(home) | {"OPENAI_API_KEY": "sk-standin-codex", "CODEX_HOME": str(home / ".codex")}
    return Launch((_need("codex"),), env, cwd, "codex")


def seed_gemini(home: Path, cwd: Path, base_url: str, *, trusted: bool = True) -> Launch:
    """Gemini CLI: API-key auth, ``GOOGLE_GEMINI_BASE_URL`` at the stand-in (read by
    ``createContentGenerator`` in the bundle), no telemetry or update checks; folder trust off
    (or on without a trusted folder when ``trusted=False``, which shows the trust dialog)."""
    settings = {
        "security": {"auth": {"selectedType": "gemini-api-key"},
                     "folderTrust": {"enabled": not trusted}},
        "general": {"disableAutoUpdate": True, "disableUpdateNag": True},
        "privacy": {"usageStatisticsEnabled": False},
        "telemetry": {"enabled": False},
    }
    _write(home / ".gemini" / "settings.json", json.dumps(settings, indent=1))
    env = base_env(home) | {"GEMINI_API_KEY": "standin-gemini-key",
                            "GOOGLE_GEMINI_BASE_URL": base_url}
    return Launch((_need("gemini"),), env, cwd, "gemini")


def seed_aider(home: Path, cwd: Path, base_url: str, *, git: bool = False) -> Launch:
    """aider: OpenAI-compatible endpoint at the stand-in, model metadata cached locally (aider
    and litellm would fetch it from GitHub), analytics off, no update check. ``git=True``
    starts it outside a repository with git on, which asks to create one."""
    meta = {"max_input_tokens": 128000, "max_output_tokens": 16384, "max_tokens": 16384,
            "input_cost_per_token": 0.0, "output_cost_per_token": 0.0,
            "litellm_provider": "openai", "mode": "chat"}
    _write(home / ".aider" / "caches" / "model_prices_and_context_window.json",
           json.dumps({"gpt-4o": meta, "gpt-4o-mini": meta}))
    _write(home / ".aider" / "analytics.json",
           json.dumps({"uuid": "00000000-0000-4000-8000-000000000000",
                       "permanently_disable": True, "asked_opt_in": True}))
    env = base_env(home) | {"OPENAI_API_KEY": "sk-standin-aider",
                            "OPENAI_API_BASE": f"{base_url}/v1",
                            "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    argv = (_need("aider"), "--model", "openai/gpt-4o", "--no-check-update",
            "--no-show-release-notes", "--no-show-model-warnings", "--no-auto-commits")
    return Launch(argv + (() if git else ("--no-git",)), env, cwd, "aider")


def seed_shell(home: Path, cwd: Path, shell: str) -> Launch:
    """bash, zsh or fish with their stock prompts (zsh gets an empty ~/.zshrc so that its
    new-user wizard does not run)."""
    path = shutil.which(shell)
    if path is None:
        raise FileNotFoundError(f"{shell} is not installed")
    if shell == "zsh":
        _write(home / ".zshrc", "")
    env = base_env(home) | {"SHELL": path}
    return Launch((path, "-i") if shell != "fish" else (path,), env, cwd, "shell")


def seed_repl(home: Path, cwd: Path) -> Launch:
    python = shutil.which("python3") or "python3"
    return Launch((python, "-q"), base_env(home), cwd, "repl")


def seed(tool: str, home: Path, cwd: Path, base_url: str) -> Launch:
    """The default launch of ``tool`` (an agent CLI, "bash"/"zsh"/"fish", or "python")."""
    home.mkdir(parents=True, exist_ok=True)
    cwd.mkdir(parents=True, exist_ok=True)
    if tool == "claude":
        return seed_claude(home, cwd, base_url)
    if tool == "codex":
        return seed_codex(home, cwd, base_url)
    if tool == "gemini":
        return seed_gemini(home, cwd, base_url)
    if tool == "aider":
        return seed_aider(home, cwd, base_url)
    if tool == "python":
        return seed_repl(home, cwd)
    return seed_shell(home, cwd, tool)
