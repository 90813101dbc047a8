"""The app's model names, in one place (server, CLI, training and benchmarks use them)."""

DETECTION = "lymph_node_detection"
CLASSIFICATION = "lymph_node_classification"
PIPELINE = "lymph_node_pipeline"
TRAINABLE = (DETECTION, CLASSIFICATION)
