"""lifelm.data.genomes."""
