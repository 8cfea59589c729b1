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
