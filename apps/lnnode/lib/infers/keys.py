"""The data keys the infer tasks pass along (MONAI dictionary transforms read and write them).

``IMAGE`` is what the network reads, as in MONAI Label: the request's image (a datastore path, or the
paths of a case's sequences) until it is loaded, then the (C, i, j, k) array; the detector's grid
resampling replaces it with the array on the model grid, the classifier's cropping with the node crops
(N, C, X, Y, Z). What a step keeps on the side has a key of its own.
"""

IMAGE = "image"
IMAGE_GEOMETRY = "image_geometry"  # the source image's geometry (lnnode.geometry.ImageGeometry, world LPS)
GRID = "grid"  # the detector's world-aligned model grid (an ImageGeometry)
NODES = "nodes"  # the classifier's query boxes (world LPS)
RESULT = "result"  # the result document (lnnode.result/1)
IMAGE_ID = "image_id"  # the name the result gives the image
SKIP_WRITER = "skip_writer"  # a stage of the pipeline: the data back, no markups file written
BOXES, BOX_SCORES = "boxes", "labels_scores"  # what MONAI's RetinaNetDetector returns (on the model grid)
LOGITS = "logits"  # the classifier's logits per node and flip (N, TTA)
P_METASTASIS, UNCERTAINTY = "p_metastasis", "uncertainty"  # calibrated mean and spread over the flips, per node
SALIENCY = "saliency_maps"  # Grad-CAM maps per node, as NIfTI data URIs
SHAPE = "shape_features"  # the nodes' measured shape (N, F) the classifier's fusion reads (lnnode.measure.features)
EMBEDDINGS = "embeddings"  # the classifier's pooled features per node (N, D), when the request asks (active learning)
