"""amt.inference."""
