"""Test harness for running the real agent CLIs (Claude Code, Codex, Gemini CLI, aider).

The model APIs the CLIs talk to cannot be reached from the test machines, so
:mod:`tests.agents.standin` replaces them with a local HTTP server. That stand-in is the only
fake: the CLIs, tmux and the terminal screens are the real ones.
"""
