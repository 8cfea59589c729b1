"""The append-only event journal: pure event model and its SQLite store."""
