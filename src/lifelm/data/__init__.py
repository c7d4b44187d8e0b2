"""lifelm.data."""
