"""A local stand-in for the model APIs that the agent CLIs call.

The real Anthropic, OpenAI and Gemini APIs cannot be reached from the test machines (only the
package registries can), so this server is the one stand-in the agent tests use. Everything else
is real: the installed CLIs, tmux, the screens they draw.

It speaks just enough of four wire formats:

* Anthropic Messages (``POST /v1/messages``, streaming SSE) plus ``count_tokens`` — Claude Code;
* OpenAI Responses (``POST /v1/responses``, streaming SSE) — Codex CLI;
* Gemini ``:streamGenerateContent`` / ``:generateContent`` / ``:countTokens`` — Gemini CLI;
* OpenAI Chat Completions (``POST /v1/chat/completions``) — aider (through litellm).

Replies stream ``chunk_count`` words, ``chunk_delay_s`` apart, so a test sees a real busy
screen; :meth:`StandIn.finish_streams` ends the streams in flight early. A prompt containing
:data:`TOOL_MARKER` is answered with a shell tool call that the CLI must ask the user to approve
(for aider, a fenced shell block, which aider offers to run). Every request is recorded, so a test
can assert exactly which user text arrived and how many times.

A test may script Claude Code's turns with :attr:`StandIn.planner`: called (in a worker thread,
so it may block to hold the reply) with each conversation turn, it returns a shell command that
the reply asks the CLI to run as a Bash tool call, or None for the usual reply.

The server runs on its own asyncio loop in a daemon thread; all public methods are thread-safe.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

TOOL_MARKER = "MESHD_TOOL"
DIALOG_COMMAND = "touch meshd-dialog-probe.txt"
_SHELL_TOOLS = ("Bash", "shell", "shell_command", "exec_command", "run_shell_command")


@dataclass(frozen=True)
class Call:
    """One request the stand-in received.

    ``user_text`` is the text of the last user turn when that turn is a typed prompt (None when
    it carries tool results or there is none). ``main`` is True for conversation turns, False for
    the CLIs' side requests (titles, token counts, routing classifiers, telemetry).
    """

    api: str
    method: str
    path: str
    user_text: str | None
    main: bool
    body: Any


Planner = Callable[[Call], str | None]


class StandIn:
    """The stand-in server; use as a context manager or call :meth:`start` / :meth:`stop`."""

    def __init__(self, *, chunk_delay_s: float = 0.05, chunk_count: int = 6,
                 port: int = 0) -> None:
        self.chunk_delay_s = chunk_delay_s
        self.chunk_count = chunk_count
        self._calls: list[Call] = []
        self._lock = threading.Lock()
        self._cut_generation = 0
        self._in_flight = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = port
        self.planner: Planner | None = None  # Claude Code turns only (see the module docstring)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> StandIn:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(timeout=10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            runner = self._runner
            asyncio.run_coroutine_threadsafe(runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def __enter__(self) -> StandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _serve(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- what tests read -------------------------------------------------------------------

    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def prompts(self, *, raw: bool = False) -> list[str]:
        """User texts of the conversation turns, in arrival order (one entry per submission).

        Unless ``raw``, the wrapper Claude Code puts around a long paste
        (``<pasted_content id="N">…</pasted_content id="N">``) is removed and the text stripped,
        so a test can compare with what it pasted."""
        texts = [c.user_text for c in self.calls() if c.main and c.user_text is not None]
        return texts if raw else [unwrap_paste(t) for t in texts]

    def unhandled(self) -> list[str]:
        return [f"{c.method} {c.path}" for c in self.calls() if c.api == "other"]

    def in_flight(self) -> int:
        """Requests being answered right now (a reply still streaming counts)."""
        with self._lock:
            return self._in_flight

    def finish_streams(self) -> None:
        """End every reply now streaming (the rest of it is sent at once)."""
        with self._lock:
            self._cut_generation += 1

    def clear(self) -> None:
        with self._lock:
            self._calls.clear()

    # -- dispatch --------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            self._in_flight += 1
        try:
            return await self._dispatch(request)
        except ConnectionResetError:
            # The CLI dropped the stream (the user interrupted, or Codex steered the turn).
            return web.Response(status=499)
        finally:
            with self._lock:
                self._in_flight -= 1

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        raw = await request.read()
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        if request.method == "POST" and path.endswith("/messages/count_tokens"):
            return self._record(request, "anthropic", None, False, body, web.json_response(
                {"input_tokens": 100}))
        if request.method == "POST" and path.endswith("/messages"):
            return await self._anthropic(request, body)
        if request.method == "POST" and path.endswith("/responses"):
            return await self._responses(request, body)
        if request.method == "POST" and path.endswith("/chat/completions"):
            return await self._chat(request, body)
        if request.method == "POST" and ":" in path.rsplit("/", 1)[-1]:
            return await self._gemini(request, body)
        if request.method == "GET" and path.rstrip("/").endswith("/models"):
            return self._record(request, "models", None, False, body, web.json_response(
                {"object": "list", "data": [], "models": [], "has_more": False}))
        return self._record(request, "other", None, False, body, web.json_response(
            {"error": {"type": "not_found", "message": f"stand-in: no {path}"}}, status=404))

    def _record(self, request: web.Request, api: str, user_text: str | None, main: bool,
                body: Any, response: web.StreamResponse | None = None) -> web.StreamResponse:
        with self._lock:
            self._calls.append(Call(api, request.method, request.path_qs, user_text, main, body))
        return response if response is not None else web.Response()

    def _words(self) -> Iterator[str]:
        for i in range(self.chunk_count):
            yield f"word{i} " if i + 1 < self.chunk_count else "done."

    async def _paced(self) -> AsyncIterator[str]:
        """The reply's words, ``chunk_delay_s`` apart until :meth:`finish_streams` is called."""
        with self._lock:
            generation = self._cut_generation
        for word in self._words():
            with self._lock:
                cut = self._cut_generation != generation
            if not cut:
                await asyncio.sleep(self.chunk_delay_s)
            yield word

    async def _sse(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        return response

    # -- Anthropic Messages ------------------------------------------------------------------

    async def _anthropic(self, request: web.Request, body: Any) -> web.StreamResponse:
        user_text = _anthropic_user_text(body)
        main = bool(body.get("tools"))
        self._record(request, "anthropic", user_text, main, body)
        tool = _pick_tool([t.get("name", "") for t in body.get("tools") or []])
        planner = self.planner
        planned = None
        if main and tool is not None and planner is not None:
            call = Call("anthropic", request.method, request.path_qs, user_text, main, body)
            planned = await asyncio.to_thread(planner, call)
        use_tool = planned is not None or (
            main and tool is not None and user_text is not None and TOOL_MARKER in user_text)
        model = body.get("model", "claude-stand-in")
        msg_id = f"msg_{uuid.uuid4().hex[:20]}"
        usage = {"input_tokens": 100, "output_tokens": 1, "cache_creation_input_tokens": 0,
                 "cache_read_input_tokens": 0}
        if not body.get("stream"):
            content: list[dict[str, Any]] = [{"type": "text", "text": "".join(self._words())}]
            if use_tool:
                content = [_anthropic_tool_block(tool or "Bash", planned or DIALOG_COMMAND)]
            return web.json_response({
                "id": msg_id, "type": "message", "role": "assistant", "model": model,
                "content": content, "stop_reason": "tool_use" if use_tool else "end_turn",
                "stop_sequence": None, "usage": usage})
        response = await self._sse(request)

        async def send(event: str, data: dict[str, Any]) -> None:
            await response.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())

        await send("message_start", {"type": "message_start", "message": {
            "id": msg_id, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": usage}})
        if use_tool:
            block = _anthropic_tool_block(tool or "Bash", planned or DIALOG_COMMAND)
            await send("content_block_start", {"type": "content_block_start", "index": 0,
                                               "content_block": {**block, "input": {}}})
            await send("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {
                "type": "input_json_delta", "partial_json": json.dumps(block["input"])}})
        else:
            await send("content_block_start", {"type": "content_block_start", "index": 0,
                                               "content_block": {"type": "text", "text": ""}})
            async for word in self._paced():
                await send("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                   "delta": {"type": "text_delta", "text": word}})
        await send("content_block_stop", {"type": "content_block_stop", "index": 0})
        await send("message_delta", {"type": "message_delta", "delta": {
            "stop_reason": "tool_use" if use_tool else "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": self.chunk_count}})
        await send("message_stop", {"type": "message_stop"})
        await response.write_eof()
        return response

    # -- OpenAI Responses --------------------------------------------------------------------

    async def _responses(self, request: web.Request, body: Any) -> web.StreamResponse:
        user_text = _responses_user_text(body)
        # Side requests (Codex's thread-title generation) carry no tools.
        self._record(request, "responses", user_text, bool(body.get("tools")), body)
        tools = {t.get("name", ""): t for t in body.get("tools") or [] if isinstance(t, dict)}
        tool = _pick_tool(list(tools))
        use_tool = tool is not None and user_text is not None and TOOL_MARKER in user_text
        response = await self._sse(request)
        resp_id = f"resp_{uuid.uuid4().hex[:20]}"
        seq = iter(range(1_000_000))

        async def send(data: dict[str, Any]) -> None:
            data["sequence_number"] = next(seq)
            await response.write(f"event: {data['type']}\ndata: {json.dumps(data)}\n\n".encode())

        await send({"type": "response.created", "response": {"id": resp_id, "status": "in_progress"}})
        item: dict[str, Any]
        if use_tool and tool is not None:
            item = {"type": "function_call", "id": "fc_1", "call_id": f"call_{resp_id}",
                    "name": tool, "arguments": json.dumps(_shell_arguments(tools[tool])),
                    "status": "completed"}
            await send({"type": "response.output_item.added", "output_index": 0, "item": item})
            await send({"type": "response.output_item.done", "output_index": 0, "item": item})
        else:
            msg_id = f"msg_{resp_id}"
            await send({"type": "response.output_item.added", "output_index": 0, "item": {
                "type": "message", "id": msg_id, "role": "assistant", "status": "in_progress",
                "content": []}})
            text = ""
            async for word in self._paced():
                text += word
                await send({"type": "response.output_text.delta", "item_id": msg_id,
                            "output_index": 0, "content_index": 0, "delta": word})
            item = {"type": "message", "id": msg_id, "role": "assistant", "status": "completed",
                    "content": [{"type": "output_text", "text": text, "annotations": []}]}
            await send({"type": "response.output_item.done", "output_index": 0, "item": item})
        await send({"type": "response.completed", "response": {
            "id": resp_id, "status": "completed", "output": [item], "usage": {
                "input_tokens": 100, "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": self.chunk_count,
                "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 110}}})
        await response.write_eof()
        return response

    # -- OpenAI Chat Completions (aider) -------------------------------------------------------

    async def _chat(self, request: web.Request, body: Any) -> web.StreamResponse:
        user_text = _chat_user_text(body)
        self._record(request, "chat", user_text, bool(body.get("stream")), body)
        use_tool = user_text is not None and TOOL_MARKER in user_text
        model = body.get("model", "gpt-stand-in")
        base = {"id": f"chatcmpl-{uuid.uuid4().hex[:20]}", "created": 0, "model": model}
        usage = {"prompt_tokens": 100, "completion_tokens": self.chunk_count, "total_tokens": 110}
        if not body.get("stream"):
            text = "".join(self._words())
            return web.json_response({**base, "object": "chat.completion", "choices": [{
                "index": 0, "message": {"role": "assistant", "content": text},
                "finish_reason": "stop"}], "usage": usage})
        response = await self._sse(request)

        async def send(delta: dict[str, Any], finish: str | None = None) -> None:
            chunk = {**base, "object": "chat.completion.chunk",
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())

        await send({"role": "assistant", "content": ""})
        if use_tool:
            await send({"content": f"Run this:\n\n```bash\n{DIALOG_COMMAND}\n```\n"})
        else:
            async for word in self._paced():
                await send({"content": word})
        await send({}, "stop")
        tail = {**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}
        await response.write(f"data: {json.dumps(tail)}\n\ndata: [DONE]\n\n".encode())
        await response.write_eof()
        return response

    # -- Gemini ------------------------------------------------------------------------------

    async def _gemini(self, request: web.Request, body: Any) -> web.StreamResponse:
        method = request.path.rsplit(":", 1)[-1]
        if method == "countTokens":
            return self._record(request, "gemini", None, False, body,
                                web.json_response({"totalTokens": 100}))
        body = body if isinstance(body, dict) else {}
        user_text = _gemini_user_text(body)
        config = body.get("generationConfig") or {}
        schema = config.get("responseJsonSchema") or config.get("responseSchema")
        names = [d.get("name", "") for t in body.get("tools") or []
                 for d in t.get("functionDeclarations") or []]
        main = method == "streamGenerateContent" and bool(names) and schema is None
        self._record(request, "gemini", user_text, main, body)
        usage = {"promptTokenCount": 100, "candidatesTokenCount": self.chunk_count,
                 "totalTokenCount": 110}
        if schema is not None or not main:
            text = json.dumps(_fake_json(schema)) if schema is not None else "".join(self._words())
            payload = _gemini_chunk([{"text": text}], "STOP", usage)
            if method == "generateContent":
                return web.json_response(payload)
            response = await self._sse(request)
            await response.write(f"data: {json.dumps(payload)}\r\n\r\n".encode())
            await response.write_eof()
            return response
        response = await self._sse(request)

        async def send(parts: list[dict[str, Any]], finish: str | None = None) -> None:
            chunk = _gemini_chunk(parts, finish, usage)
            await response.write(f"data: {json.dumps(chunk)}\r\n\r\n".encode())

        tool = _pick_tool(names)
        if tool is not None and user_text is not None and TOOL_MARKER in user_text:
            await send([{"functionCall": {"name": tool, "args": {
                "command": DIALOG_COMMAND, "description": "Create a probe file"}}}], "STOP")
        else:
            async for word in self._paced():
                await send([{"text": word}], "STOP" if word == "done." else None)
        await response.write_eof()
        return response


_PASTED = re.compile(r'<pasted_content id="(\w+)">\n?(.*?)\n?</pasted_content id="\1">', re.DOTALL)


def unwrap_paste(text: str) -> str:
    """``text`` with Claude Code's paste markers removed, stripped of surrounding blanks."""
    return _PASTED.sub(lambda m: m.group(2), text).strip()


def _gemini_chunk(parts: list[dict[str, Any]], finish: str | None,
                  usage: dict[str, int]) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": "stand-in"}


def _pick_tool(names: list[str]) -> str | None:
    return next((n for n in _SHELL_TOOLS if n in names), None)


def _anthropic_tool_block(name: str, command: str = DIALOG_COMMAND) -> dict[str, Any]:
    what = "Create a probe file" if command == DIALOG_COMMAND else "Run a command"
    return {"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:20]}", "name": name,
            "input": {"command": command, "description": what}}


def _shell_arguments(tool: dict[str, Any]) -> dict[str, Any]:
    props = (tool.get("parameters") or {}).get("properties") or {}
    args: dict[str, Any] = {"command": DIALOG_COMMAND}
    if "cmd" in props:
        args = {"cmd": DIALOG_COMMAND}
    elif (props.get("command") or {}).get("type") == "array":
        args = {"command": ["bash", "-lc", DIALOG_COMMAND]}
    if "sandbox_permissions" in props:
        # Codex asks the user only for commands that request to leave its sandbox.
        args |= {"sandbox_permissions": "require_escalated",
                 "justification": "Create the probe file?"}
    return args


def _fake_json(schema: Any) -> Any:
    """A value satisfying a (small) JSON schema; enums prefer "user" (hand the turn back)."""
    if not isinstance(schema, dict):
        return {}
    kind = str(schema.get("type", "object")).lower()
    if "enum" in schema:
        options = list(schema["enum"])
        return "user" if "user" in options else options[0]
    if kind == "object":
        props = schema.get("properties") or {}
        return {k: _fake_json(v) for k, v in props.items()}
    if kind == "array":
        return []
    if kind in ("number", "integer"):
        return 0
    if kind == "boolean":
        return False
    return "stand-in"


def _is_context(text: str) -> bool:
    """True for context blocks the CLIs add to the user turn (``<system-reminder>…``,
    ``<session_context>…``), which are not what the user typed."""
    match = re.match(r"\s*<([a-z_-]+)>", text)
    return match is not None and text.rstrip().endswith(f"</{match.group(1)}>")


def _text_of(content: Any, *, skip_context: bool = False) -> str | None:
    """Joined text of a message content (string or list of blocks); None if it holds tool I/O."""
    if isinstance(content, str):
        return content
    texts: list[str] = []
    for block in content or []:
        kind = block.get("type")
        if kind in ("tool_result", "function_call_output"):
            return None
        text = block.get("text")
        if isinstance(text, str):
            if skip_context and _is_context(text):
                continue
            texts.append(text)
    return "\n".join(texts)


def _last_user_message(messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The last message if it is the user's, looking past trailing "system" messages
    (Claude Code and aider append reminders after the user turn)."""
    rest = list(messages)
    while rest and rest[-1].get("role") == "system":
        rest.pop()
    return rest[-1] if rest and rest[-1].get("role") == "user" else None


def _anthropic_user_text(body: Any) -> str | None:
    last = _last_user_message(body.get("messages") or [])
    return None if last is None else _text_of(last.get("content"), skip_context=True)


def _responses_user_text(body: Any) -> str | None:
    items = body.get("input")
    if isinstance(items, str):
        return items
    if not items or items[-1].get("type") not in (None, "message"):
        return None
    last = items[-1]
    return _text_of(last.get("content")) if last.get("role") == "user" else None


def _chat_user_text(body: Any) -> str | None:
    last = _last_user_message(body.get("messages") or [])
    return None if last is None else _text_of(last.get("content"))


def _gemini_user_text(body: dict[str, Any]) -> str | None:
    contents = body.get("contents") or []
    if not contents or contents[-1].get("role", "user") != "user":
        return None
    parts = contents[-1].get("parts") or []
    if any("functionResponse" in p for p in parts):
        return None
    return _text_of([{"type": "text", **p} for p in parts], skip_context=True)
