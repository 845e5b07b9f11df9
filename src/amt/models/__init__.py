"""amt.models."""
