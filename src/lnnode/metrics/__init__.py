"""Evaluation metrics (detection here; classification with the pipeline)."""
