"""Pure core: sanitiser, addresses, tool detection, frames, config parsing."""

from __future__ import annotations

import contextlib
import json
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd import config
from meshd.delivery.message import compose
from meshd.delivery.sanitize import sanitize
from meshd.errors import ConfigError
from meshd.paths import StatePaths
from meshd.registry.address import PaneName, address_of, assign, slug
from meshd.registry.detect import Proc, detect
from meshd.transport import frames

CONTROL = {chr(c) for c in range(0x20) if c not in (9, 10)} | {chr(0x7F)} | {
    chr(c) for c in range(0x80, 0xA0)} | set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


# -- sanitiser ---------------------------------------------------------------------------
@settings(max_examples=2000)
@given(st.text())
def test_sanitize_leaves_no_control_and_is_idempotent(text: str) -> None:
    out = sanitize(text)
    assert not (set(out) & CONTROL)
    assert sanitize(out) == out


@given(st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs"),
                                      blacklist_characters="\u202a\u202b\u202c\u202d\u202e"
                                                           "\u2066\u2067\u2068\u2069")))
def test_sanitize_never_touches_printable_unicode(text: str) -> None:
    assert sanitize(text) == text


@pytest.mark.parametrize("payload,expected", [
    ("x\x1b[201~\ntouch /tmp/pwn\n", "x\ntouch /tmp/pwn\n"),
    ("a\x1b]52;c;ZXZpbA==\x07b", "ab"),
    ("a\x1bP1$r\x1b\\b", "ab"),
    ("a\r\nb\rc", "a\nb\nc"),
    ("\x00\x03\x04C-c", "C-c"),
    ("e\u0301 \U0001F468\u200d\U0001F469", "e\u0301 \U0001F468\u200d\U0001F469"),
])
def test_sanitize_examples(payload: str, expected: str) -> None:
    assert sanitize(payload) == expected


def test_compose_tags_sender_and_time() -> None:
    text = compose("host-a-b", "hi\x1b[31m there\n", 0.0)
    assert text == "[from host-a-b @ 1970-01-01T00:00:00Z] hi there"


# -- addresses and detection ---------------------------------------------------------------
def test_slug_and_address() -> None:
    assert slug("My Proj_2!") == "my-proj-2"
    assert slug("***") == "x"
    p = PaneName("%1", "Work", "Claude Code", "@1", 0, 1)
    assert address_of("box", p) == "box-work-claude-code"
    assert address_of("box", PaneName("%2", "Work", "w", "@1", 1, 2)) == "box-work-w-1"


def test_assign_disambiguates_colliding_slugs() -> None:
    a = PaneName("%3", "s", "a b", "@1", 0, 1)
    b = PaneName("%7", "s", "a-b", "@2", 0, 1)
    got = assign("h", [b, a])
    assert got == {"%3": "h-s-a-b", "%7": "h-s-a-b-p7"}
    assert len(set(got.values())) == 2


def P(name: str, *argv: str) -> Proc:
    return Proc(1, name, argv or (name,))


@pytest.mark.parametrize("chain,tool", [
    ([P("bash"), P("node", "node", "/usr/lib/node_modules/@anthropic-ai/claude-code/cli.js")],
     "claude"),
    ([P("bash"), P("claude")], "claude"),
    ([P("zsh"), P("node", "node", "/x/bin/codex"), P("codex-x86_64-unknown-linux-musl")], "codex"),
    ([P("bash"), P("node", "node", "/x/node_modules/@google/gemini-cli/dist/index.js")], "gemini"),
    ([P("bash"), P("python3", "python3", "/venv/bin/aider")], "aider"),
    ([P("bash"), P("cursor-agent")], "cursor-agent"),
    ([P("ollama", "ollama", "run", "llama3")], "ollama"),
    ([P("bash")], "shell"),
    ([P("bash"), P("sleep", "sleep", "9")], "shell"),
    ([P("bash"), P("python3", "python3")], "repl"),
    ([P("cat")], "other"),
    ([], "other"),
])
def test_detect(chain: list[Proc], tool: str) -> None:
    assert detect(chain) == tool


# -- frames ------------------------------------------------------------------------------
def test_frame_roundtrip_and_limits() -> None:
    raw = frames.encode({"op": "x", "args": {"a": 1}})
    n = frames.body_length(raw[:4], 1024)
    assert frames.decode(raw[4:4 + n])["args"] == {"a": 1}
    with pytest.raises(frames.FrameError, match="cap"):
        frames.body_length(struct.pack(">I", 100 * 1024 * 1024), 64 * 1024 * 1024)
    for bad in (b"[1]", b"{", json.dumps({"v": 99}).encode(),
                b'{"v": 1, "a": ' + b"[" * 40 + b"1" + b"]" * 40 + b"}"):
        with pytest.raises(frames.FrameError):
            frames.decode(bad)


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_frame_decode_never_crashes(body: bytes) -> None:
    with contextlib.suppress(frames.FrameError):
        frames.decode(body)


# -- configuration -------------------------------------------------------------------------
def _paths(tmp_path: Path, text: str | None) -> StatePaths:
    p = StatePaths(tmp_path / "agents", tmp_path / "inbox")
    p.home.mkdir()
    if text is not None:
        p.config.write_text(text)
    return p


def test_config_defaults_file_and_env_precedence(tmp_path: Path) -> None:
    p = _paths(tmp_path, "[delivery]\nenter_delay_ms = 300\nenter_retries = 4\n")
    cfg = config.load(p, {"MESHD_DELIVERY_ENTER_RETRIES": "1"})
    assert cfg.delivery.enter_delay_ms == 300
    assert cfg.delivery.enter_retries == 1
    assert cfg.tmux.command_timeout_s == 5.0


@pytest.mark.parametrize("text,needle", [
    ("[delivery]\nenter_delay_ms = 'x'\n", "delivery.enter_delay_ms must be an integer"),
    ("[delivery]\nenter_delay_ms = -1\n", "out of range"),
    ("[deliveri]\n", "unknown section"),
    ("[delivery]\nbogus = 1\n", "unknown key delivery.bogus"),
    ("[daemon]\nlog_level = 'loud'\n", "not one of"),
    ("a = 1\n[delivery\n", ":2:"),
])
def test_config_errors_name_key_and_line(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[")):
        config.load(_paths(tmp_path, text), {})


def test_default_config_renders_every_key_and_parses(tmp_path: Path) -> None:
    text = config.render_default()
    for dotted, _ in config.iter_keys():
        assert f"{dotted.split('.')[-1]} =" in text
    p = _paths(tmp_path, text.replace("# enter_retries = 2", "enter_retries = 3"))
    assert config.load(p, {}).delivery.enter_retries == 3


def test_config_doc_is_in_sync_with_schema() -> None:
    doc = Path(__file__).parent.parent / "docs" / "config.md"
    assert doc.read_text() == config.render_markdown(), "run: python -m meshd.config > docs/config.md"
