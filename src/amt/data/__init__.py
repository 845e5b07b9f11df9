"""amt.data."""
