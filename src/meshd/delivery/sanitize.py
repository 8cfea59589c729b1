"""Make a message safe to paste into a terminal.  Pure.

Removes every control that could act on the recipient instead of being read
by it: C0 controls except newline and tab, DEL, C1 controls, whole escape
sequences (CSI, OSC, DCS, SOS, PM, APC and two-byte ESC forms, so no
``ESC[201~`` can end a bracketed paste), bidi embedding/override/isolate
characters, and lone surrogates (undecodable bytes).  ``\\r\\n`` and a lone
``\\r`` become ``\\n`` (a raw CR would submit early).  Nothing else changes:
no Unicode normalisation, so combining marks, ZWJ emoji, CJK and RTL text
arrive byte-exact.
"""

from __future__ import annotations

import re

_BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
# Escape sequences first (so their parameters go with them), then single controls.
_ESCAPES = re.compile(
    r"\x1b\[[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]?"          # CSI ... final
    r"|\x1b[\]PX^_].*?(?:\x07|\x1b\\|\x9c|$)"               # OSC/DCS/SOS/PM/APC ... ST
    r"|\x1b[\x20-\x2f]*[\x30-\x7e]?",                        # ESC (intermediates) final
    re.DOTALL,
)
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f" + _BIDI + "\ud800-\udfff]")


def sanitize(text: str) -> str:
    """The text that will reach the pane; idempotent: sanitize(sanitize(x)) == sanitize(x)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _ESCAPES.sub("", text)
    return _CONTROLS.sub("", text)


def from_bytes(raw: bytes) -> str:
    """Decode bytes (argv, a file) without failing: invalid UTF-8 becomes U+FFFD."""
    return raw.decode("utf-8", errors="replace")
