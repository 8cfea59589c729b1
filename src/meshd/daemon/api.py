"""Handlers of the Unix-socket API.  Each op takes a dict and returns JSON data.

Ops: ping, status, agents, resolve, whoami, send, hook, resync, reload, log,
inbox, stop.  Errors are MeshErrors; the transport turns them into
``{"ok": false, "error": {...}}`` and the CLIs into exit codes.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshd import __version__
from meshd.daemon import lock_graph, locks_api, tasks_api
from meshd.delivery import classify as cl
from meshd.delivery.inbox import deposit
from meshd.delivery.message import compose
from meshd.delivery.service import SendOptions, deliver, new_message_id, snapshot
from meshd.errors import MeshError, TransportError, UnknownAgent, UsageError
from meshd.files import check_aliases, write_line_file
from meshd.hardware import gpu, memory
from meshd.registry.fold import Entry
from meshd.registry.views import entry_dict, iso
from meshd.tmux.runner import PaneGone
from meshd.tmux.scan import look, scan

if TYPE_CHECKING:
    from meshd.daemon.app import Daemon

Op = Callable[[dict[str, Any]], Awaitable[Any]]
log = logging.getLogger(__name__)


class Api:
    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon
        # message id -> (lock, callers using it): one delivery per id at a time
        self._msg_locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self.ops: dict[str, Op] = {
            name: getattr(self, f"op_{name}") for name in (
                "ping", "status", "agents", "resolve", "whoami", "send", "hook", "resync",
                "reload", "log", "inbox", "stop", "peers", "peers_push")
        }
        for ext in (locks_api.OPS, tasks_api.OPS):
            self.ops.update({name: functools.partial(fn, daemon) for name, fn in ext.items()})

    async def handle(self, op: str, args: dict[str, Any]) -> Any:
        fn = self.ops.get(op)
        if fn is None:
            raise UsageError(f"unknown API op {op!r}", hint=f"known: {', '.join(self.ops)}")
        return await fn(args)

    # -- reads -----------------------------------------------------------------------------
    async def op_ping(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"pid": os.getpid(), "version": __version__, "host": self.d.host}

    async def op_status(self, args: dict[str, Any]) -> dict[str, Any]:
        d = self.d
        assert d.journal is not None
        return {
            "host": d.host, "pid": os.getpid(), "version": __version__,
            "generation": d.journal.generation, "uptime_s": round(time.time() - d.started, 1),
            "started": iso(d.started), "socket": str(d.paths.socket), "home": str(d.paths.home),
            "tmux_socket": str(d.tmux.socket or "default"),
            "architect": (d.registry.agents[a].agent.address
                          if (a := d.architect_id()) in d.registry.agents else None),
            "architect_term": d.term.term,
            "tmux_alive": await asyncio.to_thread(d.tmux.alive),
            "agents_local": len(d.registry.of_host(d.host)),
            "agents_total": len(d.registry.agents),
            "hosts": sorted(d.registry.hosts),
            "journal_events": await asyncio.to_thread(d.journal.count),
            "lamport": d.journal.lamport,
            "hardware": await asyncio.to_thread(_hardware),
        }

    async def op_agents(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        d = self.d
        listing = d.registry.listing()
        first = d.architect_id()
        out = [entry_dict(x, x.agent.id == first) for x in listing]
        for item in out:
            if item["architect"]:
                item["architect_term"] = d.term.term if d.term.architect == first else None
        states = await asyncio.to_thread(self._states, [x for x in listing
                                                        if x.agent.host == d.host])
        up = d.peers.hosts_up()
        remote = await asyncio.gather(*(d.peers.call(h, "agent_states", {}) for h in up),
                                      return_exceptions=True)
        for r in remote:
            if isinstance(r, dict):
                states.update(r)
        for item in out:
            if item["host"] != d.host and item["host"] not in up:
                item["state"] = "unreachable"
                seen = d.last_seen.get(item["host"])
                item["last_seen"] = iso(seen) if seen else None
            else:
                item["state"] = states.get(item["id"], "unknown")
        return out

    def _states(self, entries: list[Entry]) -> dict[str, str]:
        rows = {r.pane_id: r for r in scan(self.d.tmux)}
        out = {}
        for x in entries:
            row = rows.get(x.agent.pane_id)
            if row is None or row.pane_pid != x.agent.pane_pid:
                out[x.agent.id] = "gone"
                continue
            try:
                _, lines = look(self.d.tmux, row.pane_id)
                out[x.agent.id] = cl.classify(snapshot(row, lines, x.agent.tool)).state.value
            except MeshError:
                out[x.agent.id] = "unknown"
        return out

    def _resolve(self, address: str) -> Entry:
        entry = self.d.registry.resolve(address, time.time(), self.d.cfg.discovery.alias_ttl_s)
        if entry is None:
            known = ", ".join(sorted(x.agent.address for x in self.d.registry.agents.values()))
            raise UnknownAgent(f"unknown agent {address!r}",
                               hint=f"known agents: {known or 'none'} (see `mesh agents`)")
        return entry

    async def op_resolve(self, args: dict[str, Any]) -> dict[str, Any]:
        return entry_dict(self._resolve(str(args.get("address", ""))))

    async def op_whoami(self, args: dict[str, Any]) -> dict[str, Any]:
        x = self._sender_entry(args)
        if x is None:
            raise UnknownAgent("this shell is not in a tmux pane that meshd knows",
                               hint="run it inside a tmux pane of the server meshd watches")
        return entry_dict(x)

    def _sender_entry(self, args: dict[str, Any]) -> Entry | None:
        pane = str(args.get("sender_pane") or "")
        sock = str(args.get("sender_socket") or "")
        if not pane or not _same_socket(sock, self.d.tmux.socket):
            return None
        return next((x for x in self.d.registry.of_host(self.d.host)
                     if x.agent.pane_id == pane), None)

    async def op_log(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        assert self.d.journal is not None
        kinds = tuple(str(k) for k in args.get("kinds", ()) or ())
        events = await asyncio.to_thread(self.d.journal.tail, int(args.get("n", 50)), kinds)
        return [e.to_dict() for e in events]

    async def op_inbox(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        assert self.d.journal is not None
        events = await asyncio.to_thread(self.d.journal.tail, int(args.get("n", 1000)),
                                         ("msg.delivered", "msg.refused"))
        addr = args.get("address")
        if addr:
            entry = self._resolve(str(addr))
            names = {entry.agent.address, *entry.aliases}
            events = [e for e in events if e.body.get("to") in names
                      or e.body.get("to_id") == entry.agent.id]
        return [e.to_dict() for e in events]

    # -- writes ----------------------------------------------------------------------------
    async def op_hook(self, args: dict[str, Any]) -> dict[str, Any]:
        self.d.want_scan()
        return {"queued": True}

    async def op_resync(self, args: dict[str, Any]) -> dict[str, Any]:
        n = await self.d.scan()
        return {"changes": n, "agents_local": len(self.d.registry.of_host(self.d.host))}

    async def op_reload(self, args: dict[str, Any]) -> dict[str, Any]:
        if not self.d.reload():
            raise MeshError("config.toml is invalid; the running config was kept "
                            "(see the daemon log or `mesh config check`)")
        return {"reloaded": True}

    async def op_stop(self, args: dict[str, Any]) -> dict[str, Any]:
        asyncio.get_running_loop().call_soon(self.d.stop)
        return {"stopping": True, "pid": os.getpid()}

    async def op_send(self, args: dict[str, Any]) -> dict[str, Any]:
        d = self.d
        entry = self._resolve(str(args.get("to", "")))
        sender_entry = self._sender_entry(args)
        sender = sender_entry.agent.address if sender_entry else str(args.get("sender") or "?")
        mid = str(args.get("message_id") or new_message_id())
        file_src = args.get("file_src")
        if entry.agent.host == d.host:
            file_path = args.get("file")
            if file_src:
                file_path = str(await asyncio.to_thread(
                    deposit, d.paths.inbox, sender, Path(str(file_src)), d.cfg.delivery.max_file_bytes))
            return await self._deliver_local(entry, sender, str(args.get("text", "")), file_path,
                                             args, mid)
        return await self._send_remote(entry, sender, mid, args)

    async def _send_remote(self, entry: Entry, sender: str, mid: str,
                           args: dict[str, Any]) -> dict[str, Any]:
        """Run the delivery on the host that owns the pane; queue it there if asked."""
        d, host = self.d, entry.agent.host
        call_args = {"to_id": entry.agent.id, "sender": sender, "text": str(args.get("text", "")),
                     "message_id": mid, **{k: args.get(k) for k in _OPTS}}
        try:
            file_src = args.get("file_src")
            if file_src:
                src = Path(str(file_src))
                size = src.stat().st_size
                if size > d.cfg.links.max_file_bytes_remote:
                    raise UsageError(f"{src} is {size} bytes, over links.max_file_bytes_remote")
                call_args["file"] = await d.peers.ssh_for(host).put_file(src, sender)
            result: dict[str, Any] = await d.peers.call(host, "send_local", call_args)
            return result
        except TransportError:
            if not args.get("queue") or args.get("file_src"):
                raise
        await d.record("msg.queued", {"id": mid, "from": sender, "to": entry.agent.address,
                                      "to_id": entry.agent.id, "host": host, **call_args})
        return {"message_id": mid, "to": entry.agent.address, "from": sender, "queued": True,
                "submitted": False, "tool": entry.agent.tool, "state": "queued"}

    async def _deliver_local(self, entry: Entry, sender: str, body: str, file_path: Any,
                             args: dict[str, Any], mid: str) -> dict[str, Any]:
        d = self.d
        now = time.time()
        text = compose(sender, body, now, file_path=str(file_path) if file_path else None)
        if len(text.encode()) > d.cfg.delivery.max_message_bytes:
            raise UsageError(f"message is {len(text.encode())} bytes, over the "
                             f"{d.cfg.delivery.max_message_bytes}-byte limit",
                             hint="send it as a file with --file, or raise "
                                  "delivery.max_message_bytes")
        opts = send_options(d.cfg, args)
        base = {"id": mid, "from": sender, "to": entry.agent.address, "to_id": entry.agent.id,
                "pane": entry.agent.pane_id, "bytes": len(text.encode()),
                "file": str(file_path) if file_path else None}
        lock, users = self._msg_locks.get(mid, (asyncio.Lock(), 0))
        self._msg_locks[mid] = (lock, users + 1)
        try:
            return await self._deliver_once(entry, sender, text, base, args, opts, mid, lock)
        finally:
            lock, users = self._msg_locks[mid]
            if users > 1:
                self._msg_locks[mid] = (lock, users - 1)
            else:
                del self._msg_locks[mid]  # the last caller for this id forgets its lock

    async def _deliver_once(self, entry: Entry, sender: str, text: str, base: dict[str, Any],
                            args: dict[str, Any], opts: SendOptions, mid: str,
                            lock: asyncio.Lock) -> dict[str, Any]:
        d = self.d
        async with lock:
            if mid in d.done_ids:  # a retried or re-queued message: exactly once
                return {"message_id": mid, "to": entry.agent.address, "from": sender,
                        "duplicate": True, "submitted": True, "tool": entry.agent.tool,
                        "state": "already delivered"}
            try:
                receipt = await asyncio.to_thread(
                    deliver, d.tmux, entry.agent.pane_id, entry.agent.pane_pid, entry.agent.tool,
                    text, opts, d.paths.state_dir / "panes", mid)
            except MeshError as exc:
                if isinstance(exc, PaneGone):
                    d.want_scan()
                if not args.get("quiet_refusal"):
                    await d.record("msg.refused", {**base, "reason": exc.message, "code": exc.code})
                raise
            await d.record("msg.delivered", {**base, "state": receipt.state,
                                             "submitted": receipt.submitted,
                                             "enters": receipt.enters})
        return {**receipt.to_dict(), "to": entry.agent.address, "from": sender}

    # -- peers -----------------------------------------------------------------------------
    async def peer_call(self, op: str, args: dict[str, Any], from_host: str) -> Any:
        """Requests another host's meshd may make of this one."""
        if op == "send_local":
            entry = self.d.registry.agents.get(str(args.get("to_id")))
            if entry is None or entry.agent.host != self.d.host:
                raise UnknownAgent(f"no agent {args.get('to_id')} on host {self.d.host}")
            return await self._deliver_local(entry, str(args.get("sender") or from_host),
                                             str(args.get("text", "")), args.get("file"), args,
                                             str(args.get("message_id") or new_message_id()))
        if op == "peers_set":
            aliases = check_aliases(args.get("peers"))
            await asyncio.to_thread(write_line_file, self.d.paths.peers_conf, aliases)
            log.info("peers.conf replaced by %s", from_host)
            return {"written": True}
        if op == "lock_op":
            return await locks_api.peer_lock_op(self.d, args)
        if op == "lock_waits":
            return await lock_graph.peer_lock_waits(self.d, args, from_host)
        if op == "agent_states":
            return await asyncio.to_thread(self._states, self.d.registry.of_host(self.d.host))
        raise UsageError(f"peer op {op!r} is not allowed")

    async def deliver_queued(self) -> None:
        """Deliver queued messages addressed to this host's agents that are not done yet."""
        d = self.d
        for mid, b in list(d.queued.items()):
            if mid in d.done_ids:
                continue
            entry = d.registry.agents.get(str(b.get("to_id")))
            if entry is None:
                await d.record("msg.dropped", {"id": mid, "to": b.get("to"),
                                               "reason": "the recipient agent is gone"})
                continue
            try:
                await self._deliver_local(entry, str(b.get("from")), str(b.get("text", "")),
                                          b.get("file"), {**b, "quiet_refusal": True}, mid)
            except MeshError as exc:
                log.info("queued message %s still waits: %s", mid, exc.message)

    async def op_peers(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        return self.d.peers.status()

    async def op_peers_push(self, args: dict[str, Any]) -> dict[str, str]:
        """Write ``peers`` (a list of aliases) into peers.conf on every host linked now."""
        lines = check_aliases(args.get("peers"))
        hosts = sorted(self.d.peers.hosts_up())
        results = await asyncio.gather(*(self.d.peers.call(h, "peers_set", {"peers": lines})
                                         for h in hosts), return_exceptions=True)
        return {h: "written" if not isinstance(r, BaseException) else f"failed: {r}"
                for h, r in zip(hosts, results, strict=True)}


_OPTS = ("force", "force_dialog", "wait_s")




def _hardware() -> dict[str, Any]:
    host = memory.probe()
    return {"cpus": host.cpus, "ram_total_bytes": host.ram_total_bytes,
            "ram_available_bytes": host.ram_available_bytes, "load1": host.load1,
            "gpus": [{"index": g.index, "name": g.name, "total_bytes": g.total_bytes,
                      "used_bytes": g.used_bytes, "processes": len(g.processes)}
                     for g in gpu.probe()]}


def send_options(cfg: Any, args: dict[str, Any]) -> SendOptions:
    return SendOptions(
        force=bool(args.get("force")), force_dialog=bool(args.get("force_dialog")),
        wait_s=float(args.get("wait_s") or 0.0),
        enter_delay_s=cfg.delivery.enter_delay_ms / 1000,
        verify_timeout_s=cfg.delivery.verify_timeout_ms / 1000,
        enter_retries=cfg.delivery.enter_retries)


def _same_socket(caller: str, ours: Path | None) -> bool:
    if ours is None:
        default = Path(os.environ.get("TMUX_TMPDIR", "/tmp")) / f"tmux-{os.getuid()}" / "default"
        ours = default
    try:
        return not caller or os.path.realpath(caller) == os.path.realpath(ours)
    except OSError:
        return False
