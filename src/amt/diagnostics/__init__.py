"""amt.diagnostics."""
