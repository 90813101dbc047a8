"""lnnode: lymph-node detection, metastasis classification and measurement in CT and MR.

This package is the library (geometry, contracts, image IO, networks, transforms, measurement and rules,
metrics, phantoms, import, the ``lnnode`` command). The MONAI Label app that serves it lives in
``apps/lnnode`` (see :mod:`lnnode.appdir`).
"""

__version__ = "0.1.0"
