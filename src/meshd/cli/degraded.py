"""What ``notify-pane`` does when meshd is not running.

Local panes only: one tmux scan names them exactly as the daemon would, and
``registry.toml`` (the daemon's last view) supplies old addresses after a
rename.  Delivery follows the same rules and takes the same per-pane lock as
the daemon.  Events are queued in ``pending.jsonl`` for the journal.
"""

from __future__ import annotations

import time
from typing import Any

from meshd import config as config_mod
from meshd.daemon import pending
from meshd.daemon.api import send_options
from meshd.daemon.discovery import Discovered, discover
from meshd.delivery.message import compose
from meshd.delivery.service import deliver, new_message_id
from meshd.errors import MeshError, UnknownAgent, UsageError
from meshd.files import read_toml
from meshd.paths import StatePaths
from meshd.registry.fold import Agent
from meshd.tmux.runner import Tmux


def _setup(paths: StatePaths) -> tuple[config_mod.Config, Tmux, str, Discovered]:
    cfg = config_mod.load(paths)
    host = config_mod.host_name(cfg, paths)
    tmux = Tmux.from_env(cfg.tmux.socket, cfg.tmux.command_timeout_s)
    return cfg, tmux, host, discover(tmux, host)


def _agent_dict(a: Agent) -> dict[str, Any]:
    return {"address": a.address, "id": a.id, "host": a.host, "session": a.session,
            "window": a.window, "pane": a.pane_id, "tool": a.tool, "role": a.role,
            "scope": a.scope, "cwd": a.cwd, "architect": False, "state": "unknown"}


def list_direct(paths: StatePaths) -> list[dict[str, Any]]:
    return [_agent_dict(a) for a in _setup(paths)[3].agents]


def whoami_direct(paths: StatePaths, caller: dict[str, Any]) -> dict[str, Any] | None:
    found = _setup(paths)[3]
    pane = caller.get("sender_pane")
    return next((_agent_dict(a) for a in found.agents if a.pane_id == pane), None)


def _resolve(paths: StatePaths, found: Discovered, address: str) -> Agent:
    for a in found.agents:
        if a.address == address:
            return a
    try:
        known = read_toml(paths.registry_toml).get("agents", {})
    except MeshError:
        known = {}
    for info in known.values():
        if isinstance(info, dict) and address in info.get("aliases", ()):
            pane = info.get("pane")
            for a in found.agents:
                if a.pane_id == pane:
                    return a
    names = ", ".join(sorted(a.address for a in found.agents)) or "none"
    raise UnknownAgent(f"unknown agent {address!r}", hint=f"local agents: {names}")


def send_direct(paths: StatePaths, req: dict[str, Any]) -> dict[str, Any]:
    cfg, tmux, _host, found = _setup(paths)
    target = _resolve(paths, found, str(req["to"]))
    sender = next((a.address for a in found.agents if a.pane_id == req.get("sender_pane")),
                  str(req.get("sender") or "?"))
    text = compose(sender, str(req["text"]), time.time(), file_path=req.get("file"))
    if len(text.encode()) > cfg.delivery.max_message_bytes:
        raise UsageError(f"message is over the {cfg.delivery.max_message_bytes}-byte limit")
    mid = new_message_id()
    base = {"id": mid, "from": sender, "to": target.address, "to_id": target.id,
            "pane": target.pane_id, "bytes": len(text.encode()), "file": req.get("file")}
    try:
        receipt = deliver(tmux, target.pane_id, target.pane_pid, target.tool, text,
                          send_options(cfg, req), paths.state_dir / "panes", mid)
    except MeshError as exc:
        pending.record(paths, "msg.refused", {**base, "reason": exc.message, "code": exc.code})
        raise
    pending.record(paths, "msg.delivered", {**base, "state": receipt.state,
                                            "submitted": receipt.submitted,
                                            "enters": receipt.enters})
    return {**receipt.to_dict(), "to": target.address, "from": sender, "degraded": True}
