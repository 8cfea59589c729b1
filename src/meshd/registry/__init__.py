"""Agents: addresses, tool detection, the registry fold and its TOML views."""
