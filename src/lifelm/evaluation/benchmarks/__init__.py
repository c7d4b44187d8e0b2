"""lifelm.evaluation.benchmarks."""
