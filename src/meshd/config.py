"""meshd configuration: frozen dataclasses, one documented schema.

Precedence: explicit argument > ``MESHD_<SECTION>_<KEY>`` environment variable >
``~/.agents/config.toml`` > default.  Every duration names its unit in the key
(``_s``, ``_ms``).  :func:`load` validates everything and raises
:class:`~meshd.errors.ConfigError` naming the key and the reason; the daemon
exits 78 on it at start and keeps its old config on a bad SIGHUP reload.

``SCHEMA`` is the single source of the keys: ``mesh config init`` renders it
with the docs as comments, and docs/config.md is generated from it.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from dataclasses import dataclass, field
from typing import Any

from meshd.errors import ConfigError
from meshd.files import read_line_file, read_toml
from meshd.paths import StatePaths


def _k(default: Any, doc: str, *, lo: float | None = None, hi: float | None = None,
       choices: tuple[str, ...] = ()) -> Any:
    return field(default=default, metadata={"doc": doc, "lo": lo, "hi": hi, "choices": choices})


@dataclass(frozen=True)
class DaemonConfig:
    log_level: str = _k("info", "log level of meshd: debug, info, warning or error",
                        choices=("debug", "info", "warning", "error"))
    shutdown_timeout_s: float = _k(5.0, "seconds SIGTERM waits for tasks before exiting anyway",
                                   lo=0.1, hi=120)
    request_timeout_s: float = _k(10.0, "seconds one API request may take before it fails",
                                  lo=0.1, hi=600)
    max_request_bytes: int = _k(4 * 1024 * 1024, "largest API frame accepted, in bytes",
                                lo=1024, hi=64 * 1024 * 1024)


@dataclass(frozen=True)
class TmuxConfig:
    socket: str = _k("", "tmux server socket path; empty means the user's default server")
    command_timeout_s: float = _k(5.0, "seconds one tmux command may take", lo=0.1, hi=60)


@dataclass(frozen=True)
class DiscoveryConfig:
    debounce_ms: int = _k(30, "milliseconds to gather tmux hook bursts into one scan", lo=0, hi=5000)
    alias_ttl_s: float = _k(86400.0, "seconds an old address (after a rename) still reaches its agent",
                            lo=0, hi=30 * 86400)
    rescan_s: float = _k(60.0, "seconds between safety-net rescans of tmux", lo=1, hi=3600)


@dataclass(frozen=True)
class DeliveryConfig:
    max_message_bytes: int = _k(1024 * 1024, "largest message accepted, in bytes (after UTF-8)",
                                lo=16, hi=16 * 1024 * 1024)
    enter_delay_ms: int = _k(150, "milliseconds between the paste and Enter for tools without "
                                  "a measured paste window", lo=0, hi=10000)
    verify_timeout_ms: int = _k(1500, "milliseconds to wait for a submit to show before retrying Enter",
                                lo=50, hi=30000)
    enter_retries: int = _k(2, "extra Enter presses when a submit cannot be confirmed", lo=0, hi=10)
    max_file_bytes: int = _k(64 * 1024 * 1024, "largest file notify-pane --file copies, in bytes",
                             lo=0, hi=1 << 40)


@dataclass(frozen=True)
class LinksConfig:
    remote_command: str = _k("~/.local/bin/meshd link",
                             "command a peer runs over SSH to reach this host's meshd")
    identity_file: str = _k("", "private key for peer links (install.sh --peer-key); empty: "
                                "~/.ssh/config, the agent and default keys")
    connect_timeout_s: float = _k(5.0, "seconds to open an SSH link", lo=0.5, hi=120)
    keepalive_interval_s: float = _k(2.0, "seconds between SSH keepalives", lo=0.5, hi=300)
    keepalive_count: int = _k(3, "unanswered keepalives before a link is declared dead", lo=1, hi=100)
    backoff_max_s: float = _k(2.0, "longest wait between reconnect attempts (jittered)", lo=0.1, hi=600)
    anti_entropy_s: float = _k(1.0, "seconds between version-vector exchanges on each link",
                               lo=0.1, hi=3600)
    dead_after_s: float = _k(8.0, "seconds without any frame from a peer before its link is dropped",
                             lo=1, hi=3600)
    call_timeout_s: float = _k(15.0, "seconds a request to another host may take", lo=0.5, hi=600)
    max_frame_bytes: int = _k(64 * 1024 * 1024, "largest frame accepted from a peer, in bytes",
                              lo=4096, hi=256 * 1024 * 1024)
    max_file_bytes_remote: int = _k(256 * 1024 * 1024, "largest file sent to another host, in bytes",
                                    lo=0, hi=1 << 40)


@dataclass(frozen=True)
class LocksConfig:
    ttl_s: float = _k(15.0, "default lease of a lock, renewed by meshd while its holder lives",
                      lo=1, hi=86400)
    grace_s: float = _k(5.0, "seconds a holder on an unreachable host keeps its locks past its lease",
                        lo=0, hi=3600)
    lock_delay_s: float = _k(15.0, "seconds an expired lock stays blocked for other holders",
                             lo=0, hi=3600)


@dataclass(frozen=True)
class TasksConfig:
    bid_window_s: float = _k(0.5, "seconds a task's home waits for bids before picking a winner "
                             "(it decides sooner once every reachable host bid)", lo=0.01, hi=60)
    rebid_s: float = _k(2.0, "seconds before a task nobody could take is offered again (doubling)",
                        lo=0.05, hi=3600)
    rebid_max_s: float = _k(60.0, "longest wait between offers of a task nobody could take, in s",
                            lo=0.05, hi=3600)
    max_requeues: int = _k(3, "times an abandoned task is requeued before it is dead-lettered",
                           lo=0, hi=1000)
    tick_s: float = _k(0.25, "seconds between the task service's checks (timeouts, rounds)",
                       lo=0.01, hi=60)
    deliver_wait_s: float = _k(5.0, "seconds a task delivery waits for a busy pane before the "
                               "attempt is abandoned", lo=0, hi=600)
    unreachable_grace_s: float = _k(60.0, "seconds a worker's host may be unreachable before its "
                                    "task is abandoned", lo=0, hi=86400)
    architect_grace_s: float = _k(20.0, "seconds the agents of an unreachable host still count for "
                                  "the ARCHITECT (so a link flap does not change it)", lo=0, hi=86400)
    briefing: bool = _k(True, "brief every new agent once (architect, rules, tools)")
    brief_tools: str = _k("claude,codex,gemini,aider,cursor-agent",
                          "comma-separated tools whose new agents get the briefing")
    framework_file: str = _k("", "the architect's framework file; empty: ~/.agents/FRAMEWORK.md")


@dataclass(frozen=True)
class Config:
    host: str = _k("", "this host's name in addresses; empty: self.conf, else the short hostname")
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    tmux: TmuxConfig = field(default_factory=TmuxConfig)
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    links: LinksConfig = field(default_factory=LinksConfig)
    locks: LocksConfig = field(default_factory=LocksConfig)
    tasks: TasksConfig = field(default_factory=TasksConfig)


SECTIONS: dict[str, type[Any]] = {
    f.name: f.type if isinstance(f.type, type) else globals()[str(f.type)]
    for f in dataclasses.fields(Config) if f.name != "host"
}


def iter_keys() -> list[tuple[str, dataclasses.Field[Any]]]:
    """All keys as (dotted name, field), in schema order."""
    out: list[tuple[str, dataclasses.Field[Any]]] = [("host", _field(Config, "host"))]
    for section, cls in SECTIONS.items():
        out += [(f"{section}.{f.name}", f) for f in dataclasses.fields(cls)]
    return out


def _field(cls: type[Any], name: str) -> dataclasses.Field[Any]:
    return next(f for f in dataclasses.fields(cls) if f.name == name)


def _coerce(key: str, f: dataclasses.Field[Any], value: Any, source: str) -> Any:
    kind: Any = type(f.default)
    if kind is bool:
        if isinstance(value, str):
            low = value.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{source}: {key} must be true or false, got {value!r}")
    if kind in (int, float):
        try:
            num = kind(value) if isinstance(value, str) else value
        except ValueError:
            num = None
        if isinstance(num, bool) or not isinstance(num, (int, float)) or (
                kind is int and isinstance(num, float)):
            raise ConfigError(f"{source}: {key} must be {'an integer' if kind is int else 'a number'}"
                              f", got {value!r}")
        lo, hi = f.metadata["lo"], f.metadata["hi"]
        if (lo is not None and num < lo) or (hi is not None and num > hi):
            raise ConfigError(f"{source}: {key} = {num} is out of range [{lo}, {hi}]")
        return kind(num)
    if not isinstance(value, str):
        raise ConfigError(f"{source}: {key} must be a string, got {value!r}")
    choices = f.metadata["choices"]
    if choices and value not in choices:
        raise ConfigError(f"{source}: {key} = {value!r} is not one of {', '.join(choices)}")
    return value


def _env_name(dotted: str) -> str:
    return "MESHD_" + dotted.replace(".", "_").upper()


def load(paths: StatePaths, env: dict[str, str] | None = None) -> Config:
    """Read config.toml and MESHD_* overrides into a validated :class:`Config`."""
    env = dict(os.environ) if env is None else env
    data = read_toml(paths.config)
    src = str(paths.config)
    known = {name for name, _ in iter_keys()}
    for section, value in data.items():
        if section not in SECTIONS and section != "host":
            raise ConfigError(f"{src}: unknown section or key [{section}]",
                              hint=f"known sections: {', '.join(SECTIONS)}")
        if section in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{src}: [{section}] must be a table")
            for key in value:
                if f"{section}.{key}" not in known:
                    raise ConfigError(f"{src}: unknown key {section}.{key}",
                                      hint="see docs/config.md or `mesh config show`")
    values: dict[str, Any] = {}
    for dotted, f in iter_keys():
        parts = dotted.split(".")
        raw: Any = data
        for p in parts:
            raw = raw.get(p, dataclasses.MISSING) if isinstance(raw, dict) else dataclasses.MISSING
        ename = _env_name(dotted)
        if ename in env:
            values[dotted] = _coerce(dotted, f, env[ename], f"environment {ename}")
        elif raw is not dataclasses.MISSING:
            values[dotted] = _coerce(dotted, f, raw, src)
    sections = {
        s: cls(**{k.split(".", 1)[1]: v for k, v in values.items() if k.startswith(s + ".")})
        for s, cls in SECTIONS.items()
    }
    return Config(host=values.get("host", ""), **sections)


def host_name(cfg: Config, paths: StatePaths) -> str:
    """This host's mesh name: config ``host``, else self.conf, else the short hostname."""
    if cfg.host:
        return cfg.host
    lines = read_line_file(paths.self_conf)
    return lines[0] if lines else socket.gethostname().split(".")[0]


def render_default() -> str:
    """A config.toml with every key commented out at its default, documented."""
    out = ["# meshd configuration. Every key is optional; shown here at its default.",
           "# Each key can be overridden by an environment variable MESHD_<SECTION>_<KEY>.",
           "# Reload a running daemon with `systemctl --user reload meshd` or `mesh reload`.", ""]
    current = None
    for dotted, f in iter_keys():
        section = dotted.split(".")[0] if "." in dotted else None
        if section != current and section is not None:
            out += ["", f"[{section}]"]
            current = section
        out.append(f"# {f.metadata['doc']}  (env {_env_name(dotted)})")
        out.append(f"# {dotted.split('.')[-1]} = {_toml_literal(f.default)}")
    return "\n".join(out) + "\n"


def _toml_literal(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(v)


def as_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)



def render_markdown() -> str:
    """docs/config.md, generated from the schema (a test keeps the file in sync)."""
    out = ["# Configuration reference", "",
           "`~/.agents/config.toml` (or `$MESHD_HOME/config.toml`). Every key is optional.",
           "Precedence: `MESHD_<SECTION>_<KEY>` environment variable > file > default.",
           "A bad value stops `meshd run` with exit 78 and a message naming the key;",
           "`mesh reload` / SIGHUP keeps the running config when the new file is bad.",
           "`mesh config init` writes this list as a commented file; `mesh config set KEY VALUE`",
           "edits one key and keeps the file's comments.", "",
           "Generated by `python -m meshd.config`; do not edit by hand.", "",
           "| key | default | range / choices | environment | meaning |",
           "|---|---|---|---|---|"]
    for dotted, f in iter_keys():
        md = f.metadata
        rng = ", ".join(md["choices"]) if md["choices"] else (
            f"{md['lo']} – {md['hi']}" if md["lo"] is not None else "")
        out.append(f"| `{dotted}` | `{_toml_literal(f.default)}` | {rng} | `{_env_name(dotted)}` "
                   f"| {md['doc']} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(render_markdown(), end="")
