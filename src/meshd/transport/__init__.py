"""How meshd processes talk: framing, the Unix-socket API (and, later, SSH links)."""
