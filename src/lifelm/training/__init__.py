"""lifelm.training."""
