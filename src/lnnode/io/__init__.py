"""Reading and writing: images (NIfTI, NRRD, MHA, DICOM series), model checkpoints, atomic file writes."""
