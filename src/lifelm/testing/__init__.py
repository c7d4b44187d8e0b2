"""lifelm.testing."""
