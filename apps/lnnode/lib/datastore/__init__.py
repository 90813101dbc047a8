"""lnnode's datastores: the local studies folder with label JSON, checks, history and reviews, and a PACS over
DICOMweb cached as such a folder."""

from .dicomweb import DicomwebDatastore, PacsError, dicomweb_datastore
from .local import LnnodeDatastore, check_name
from .original import keep_original

__all__ = ["DicomwebDatastore", "LnnodeDatastore", "PacsError", "check_name", "dicomweb_datastore", "keep_original"]
