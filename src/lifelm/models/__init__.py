"""lifelm.models."""
