"""The daemon: one per user and host.

Lifecycle (see docs/daemon.md):

* start -- take the pid lock (a second daemon exits with a message), open the
  journal, fold it, import events a degraded ``notify-pane`` left behind,
  scan tmux, bind the Unix socket; "ready" is logged only after that;
* run -- one root TaskGroup: the API server, the scan loop (tmux hooks and
  ``mesh resync`` wake it; a safety-net timer too);
* SIGHUP -- reload config.toml; a bad file is logged and the old config kept;
* SIGTERM/SIGINT or ``mesh down`` -- stop accepting, cancel the loops, leave
  within ``daemon.shutdown_timeout_s``.

Every blocking call (tmux, psutil, SQLite, file writes) goes through
``asyncio.to_thread``; the loop itself only folds events and routes requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from typing import Any

from meshd import config as config_mod
from meshd.config import Config
from meshd.daemon import architect, lock_graph, locks_api, pending, tasks_api
from meshd.daemon.architect import Term
from meshd.daemon.discovery import Discovered, discover
from meshd.daemon.pidlock import PidLock
from meshd.errors import ConfigError, MeshError
from meshd.files import atomic_write, dump_toml, private_dir, remove_stale_temps
from meshd.journal.event import Event
from meshd.journal.store import Journal
from meshd.locks.service import LockService
from meshd.paths import StatePaths
from meshd.registry.fold import Agent, Entry, Registry, changes, fold
from meshd.registry.views import render
from meshd.tmux.runner import Tmux
from meshd.transport import unix

log = logging.getLogger(__name__)


class Daemon:
    def __init__(self, paths: StatePaths, cfg: Config) -> None:
        self.paths, self.cfg = paths, cfg
        self.host = config_mod.host_name(cfg, paths)
        self.tmux = Tmux.from_env(cfg.tmux.socket, cfg.tmux.command_timeout_s)
        self.started = time.time()
        self.registry = Registry()
        self.last_scan: Discovered | None = None
        self.journal: Journal | None = None
        self._stop = asyncio.Event()
        self._scan_wanted = asyncio.Event()
        self._scan_lock = asyncio.Lock()
        self._lock = PidLock(paths.pidfile)
        self._views_wanted = asyncio.Event()
        self._queue_wanted = asyncio.Event()
        self.last_seen: dict[str, float] = {}   # peer host -> wall time its link was last up
        self.done_ids: set[str] = set()          # message ids delivered or dropped, mesh-wide
        self.queued: dict[str, dict[str, Any]] = {}  # id -> msg.queued body, for agents here
        self.locks: LockService | None = None
        self.mesh_waits = lock_graph.MeshWaits()  # other homes' wait-for edges
        self.terms = architect.TermBook()           # the ARCHITECT's terms (journal)
        from meshd.daemon.api import Api  # the API needs a constructed daemon
        from meshd.daemon.peers import PeerManager

        self.api = Api(self)
        self.peers = PeerManager(self)
        self.tasks = tasks_api.attach(self)

    # -- lifecycle -------------------------------------------------------------------------
    async def run(self) -> None:
        self._lock.acquire()
        try:
            await self._start()
            await self._serve()
        finally:
            if self.journal is not None:
                self.journal.close()
            if self.locks is not None:
                self.locks.close()
            with contextlib.suppress(FileNotFoundError):
                self.paths.socket.unlink()
            self._lock.release()

    async def _start(self) -> None:
        for d in (self.paths.home, self.paths.state_dir, self.paths.state_dir / "panes"):
            private_dir(d)
        await asyncio.to_thread(remove_stale_temps, self.paths.home)
        self.journal = await asyncio.to_thread(
            Journal, self.paths.journal, self.paths.audit, self.host)
        past = await asyncio.to_thread(self.journal.all)
        self.registry = fold(past)
        self._note(past)
        await self.record("host.seen", {"host": self.host, "generation": self.journal.generation,
                                        "pid": os.getpid()})
        self.locks = await asyncio.to_thread(locks_api.attach, self)
        imported = await asyncio.to_thread(pending.drain, self.paths, self.journal)
        if imported:
            log.info("imported %d events recorded while meshd was down", imported)
        await self.scan()

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        server = await unix.serve(self.paths.socket, self.api.handle,
                                  max_frame=self.cfg.daemon.max_request_bytes,
                                  timeout_s=self.cfg.daemon.request_timeout_s,
                                  peer_handler=self.peers.accept)
        log.info("meshd ready: host=%s pid=%d socket=%s", self.host, os.getpid(),
                 self.paths.socket, extra={"host": self.host})
        try:
            async with asyncio.TaskGroup() as tg:
                loops = [tg.create_task(self._scan_loop()), tg.create_task(self._rescan_timer()),
                         tg.create_task(self._views_loop()), tg.create_task(self._queue_loop()),
                         tg.create_task(self.peers.run()), tg.create_task(locks_api.run_ticker(self)),
                         tg.create_task(lock_graph.run(self)), tg.create_task(architect.run(self)),
                         tg.create_task(tasks_api.run(self))]
                await self._stop.wait()
                server.close()
                for t in loops:
                    t.cancel()
            await self.peers.drain(1.0)
            server.close()
            await server.wait_closed(self.cfg.daemon.shutdown_timeout_s)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        log.info("meshd stopped")

    def stop(self) -> None:
        log.info("stopping")
        self._stop.set()

    def reload(self) -> bool:
        """SIGHUP: adopt a new config.toml, or keep the old one if it is bad."""
        try:
            new = config_mod.load(self.paths)
        except ConfigError as exc:
            log.error("config reload refused, keeping the running config: %s", exc)
            return False
        self.cfg = new
        self.tmux = Tmux.from_env(new.tmux.socket, new.tmux.command_timeout_s)
        logging.getLogger("meshd").setLevel(new.daemon.log_level.upper())
        log.info("config reloaded from %s", self.paths.config)
        return True

    # -- journal and registry --------------------------------------------------------------
    async def record(self, kind: str, body: dict[str, Any]) -> Event:
        return (await self.record_many([(kind, body)]))[0]

    async def record_many(self, items: list[tuple[str, dict[str, Any]]]) -> list[Event]:
        assert self.journal is not None
        events = await asyncio.to_thread(self.journal.append_many, items, time.time())
        for e in events:
            self.registry.apply(e)
        self._note(events)
        self.peers.broadcast(events)
        return events

    def apply_remote(self, events: list[Event]) -> None:
        """Events that arrived from peers (already in the journal, in per-origin order)."""
        for e in events:
            self.registry.apply(e)
        self._note(events)
        self._views_wanted.set()

    def _note(self, events: list[Event]) -> None:
        tasks_api.on_events(self, events)
        self.terms.apply(events)
        for e in events:
            if e.kind in ("msg.delivered", "msg.dropped"):
                self.done_ids.add(str(e.body.get("id")))
                self.queued.pop(str(e.body.get("id")), None)
            elif (e.kind == "msg.queued" and e.body.get("host") == self.host
                  and str(e.body.get("id")) not in self.done_ids):
                self.queued[str(e.body.get("id"))] = dict(e.body)
                self._queue_wanted.set()

    def host_seen(self, host: str) -> None:
        self.last_seen[host] = time.time()
        self._views_wanted.set()

    def architect(self) -> Entry | None:
        """The ARCHITECT as this host sees it (rule in daemon/architect.py)."""
        return architect.choose(self.registry.listing(), here=self.host, up=self.peers.hosts_up(),
                                last_seen=self.last_seen, started=self.started,
                                grace_s=self.cfg.tasks.architect_grace_s, now=time.time())

    @property
    def term(self) -> Term:
        return self.terms.current

    def architect_id(self) -> str | None:
        arch = self.architect()
        return arch.agent.id if arch is not None else None

    async def _views_loop(self) -> None:
        while True:
            await self._views_wanted.wait()
            await asyncio.sleep(0.01)  # gather a burst of remote events into one write
            self._views_wanted.clear()
            try:
                await asyncio.to_thread(self.write_views)
            except MeshError as exc:
                log.warning("could not write the registry views: %s", exc)

    async def _queue_loop(self) -> None:
        """Deliver messages queued (on any host) for agents of this host, exactly once."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue_wanted.wait(), 2.0)
            self._queue_wanted.clear()
            await self.api.deliver_queued()

    def local_agents(self) -> dict[str, Agent]:
        return {x.agent.id: x.agent for x in self.registry.of_host(self.host)}

    # -- discovery -------------------------------------------------------------------------
    def want_scan(self) -> None:
        self._scan_wanted.set()

    async def _scan_loop(self) -> None:
        while True:
            await self._scan_wanted.wait()
            await asyncio.sleep(self.cfg.discovery.debounce_ms / 1000)
            self._scan_wanted.clear()
            try:
                await self.scan()
            except MeshError as exc:
                log.warning("scan failed: %s", exc)

    async def _rescan_timer(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.discovery.rescan_s)
            self.want_scan()

    async def scan(self) -> int:
        """Scan tmux now; journal what changed and rewrite the TOML views.  Returns #changes."""
        async with self._scan_lock:
            found = await asyncio.to_thread(discover, self.tmux, self.host)
            self.last_scan = found
            delta = changes(self.local_agents(), found.agents)
            if delta:
                await self.record_many(delta)
                log.info("registry: %d change(s), %d local agent(s)", len(delta), len(found.agents))
            await asyncio.to_thread(self.write_views)
            return len(delta)

    def reachable(self) -> set[str]:
        return {self.host, *self.peers.hosts_up()}

    def write_views(self) -> None:
        now = time.time()
        header = "Written by meshd; edits are overwritten. See `mesh agents`."
        arch = self.architect_id()
        atomic_write(self.paths.local_toml, dump_toml(
            render(self.registry, only_host=self.host, now=now, architect=arch), header=header))
        atomic_write(self.paths.registry_toml, dump_toml(
            render(self.registry, only_host=None, now=now, reachable=self.reachable(),
                   last_seen=self.last_seen, architect=arch), header=header))


def run_daemon(paths: StatePaths, cfg: Config) -> None:
    asyncio.run(Daemon(paths, cfg).run())
