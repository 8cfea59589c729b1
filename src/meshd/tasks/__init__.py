"""Tasks: the lifecycle table, the board fold and the bidding rule (pure), see docs/tasks.md."""
