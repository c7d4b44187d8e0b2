"""lifelm.evaluation."""
