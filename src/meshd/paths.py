"""Where meshd keeps its state.  Pure path arithmetic, no file access.

Layout (compatible with agent-mesh)::

    ~/.agents/                 MESHD_HOME overrides
        config.toml            meshd settings (docs/config.md)
        self.conf              this host's mesh name (one line)
        peers.conf             SSH aliases of the peers, one per line; first = anchor
        local.toml             this host's agents (written by meshd)
        registry.toml          the whole mesh's agents (written by meshd)
        FRAMEWORK.md           the architect's framework file
        meshd/
            meshd.sock         Unix-socket API (0600)
            meshd.pid          pid of the running daemon (flock-held)
            journal.db         SQLite WAL journal
            audit.jsonl        one JSON line per journal event
            meshd.log          daemon log when started by ``mesh up``
    ~/.agent-inbox/<sender>/   files sent with ``notify-pane --file``
"""

from __future__ import annotations

import os
from pathlib import Path


class StatePaths:
    """State locations; a plain class (no dataclass) to keep CLI start-up fast."""

    __slots__ = ("home", "inbox")

    def __init__(self, home: Path, inbox: Path) -> None:
        self.home, self.inbox = home, inbox

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StatePaths) and (self.home, self.inbox) == (other.home, other.inbox)

    def __hash__(self) -> int:
        return hash((self.home, self.inbox))

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> StatePaths:
        env = dict(os.environ) if env is None else env
        user_home = Path(env.get("HOME") or Path.home())
        home = Path(env["MESHD_HOME"]) if env.get("MESHD_HOME") else user_home / ".agents"
        inbox = (
            Path(env["MESHD_INBOX"]) if env.get("MESHD_INBOX") else user_home / ".agent-inbox"
        )
        return cls(home=home, inbox=inbox)

    @property
    def config(self) -> Path:
        return self.home / "config.toml"

    @property
    def self_conf(self) -> Path:
        return self.home / "self.conf"

    @property
    def peers_conf(self) -> Path:
        return self.home / "peers.conf"

    @property
    def local_toml(self) -> Path:
        return self.home / "local.toml"

    @property
    def registry_toml(self) -> Path:
        return self.home / "registry.toml"

    @property
    def framework(self) -> Path:
        return self.home / "FRAMEWORK.md"

    @property
    def state_dir(self) -> Path:
        return self.home / "meshd"

    @property
    def socket(self) -> Path:
        return self.state_dir / "meshd.sock"

    @property
    def pidfile(self) -> Path:
        return self.state_dir / "meshd.pid"

    @property
    def journal(self) -> Path:
        return self.state_dir / "journal.db"

    @property
    def audit(self) -> Path:
        return self.state_dir / "audit.jsonl"

    @property
    def log(self) -> Path:
        return self.state_dir / "meshd.log"
