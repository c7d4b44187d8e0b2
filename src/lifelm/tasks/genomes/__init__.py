"""Genome tasks: QC, mutation calls, and (from other modules) embeddings, lineages, scores."""
