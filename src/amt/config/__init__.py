"""amt.config."""
