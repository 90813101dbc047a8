"""Measuring a node: its delineation in the box, short and long axis, morphology, and the rule baselines."""
