"""lifelm.evaluation.baselines."""
