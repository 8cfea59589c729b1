"""Getting text into a pane: sanitising, pane state, the send itself."""
