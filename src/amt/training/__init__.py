"""amt.training."""
