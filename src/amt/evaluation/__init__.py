"""amt.evaluation."""
