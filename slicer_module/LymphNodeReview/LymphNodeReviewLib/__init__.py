"""The GUI-free core of the Lymph Node Review module: server client, results, review state, labels.

Imports neither ``slicer`` nor ``qt``: it runs (and is tested) outside Slicer. ``schema.py`` is a copy of
lnnode's ``src/lnnode/contracts/schema.py`` (``python tools/copy_schema.py`` makes it; a test keeps them equal).
Python 3.9 syntax: Slicer 5.6 ships Python 3.9.
"""

from .client import LymphNodeServer, ServerError
from .review import ReviewNode, ReviewSession, probability_color
from .schema import ContractError, make_label, parse_result

__all__ = [
    "ContractError",
    "LymphNodeServer",
    "ReviewNode",
    "ReviewSession",
    "ServerError",
    "make_label",
    "parse_result",
    "probability_color",
]
