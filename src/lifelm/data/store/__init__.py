"""lifelm.data.store."""
