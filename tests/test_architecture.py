"""Mechanical checks of the code's shape (docs/architecture.md)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).parent.parent / "src" / "meshd"

PURE = ["registry/address.py", "registry/detect.py", "registry/fold.py", "registry/views.py",
        "journal/event.py", "delivery/sanitize.py", "delivery/message.py",
        "delivery/classify.py", "transport/frames.py", "errors.py", "locks/modes.py",
        "locks/table.py", "locks/deadlock.py", "tasks/lifecycle.py", "tasks/board.py",
        "tasks/bidding.py", "tasks/prompts.py", "tasks/supervise.py"]
IO_MODULES = {"os", "subprocess", "socket", "sqlite3", "asyncio", "threading", "time", "shutil",
              "tempfile", "fcntl", "signal", "io", "pathlib", "random", "secrets"}
# Third-party library -> the only modules allowed to import it.
HOMES = {
    "tomlkit": {"files.py"},
    "psutil": {"hardware/procs.py", "hardware/memory.py", "doctor.py"},
    "pynvml": {"hardware/gpu.py"},
    "asyncssh": {"transport/ssh.py"},
    "aiohttp": {"dashboard/server.py"},
    "filelock": {"delivery/service.py"},
    "click": {"cli/"},
    "libtmux": {"tmux/__init__.py", "demo/session.py"},
    "watchfiles": {"daemon/watch.py"},
}


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


@pytest.mark.parametrize("rel", PURE)
def test_pure_modules_do_no_io(rel: str) -> None:
    path = SRC / rel
    if not path.exists():
        pytest.skip(f"{rel} not present")
    for name in imports(path):
        top = name.split(".")[0]
        assert top not in IO_MODULES, f"{rel} imports {name}: pure modules take no I/O"
        if top == "meshd":
            target = name.removeprefix("meshd.").replace(".", "/") + ".py"
            assert target in PURE, f"{rel} imports non-pure {name}"
        else:
            assert top in sys.stdlib_module_names, f"{rel} imports third-party {name}"


def test_third_party_libraries_stay_in_their_home() -> None:
    for path in SRC.rglob("*.py"):
        rel = str(path.relative_to(SRC))
        for name in imports(path):
            top = name.split(".")[0]
            if top in HOMES:
                home = HOMES[top]
                ok = rel in home or any(h.endswith("/") and rel.startswith(h) for h in home)
                assert ok, f"{rel} imports {top}; its home is {home}"


def test_notify_pane_import_path_is_light() -> None:
    code = ("import sys, meshd.cli.notify; print(','.join(sorted(m for m in ('asyncssh', "
            "'libtmux', 'aiohttp', 'click', 'psutil', 'tomlkit', 'sqlite3', 'asyncio') "
            "if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
