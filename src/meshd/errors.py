"""One exception tree for meshd, with stable codes and process exit codes.

Every boundary (CLI, Unix-socket API, later the SSH link) translates errors
into these classes; adapters convert library exceptions (libtmux, sqlite3,
tomlkit, asyncssh) into them.  Scripts and agents branch on ``code`` or on the
exit status, never on the message text.

Exit codes follow agent-mesh's ``notify-pane``: 0 delivered, 1 usage,
2 unknown agent, 3 recipient busy / conflict, 4 tmux or transport failure.
78 (EX_CONFIG) is a bad configuration, so systemd stops restarting us.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_USAGE = 1
EXIT_UNKNOWN_AGENT = 2
EXIT_REFUSED = 3
EXIT_TRANSPORT = 4
EXIT_CONFIG = 78


class MeshError(Exception):
    """Base of every error meshd raises on purpose."""

    code = "error"
    exit_code = EXIT_TRANSPORT

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"code": self.code, "message": self.message}
        if self.hint:
            out["hint"] = self.hint
        return out

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  fix: {self.hint}"


class UsageError(MeshError):
    code = "usage"
    exit_code = EXIT_USAGE


class UnknownAgent(MeshError):
    code = "unknown_agent"
    exit_code = EXIT_UNKNOWN_AGENT


class Refused(MeshError):
    """The recipient cannot take the message now (draft, dialog, copy-mode...)."""

    code = "refused"
    exit_code = EXIT_REFUSED


class TmuxError(MeshError):
    code = "tmux"
    exit_code = EXIT_TRANSPORT


class TransportError(MeshError):
    code = "transport"
    exit_code = EXIT_TRANSPORT


class DaemonNotRunning(TransportError):
    code = "daemon_down"


class ConfigError(MeshError):
    """A configuration or state file is malformed; names the file, key and reason."""

    code = "config"
    exit_code = EXIT_CONFIG


class StateError(MeshError):
    """A state file (TOML, journal) is unreadable or could not be written."""

    code = "state"
    exit_code = EXIT_TRANSPORT


class AlreadyRunning(MeshError):
    code = "already_running"
    exit_code = EXIT_USAGE


_BY_CODE: dict[str, type[MeshError]] = {
    cls.code: cls
    for cls in (
        MeshError, UsageError, UnknownAgent, Refused, TmuxError, TransportError,
        DaemonNotRunning, ConfigError, StateError, AlreadyRunning,
    )
}


def from_dict(data: dict[str, object]) -> MeshError:
    """Rebuild an error sent over the wire by ``MeshError.to_dict``."""
    cls = _BY_CODE.get(str(data.get("code", "error")), MeshError)
    hint = data.get("hint")
    err = cls(str(data.get("message", "unknown error")), hint=str(hint) if hint else None)
    return err
