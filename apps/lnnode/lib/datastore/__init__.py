"""lnnode's datastores: the local studies folder with label JSON, checks, history and reviews."""

from .local import LnnodeDatastore, check_name
from .original import keep_original

__all__ = ["LnnodeDatastore", "check_name", "keep_original"]
