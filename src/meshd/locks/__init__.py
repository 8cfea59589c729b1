"""File and name locks: modes and their compatibility (the lock service comes next)."""
