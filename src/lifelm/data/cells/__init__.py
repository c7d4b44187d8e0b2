"""lifelm.data.cells."""
