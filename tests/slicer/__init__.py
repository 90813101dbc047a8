"""The Slicer module: its GUI-free core, its scene logic on a real MRML scene, and the module file itself."""
