"""lifelm.reports."""
