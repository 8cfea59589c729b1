"""Durable files: atomic writes and TOML with errors that name file and line.

The one home of tomlkit.  Reading uses the stdlib ``tomllib`` (fast, used on
the CLI's degraded path); writing uses tomlkit so that comments in files
people edit (``config.toml``) survive ``mesh config set``.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from meshd.errors import ConfigError, StateError

_TOML_POS = re.compile(r"\(at line (\d+), column (\d+)\)")


def atomic_write(path: Path, data: bytes | str, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so a crash leaves the old or the new file.

    Temp file in the same directory, fsync, rename, then fsync of the
    directory so the rename itself is durable.  Any I/O error (full disk,
    EIO on fsync) is raised as :class:`StateError` and the old file is kept.
    """
    raw = data.encode() if isinstance(data, str) else data
    private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise StateError(f"could not write {path}: {exc.strerror or exc}",
                         hint="check free disk space and permissions of the directory") from exc


def private_dir(path: Path) -> Path:
    """Create ``path`` and any missing parents with mode 0700 (mkdir's ``mode`` skips parents).
    Each new directory's name is made durable (its parent fsynced), so a power cut right after
    the first write into it cannot take the whole directory away."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=0o700)
        os.chmod(d, 0o700)
        fsync_dir(d.parent)
    return path


def fsync_dir(directory: Path) -> None:
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def remove_stale_temps(directory: Path) -> int:
    """Delete temp files left by an interrupted :func:`atomic_write`; returns how many."""
    removed = 0
    if not directory.is_dir():
        return 0
    for p in directory.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            p.unlink()
            removed += 1
    return removed


def read_toml(path: Path, *, missing_ok: bool = True) -> dict[str, Any]:
    """Parse a TOML file; a syntax error becomes a ConfigError naming file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if missing_ok:
            return {}
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    return parse_toml(text, path)


def parse_toml(text: str, path: Path | str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        m = _TOML_POS.search(msg)
        where = f"{path}:{m.group(1)}:{m.group(2)}" if m else str(path)
        reason = _TOML_POS.sub("", msg).strip()
        raise ConfigError(f"{where}: malformed TOML: {reason}",
                          hint=f"fix line {m.group(1) if m else '?'} of {path}") from None


def dump_toml(data: dict[str, Any], *, header: str = "") -> str:
    """Render plain data as TOML (tomlkit), with an optional comment header."""
    import tomlkit

    doc = tomlkit.document()
    for line in header.splitlines():
        doc.add(tomlkit.comment(line))
    if header:
        doc.add(tomlkit.nl())
    for key, value in data.items():
        doc[key] = value
    return tomlkit.dumps(doc)


def edit_toml(path: Path, dotted_key: str, value: Any) -> None:
    """Set ``a.b.c = value`` in a TOML file, keeping its comments and layout."""
    import tomlkit
    from tomlkit.exceptions import ParseError

    text = path.read_text(encoding="utf-8") if path.exists() else ""
    try:
        doc = tomlkit.parse(text)
    except ParseError as exc:
        raise ConfigError(f"{path}:{exc.line}:{exc.col}: malformed TOML: {exc}") from None
    *parents, leaf = dotted_key.split(".")
    node: Any = doc
    for part in parents:
        if part not in node:
            node[part] = tomlkit.table()
        node = node[part]
    node[leaf] = value
    atomic_write(path, tomlkit.dumps(doc))


def read_line_file(path: Path) -> list[str]:
    """Lines of a ``self.conf``/``peers.conf`` style file, without comments and blanks."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    out = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            out.append(line)
    return out


PEERS_HEADER = "# meshd peers: one SSH alias per line; the first is the mesh's anchor"


def check_aliases(raw: Any) -> list[str]:
    """A list of peer aliases, each one printable word without '#', or a ConfigError."""
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise ConfigError("peers must be a list of aliases")
    bad = [x for x in raw if not x or any(c.isspace() or not c.isprintable() or c == "#" for c in x)]
    if bad:
        raise ConfigError(f"bad alias {bad[0]!r}: one word, printable, no '#'")
    return list(raw)


def write_line_file(path: Path, lines: list[str], header: str = PEERS_HEADER) -> None:
    """Atomically write a ``peers.conf`` style file: a comment header, one entry a line."""
    atomic_write(path, f"{header}\n" + "".join(f"{x}\n" for x in lines), mode=0o644)
