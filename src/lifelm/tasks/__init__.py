"""lifelm.tasks."""
