"""Peer links: one SSH link per peer in peers.conf, the peer protocol, replication.

Every host dials every alias in ``peers.conf`` (``transport.ssh``) and also accepts the
links its peers dial in (through ``meshd link`` and the Unix socket), so a pair of
hosts has two sessions; either can carry anything.  A session speaks frames of
``{"t": kind, ...}``:

* ``hello``  {host, generation, vv} -- first frame each way;
* ``vv``     {vv} -- "this is what I have": the other side answers with ``events``
  holding everything the sender lacks (anti-entropy: on hello, every
  ``links.anti_entropy_s``, and after a gap);
* ``events`` {events} -- new events are pushed at once and relayed to every other
  session, so a host reachable only through another still converges;
* ``call`` / ``reply`` -- a request run on the peer (delivery into its panes);
* ``ping`` / ``pong`` -- round-trip time; silence for ``links.dead_after_s`` drops it.

Each session has a bounded outbox drained by its own writer: a slow or blackholed peer
never blocks the daemon -- when its outbox fills, the session is dropped and the peer
catches up by anti-entropy when it comes back.  A malformed frame drops the session
with a log line, never the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from meshd.errors import MeshError, TransportError, from_dict
from meshd.files import read_line_file
from meshd.journal.event import Event
from meshd.transport import local
from meshd.transport.frames import FrameError
from meshd.transport.local import LocalLink
from meshd.transport.ssh import SshLink, open_link
from meshd.transport.streams import Reader, Writer, read_frame, write_frame

if TYPE_CHECKING:
    from meshd.daemon.app import Daemon

log = logging.getLogger(__name__)
OUTBOX = 2000
CHUNK = 1000


@dataclass
class LinkState:
    """What this host knows about its outgoing link to one alias."""

    alias: str
    host: str | None = None
    up: bool = False
    since: float = 0.0
    last_seen: float = 0.0
    rtt_ms: float | None = None
    error: str = ""
    attempts: int = 0
    ssh: SshLink | LocalLink | None = None


class SessionClosed(Exception):
    pass


class PeerSession:
    """One connection to one peer, in either direction."""

    def __init__(self, mgr: PeerManager, reader: Reader, writer: Writer, *,
                 alias: str | None) -> None:
        self.mgr, self.reader, self.writer, self.alias = mgr, reader, writer, alias
        self.host: str | None = None
        self.generation = 0
        self.peer_vv: dict[str, int] = {}
        self.rtt_ms: float | None = None
        self.last_frame = time.monotonic()
        self.outbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(OUTBOX)
        self._calls: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = False

    def __repr__(self) -> str:
        return f"<session {self.alias or 'incoming'} host={self.host}>"

    # -- sending ---------------------------------------------------------------------------
    def enqueue(self, frame: dict[str, Any]) -> None:
        if self.closed:
            return
        try:
            self.outbox.put_nowait(frame)
        except asyncio.QueueFull:
            log.warning("peer %s is not reading; dropping the link", self.host or self.alias)
            self.close()

    def send_events(self, events: list[Event]) -> None:
        for i in range(0, len(events), CHUNK):
            self.enqueue({"t": "events", "events": [e.to_dict() for e in events[i:i + CHUNK]]})

    async def call(self, op: str, args: dict[str, Any], timeout_s: float) -> Any:
        rid = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._calls[rid] = fut
        self.enqueue({"t": "call", "id": rid, "op": op, "args": args})
        try:
            return await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            raise TransportError(f"host {self.host} did not answer {op!r} within {timeout_s:g} s") \
                from None
        finally:
            self._calls.pop(rid, None)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(asyncio.QueueFull):
                self.outbox.put_nowait(None)

    def abort(self) -> None:
        """Close now, without flushing: the read loop sees the end and the session ends."""
        self.close()
        with contextlib.suppress(Exception):
            self.writer.close()  # type: ignore[attr-defined]

    # -- running ---------------------------------------------------------------------------
    async def run(self) -> None:
        writer = asyncio.create_task(self._write_loop())
        pinger = asyncio.create_task(self._ping_loop())
        try:
            self.enqueue(self.mgr.hello())
            await self._read_loop()
        except (FrameError, ValueError, KeyError, TypeError) as exc:
            log.warning("bad frame from %s, dropping the link: %s", self.host or self.alias, exc)
        except (ConnectionError, OSError, asyncio.IncompleteReadError, SessionClosed) as exc:
            log.info("link to %s closed: %s", self.host or self.alias, exc or type(exc).__name__)
        finally:
            self.close()
            for t in (writer, pinger, *self._tasks):
                t.cancel()
            await asyncio.gather(writer, pinger, *self._tasks, return_exceptions=True)
            for fut in self._calls.values():
                if not fut.done():
                    fut.set_exception(TransportError(f"link to {self.host} closed"))
            self.mgr.unregister(self)

    async def _write_loop(self) -> None:
        while True:
            frame = await self.outbox.get()
            if frame is None:
                return
            try:
                await asyncio.wait_for(write_frame(self.writer, frame), self.mgr.cfg.dead_after_s)
            except (TimeoutError, ConnectionError, OSError) as exc:
                log.info("cannot write to %s (%s); dropping the link", self.host or self.alias, exc)
                self.close()
                return

    async def _ping_loop(self) -> None:
        while True:
            await asyncio.sleep(self.mgr.cfg.dead_after_s / 4)
            self.enqueue({"t": "ping", "ts": time.monotonic()})

    async def _read_loop(self) -> None:
        cap = self.mgr.cfg.max_frame_bytes
        while not self.closed:
            try:
                frame = await asyncio.wait_for(read_frame(self.reader, cap),
                                               self.mgr.cfg.dead_after_s)
            except TimeoutError:
                raise SessionClosed(f"no frame for {self.mgr.cfg.dead_after_s:g} s") from None
            if frame is None:
                raise SessionClosed("peer closed the link")
            self.last_frame = time.monotonic()
            await self._dispatch(frame)

    async def _dispatch(self, f: dict[str, Any]) -> None:
        kind = f["t"]
        if kind == "hello":
            self.host, self.generation = str(f["host"]), int(f["generation"])
            if self.host == self.mgr.host:
                if self.alias in self.mgr.links:  # peers.conf lists this host itself: fine
                    self.mgr.links[self.alias].host = self.host
                raise SessionClosed("this alias is this host itself")
            self.peer_vv = _vv(f["vv"])
            self.mgr.register(self)
            self.send_events(await self.mgr.missing_for(self.peer_vv))
        elif self.host is None:
            raise FrameError(f"{kind!r} frame before hello")
        elif kind == "events":
            await self.mgr.ingest(self, [Event.from_dict(d) for d in f["events"]])
        elif kind == "vv":
            self.peer_vv = _vv(f["vv"])
            self.send_events(await self.mgr.missing_for(self.peer_vv))
        elif kind == "ping":
            self.enqueue({"t": "pong", "ts": f["ts"]})
        elif kind == "pong":
            self.rtt_ms = (time.monotonic() - float(f["ts"])) * 1000
        elif kind == "call":
            task = asyncio.create_task(self._serve_call(int(f["id"]), str(f["op"]), dict(f["args"])))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif kind == "reply":
            fut = self._calls.get(int(f["id"]))
            if fut is not None and not fut.done():
                if f.get("ok"):
                    fut.set_result(f.get("result"))
                else:
                    fut.set_exception(from_dict(dict(f.get("error") or {})))
        else:
            raise FrameError(f"unknown frame kind {kind!r}")

    async def _serve_call(self, rid: int, op: str, args: dict[str, Any]) -> None:
        try:
            result = await self.mgr.daemon.api.peer_call(op, args, self.host or "?")
            self.enqueue({"t": "reply", "id": rid, "ok": True, "result": result})
        except MeshError as exc:
            self.enqueue({"t": "reply", "id": rid, "ok": False, "error": exc.to_dict()})
        except Exception as exc:  # one bad call must not end the link
            log.exception("peer call %s failed", op)
            self.enqueue({"t": "reply", "id": rid, "ok": False,
                          "error": {"code": "error", "message": f"{op}: {exc}"}})


def _vv(raw: Any) -> dict[str, int]:
    if not isinstance(raw, dict):
        raise FrameError("version vector is not an object")
    return {str(k): int(v) for k, v in raw.items()}


@dataclass
class PeerManager:
    daemon: Daemon
    links: dict[str, LinkState] = field(default_factory=dict)
    sessions: set[PeerSession] = field(default_factory=set)

    @property
    def cfg(self) -> Any:
        return self.daemon.cfg.links

    @property
    def host(self) -> str:
        return self.daemon.host

    def aliases(self) -> list[str]:
        return [a for a in read_line_file(self.daemon.paths.peers_conf) if a != self.host]

    def anchor(self) -> str:
        """The mesh's anchor host name: the first line of peers.conf (this host if empty)."""
        lines = read_line_file(self.daemon.paths.peers_conf)
        if not lines or lines[0] == self.host:
            return self.host
        st = self.links.get(lines[0])
        return st.host if st and st.host else lines[0]

    def hello(self) -> dict[str, Any]:
        j = self.daemon.journal
        assert j is not None
        return {"t": "hello", "host": self.host, "generation": j.generation, "vv": j.vv}

    # -- running ---------------------------------------------------------------------------
    async def run(self) -> None:
        """Dial every alias and exchange version vectors, until cancelled."""
        dialers: dict[str, asyncio.Task[None]] = {}
        try:
            while True:
                wanted = set(self.aliases())
                for alias in wanted - dialers.keys():
                    self.links.setdefault(alias, LinkState(alias))
                    dialers[alias] = asyncio.create_task(self._dial(alias))
                for alias in set(dialers) - wanted:
                    dialers.pop(alias).cancel()
                    self.links.pop(alias, None)
                await asyncio.sleep(self.cfg.anti_entropy_s)
                vv = self.hello()["vv"]
                for s in list(self.sessions):
                    s.enqueue({"t": "vv", "vv": vv})
        finally:
            for t in dialers.values():
                t.cancel()
            await asyncio.gather(*dialers.values(), return_exceptions=True)
            for s in list(self.sessions):
                s.abort()

    async def _dial(self, alias: str) -> None:
        st = self.links[alias]
        delay = 0.1
        while True:
            st.attempts += 1
            try:
                link = await self._open(alias)
            except TransportError as exc:
                if st.error != exc.message:
                    log.warning("link to %s: %s", alias, exc.message)
                st.error = exc.message
            else:
                started = time.monotonic()
                st.ssh, st.error = link, ""
                session = PeerSession(self, link.reader, link.writer, alias=alias)
                try:
                    await session.run()
                finally:
                    link.close()
                    st.ssh, st.up = None, False
                if st.host == self.host:
                    log.info("%s is this host; not linking to it", alias)
                    return
                if time.monotonic() - started > 5:
                    delay = 0.1
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self.cfg.backoff_max_s)

    async def _open(self, alias: str) -> SshLink | LocalLink:
        if alias.startswith(local.PREFIX):
            return await local.open_local(alias, self.cfg.connect_timeout_s)
        return await open_link(alias, self.cfg.remote_command,
                               connect_timeout_s=self.cfg.connect_timeout_s,
                               keepalive_interval_s=self.cfg.keepalive_interval_s,
                               keepalive_count=self.cfg.keepalive_count,
                               identity_file=self.cfg.identity_file)

    async def drain(self, timeout_s: float) -> None:
        """After ``run`` ended: give the sessions peers dialled in a moment to finish."""
        for s in list(self.sessions):
            s.abort()
        deadline = time.monotonic() + timeout_s
        while self.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A peer dialled in (``meshd link`` handed us its channel)."""
        await PeerSession(self, reader, writer, alias=None).run()

    def register(self, s: PeerSession) -> None:
        self.sessions.add(s)
        if s.alias and s.alias in self.links:
            st = self.links[s.alias]
            st.host, st.up, st.since = s.host, True, time.time()
        log.info("linked with %s (%s)", s.host, s.alias or "incoming")

    def unregister(self, s: PeerSession) -> None:
        self.sessions.discard(s)
        if s.host:
            self.daemon.host_seen(s.host)

    # -- replication -----------------------------------------------------------------------
    async def missing_for(self, vv: dict[str, int]) -> list[Event]:
        j = self.daemon.journal
        assert j is not None
        return await asyncio.to_thread(j.since, vv)

    def broadcast(self, events: list[Event], exclude: PeerSession | None = None) -> None:
        if not events:
            return
        for s in list(self.sessions):
            if s is not exclude and s.host is not None:
                s.send_events(events)

    async def ingest(self, src: PeerSession, events: list[Event]) -> None:
        j = self.daemon.journal
        assert j is not None
        new = await asyncio.to_thread(j.ingest, events)
        vv = j.vv
        if any(e.seq > vv.get(e.origin, 0) for e in events):
            src.enqueue({"t": "vv", "vv": vv})  # a gap: ask for what is missing
        if new:
            self.daemon.apply_remote(new)
            self.broadcast(new, exclude=src)

    # -- queries ---------------------------------------------------------------------------
    def hosts_up(self) -> set[str]:
        return {s.host for s in self.sessions if s.host}

    def session_for(self, host: str) -> PeerSession:
        live = [s for s in self.sessions if s.host == host and not s.closed]
        if not live:
            raise TransportError(f"host {host} is not reachable now (no live link)",
                                 hint="see `mesh peers`; --queue keeps the message until it is back")
        live.sort(key=lambda s: s.alias is None)  # prefer the link we dialled
        return live[0]

    def ssh_for(self, host: str) -> SshLink | LocalLink:
        for st in self.links.values():
            if st.host == host and st.ssh is not None:
                return st.ssh
        raise TransportError(f"no SSH link of ours reaches host {host} for a file copy",
                             hint=f"list {host} in peers.conf on this host")

    async def call(self, host: str, op: str, args: dict[str, Any], *, extra_s: float = 0.0) -> Any:
        """Run ``op`` on ``host``; ``extra_s`` lengthens the timeout for ops that may wait
        there on purpose (a queued lock request)."""
        return await self.session_for(host).call(op, args, self.cfg.call_timeout_s + max(0.0, extra_s))

    def status(self) -> list[dict[str, Any]]:
        j = self.daemon.journal
        mine = j.vv if j else {}
        out = []
        for alias, st in sorted(self.links.items()):
            if st.host == self.host:
                continue
            sess = [s for s in self.sessions if s.host and s.host == st.host]
            rtts = [s.rtt_ms for s in sess if s.rtt_ms is not None]
            peer_vv = max((s.peer_vv for s in sess), key=lambda v: sum(v.values()), default={})
            lag = sum(max(0, n - peer_vv.get(o, 0)) for o, n in mine.items()) if sess else None
            out.append({
                "alias": alias, "host": st.host, "up": bool(sess),
                "rtt_ms": round(min(rtts), 2) if rtts else None,
                "last_seen": self.daemon.last_seen.get(st.host or "", 0.0) if not sess else time.time(),
                "lag_events": lag, "error": st.error, "attempts": st.attempts,
            })
        return out
