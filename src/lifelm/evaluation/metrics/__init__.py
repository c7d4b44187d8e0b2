"""lifelm.evaluation.metrics."""
