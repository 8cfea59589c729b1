"""Re-record the corpus of real pane screens that tests/test_classify.py checks classify() on.

    .venv/bin/python tests/corpus/record.py                       # everything, ~10 min
    .venv/bin/python tests/corpus/record.py --tools claude,bash --sizes 120x40

Each installed program (the agent CLIs from scripts/install-agent-clis.sh; bash, zsh, fish;
``python3 -q``) is started in its own ``tmux -L`` server at each size, driven into each state
and captured with ``capture-pane -p -e``. The state written into a file is known by
construction (what the recorder just did, and the stand-in's own view of whether a reply is
streaming), never by asking classify(). The model APIs are replaced by the local stand-in
(tests/agents/standin.py) because they cannot be reached from here.

Files: tests/corpus/<program>/<state>__<W>x<H>__<n>.json. Run it again when a CLI version
changes (bump the pins in scripts/install-agent-clis.sh first); old files of a re-recorded
program and size are replaced.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/, for the agents package

from agents.panes import Look, Pane, Tmux  # noqa: E402
from agents.seed import Launch, agent_bin, seed, seed_aider, seed_claude, seed_codex, seed_gemini  # noqa: E402
from agents.standin import StandIn  # noqa: E402

PROGRAMS = ("claude", "codex", "gemini", "aider", "bash", "zsh", "fish", "python")
SIZES = ((80, 24), (120, 40), (200, 50))
DRAFT = "please refactor the parser module"
# Text that shows each program is up and waiting at its input (recorder ground truth).
READY: dict[str, str | tuple[str, ...]] = {
    "claude": "❯", "codex": "›", "gemini": "Type your message", "aider": ">",
    "bash": ("$", "#"), "zsh": ("%", "#"), "fish": (">", "#"), "python": ">>>"}
DIALOG_TEXT = {"claude": "Do you want to proceed?", "codex": "Would you like to run",
               "gemini": "Allow execution", "aider": "Run shell command?"}


class Recorder:
    def __init__(self, out: Path, standin: StandIn, work: Path) -> None:
        self.out = out
        self.standin = standin
        self.work = work
        self.counts: dict[tuple[str, str, str], int] = {}
        self.written: list[Path] = []

    def save(self, program: str, tool: str, state: str, pane: Pane, note: str) -> None:
        first = pane.look()
        time.sleep(0.1)
        look = pane.look()
        size = f"{look.width}x{look.height}"
        n = self.counts.get((program, state, size), 0) + 1
        self.counts[(program, state, size)] = n
        record = {
            "tool": tool, "program": program, "version": version(program), "state": state,
            "width": look.width, "height": look.height,
            "cursor_x": look.cursor_x, "cursor_y": look.cursor_y,
            "cursor_visible": look.cursor_visible, "title": look.title,
            "pane_in_mode": look.in_mode, "changing": first.lines != look.lines,
            "shell_child": look.command not in ("bash", "zsh", "fish"),
            "pane_current_command": look.command, "note": note, "lines": list(look.lines),
        }
        path = self.out / program / f"{state}__{size}__{n}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
        self.written.append(path)
        print(f"  {path.relative_to(self.out)}: {note}", flush=True)

    def start(self, tmux: Tmux, launch: Launch, size: tuple[int, int],
              ready: str | tuple[str, ...]) -> Pane:
        pane = tmux.spawn(launch.argv, env=launch.env, cwd=launch.cwd, width=size[0],
                          height=size[1])
        pane.wait_text(ready, 60)
        settle(pane)
        return pane

    def quiet(self, pane: Pane, timeout_s: float = 60) -> None:
        """End the replies in flight, then wait until no request came for 2 s and the screen
        stopped changing (a queued prompt may start a new reply meanwhile)."""
        deadline = time.monotonic() + timeout_s
        calm_since: float | None = None
        while True:
            self.standin.finish_streams()
            now = time.monotonic()
            if self.standin.in_flight():
                calm_since = None
            elif calm_since is None:
                calm_since = now
            elif now - calm_since >= 2.0:
                break
            if now > deadline:
                raise AssertionError("the stand-in kept getting requests")
            time.sleep(0.2)
        settle(pane)


def settle(pane: Pane, quiet_s: float = 1.2, timeout_s: float = 30) -> Look:
    """Wait until the screen has not changed for ``quiet_s``."""
    deadline = time.monotonic() + timeout_s
    last, since = pane.look(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.15)
        now = pane.look()
        if now.lines != last.lines or now.cursor_x != last.cursor_x:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return last
    raise AssertionError(f"screen still changing after {timeout_s} s:\n{last.plain()}")


_VERSIONS: dict[str, str] = {}


def version(program: str) -> str:
    if program not in _VERSIONS:
        exe = str(agent_bin(program) or program)
        if program == "python":
            exe = "python3"
        try:
            out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30)
            _VERSIONS[program] = (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            _VERSIONS[program] = "unknown"
    return _VERSIONS[program]


def clear_input(pane: Pane) -> None:
    pane.keys("C-u")
    time.sleep(0.3)


def agent_states(rec: Recorder, program: str, size: tuple[int, int]) -> None:
    home, cwd = fresh_dirs(rec.work, program, size)
    launch = seed(program, home, cwd, rec.standin.base_url)
    tmux = Tmux()
    try:
        rec.standin.chunk_delay_s, rec.standin.chunk_count = 0.5, 60
        pane = rec.start(tmux, launch, size, READY[program])
        rec.save(program, launch.tool, "idle", pane, "fresh start, nothing typed")
        pane.type(DRAFT)
        settle(pane, 0.6)
        rec.save(program, launch.tool, "typing", pane, "draft typed with send-keys, not submitted")
        clear_input(pane)
        settle(pane, 0.6)
        pane.type("write a haiku")
        time.sleep(0.4)
        pane.keys("Enter")
        time.sleep(1.5)
        rec.save(program, launch.tool, "busy", pane, "prompt submitted, stand-in reply streaming")
        time.sleep(3)
        rec.save(program, launch.tool, "busy", pane, "a few seconds later, reply still streaming")
        if program != "aider":  # aider reads no keys while it streams
            pane.type(DRAFT)
            time.sleep(0.8)
            rec.save(program, launch.tool, "typing", pane, "draft typed while the agent works")
            if program in ("claude", "gemini"):
                pane.keys("Enter")
                time.sleep(0.8)
                rec.save(program, launch.tool, "busy", pane,
                         "the draft queued with Enter while the agent works")
            else:
                clear_input(pane)
        rec.quiet(pane)
        rec.save(program, launch.tool, "idle", pane, "after a finished reply")
        rec.standin.chunk_delay_s, rec.standin.chunk_count = 0.05, 6
        pane.type("MESHD_TOOL please create the probe file")
        time.sleep(0.4)
        pane.keys("Enter")
        pane.wait_text(DIALOG_TEXT[program], 30)
        settle(pane, 0.8)
        rec.save(program, launch.tool, "dialog", pane, "permission prompt for a shell command")
        if program == "aider":
            pane.keys("n", "Enter")
        else:
            pane.keys("Escape")
        rec.quiet(pane)
    finally:
        tmux.kill()


def shell_states(rec: Recorder, program: str, size: tuple[int, int]) -> None:
    home, cwd = fresh_dirs(rec.work, program, size)
    launch = seed(program, home, cwd, rec.standin.base_url)
    tmux = Tmux()
    try:
        pane = rec.start(tmux, launch, size, READY[program])
        rec.save(program, launch.tool, "idle", pane, "fresh start, stock prompt")
        pane.type("ls -la /tmp" if program != "python" else "print('draft')")
        settle(pane, 0.6)
        rec.save(program, launch.tool, "typing", pane, "command typed, not submitted")
        clear_input(pane)
        pane.type("sleep 30" if program != "python" else "import time; time.sleep(30)")
        pane.keys("Enter")
        time.sleep(1.0)
        rec.save(program, launch.tool, "busy", pane, "running a 30 s sleep")
        pane.keys("C-c")
        settle(pane, 0.8)
        rec.save(program, launch.tool, "idle", pane, "after Ctrl-C of the sleep")
        if program == "fish":
            pane.type("sle")
            settle(pane, 0.6)
            rec.save(program, launch.tool, "typing", pane,
                     "'sle' typed; fish shows the grey autosuggestion 'ep 30'")
            clear_input(pane)
        if program == "python":
            pane.type("for i in range(3):")
            pane.keys("Enter")
            settle(pane, 0.6)
            rec.save(program, launch.tool, "typing", pane, "continuation prompt of a block")
    finally:
        tmux.kill()


def first_run_dialogs(rec: Recorder, program: str, size: tuple[int, int]) -> None:
    """Dialogs a CLI shows before its input: untrusted folder, setup questions."""
    variants: list[tuple[str, Callable[[Path, Path, str], Launch], str]] = {
        "claude": [("trust", lambda h, c, u: seed_claude(h, c, u, trusted=False),
                    "trust this folder"),
                   ("auto-mode nudge", lambda h, c, u: seed_claude(h, c, u, auto_mode_nudge=True),
                    "Make auto mode your default")],
        "codex": [("trust (git repo)", lambda h, c, u: seed_codex(h, git_init(c), u, trusted=False),
                   "Trust this folder")],
        "gemini": [("trust", lambda h, c, u: seed_gemini(h, c, u, trusted=False),
                    "Do you trust the files")],
        "aider": [("no git repo", lambda h, c, u: seed_aider(h, c, u, git=True), "(Y)es/(N)o")],
    }.get(program, [])
    for name, make, marker in variants:
        home, cwd = fresh_dirs(rec.work, f"{program}-{name.replace(' ', '-')}", size)
        home.mkdir(parents=True, exist_ok=True)
        cwd.mkdir(parents=True, exist_ok=True)
        launch = make(home, cwd, rec.standin.base_url)
        tmux = Tmux()
        try:
            pane = tmux.spawn(launch.argv, env=launch.env, cwd=launch.cwd, width=size[0],
                              height=size[1])
            try:
                pane.wait_text(marker, 40)
            except AssertionError as err:
                print(f"  ! {program} {name}: no dialog ({str(err).splitlines()[0]})")
                continue
            settle(pane, 1.0)
            rec.save(program, launch.tool, "dialog", pane, f"first-run dialog: {name}")
        finally:
            tmux.kill()


def git_init(path: Path) -> Path:
    """Make ``path`` a git repository (Codex asks for folder trust only inside one)."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    return path


def fresh_dirs(work: Path, program: str, size: tuple[int, int]) -> tuple[Path, Path]:
    base = work / f"{program}-{size[0]}x{size[1]}"
    return base / "home", base / "project"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--programs", "--tools", default=",".join(PROGRAMS))
    ap.add_argument("--sizes", default=",".join(f"{w}x{h}" for w, h in SIZES))
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--dialog-size", default="120x40",
                    help="size for the first-run dialogs (one size is enough)")
    args = ap.parse_args(argv)
    sizes = [tuple(int(n) for n in s.split("x")) for s in args.sizes.split(",")]
    programs = [p for p in args.programs.split(",") if p]
    with StandIn() as standin, tempfile.TemporaryDirectory(prefix="meshd-corpus-") as tmp:
        rec = Recorder(args.out, standin, Path(tmp))
        for program in programs:
            if program in ("claude", "codex", "gemini", "aider") and agent_bin(program) is None:
                print(f"{program}: not installed, skipped (scripts/install-agent-clis.sh)")
                continue
            for w, h in sizes:
                for old in (args.out / program).glob(f"*__{w}x{h}__*.json"):
                    old.unlink()
            print(f"{program} ({version(program)})", flush=True)
            for w, h in sizes:
                run = agent_states if program in DIALOG_TEXT else shell_states
                try:
                    run(rec, program, (w, h))
                except (AssertionError, FileNotFoundError, RuntimeError) as err:
                    print(f"  ! {program} {w}x{h}: {err}", flush=True)
            if f"{args.dialog_size}" in {f"{w}x{h}" for w, h in sizes}:
                dw, dh = (int(n) for n in args.dialog_size.split("x"))
                first_run_dialogs(rec, program, (dw, dh))
        print(f"{len(rec.written)} screens written under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
