"""lnnode: the MONAI Label app folder, importable as the package ``lnnode`` (CLI, tests, benchmarks)."""
