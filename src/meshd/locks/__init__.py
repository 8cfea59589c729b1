"""File and name locks: modes, the pure lock table, deadlock detection, the SQLite store, the service."""
