"""The app's library: contracts, geometry, image I/O, phantoms, models and the MONAI Label tasks.

Modules here import each other relatively: the server imports them as ``lib.*`` (MONAI Label puts
the app folder on the path), the CLI and the tests as ``lnnode.lib.*``.
"""
