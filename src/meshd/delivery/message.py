"""The text a recipient sees: sender tag plus sanitised body.  Pure."""

from __future__ import annotations

from datetime import UTC, datetime

from meshd.delivery.sanitize import sanitize


def tag(sender: str, now: float) -> str:
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"[from {sanitize(sender)} @ {stamp}]"


def compose(sender: str, body: str, now: float, *, file_path: str | None = None) -> str:
    """``[from ADDR @ ISO] body`` (+ `` [file: PATH]``), sanitised, no trailing newline."""
    text = sanitize(body).strip("\n")
    if file_path:
        text = f"{text} [file: {sanitize(file_path)}]" if text else f"[file: {sanitize(file_path)}]"
    return f"{tag(sender, now)} {text}"


# Shells whose interactive mode treats "#" as a comment by default.
COMMENTING_SHELLS = frozenset({"bash", "sh", "dash", "ksh", "mksh", "fish", "ash", "busybox"})


def as_shell_comment(text: str) -> str:
    """Turn every line into a ``# `` comment, so a shell prompt shows it and runs nothing."""
    return "\n".join(f"# {line}" if line else "#" for line in text.split("\n"))
