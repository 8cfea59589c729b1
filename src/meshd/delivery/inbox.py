"""``~/.agent-inbox/<sender>/<name>``: files sent with ``notify-pane --file``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from meshd.errors import StateError, UsageError
from meshd.files import private_dir
from meshd.registry.address import slug


def deposit(inbox: Path, sender: str, src: Path, max_bytes: int) -> Path:
    """Copy ``src`` into the sender's inbox folder without overwriting; returns the new path."""
    try:
        size = src.stat().st_size
        if not src.is_file():
            raise UsageError(f"{src} is not a regular file")
        with src.open("rb"):
            pass
    except OSError as exc:
        raise UsageError(f"cannot read {src}: {exc.strerror}") from None
    if size > max_bytes:
        raise UsageError(f"{src} is {size} bytes, over the {max_bytes}-byte limit",
                         hint="raise delivery.max_file_bytes in ~/.agents/config.toml")
    folder = inbox / slug(sender)
    private_dir(folder)
    stem, suffix = os.path.splitext(src.name)
    for n in range(10000):
        dest = folder / (src.name if n == 0 else f"{stem}.{n}{suffix}")
        try:
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        try:
            with os.fdopen(fd, "wb") as out, src.open("rb") as inp:
                shutil.copyfileobj(inp, out)
                out.flush()
                os.fsync(out.fileno())
        except OSError as exc:
            dest.unlink(missing_ok=True)
            raise StateError(f"could not copy {src} to {dest}: {exc.strerror}") from None
        return dest
    raise StateError(f"{folder} already holds 10000 copies of {src.name}")
