"""Network builders: one place per model (detector, classifier), driven by the spec in each checkpoint."""
