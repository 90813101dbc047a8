"""The MONAI Label side of lnnode: task configs, infer and train tasks, strategies, scoring, datastores and the
server guards. MONAI Label puts the app folder on the path, so this package is ``lib`` (as in its sample apps);
everything that does not need MONAI Label comes from the library, ``lnnode``.
"""
