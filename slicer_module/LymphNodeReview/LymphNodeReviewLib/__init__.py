"""The GUI-free core of the Lymph Node Review module: server client, results, review state, labels.

Imports neither ``slicer`` nor ``qt``: it runs (and is tested) outside Slicer. ``contracts.py`` and
``geometry.py`` are copies of lnnode's own (``apps/lnnode/lib``); a test keeps them equal.
Python 3.9 syntax: Slicer 5.6 ships Python 3.9.
"""

from .client import LymphNodeServer, ServerError
from .contracts import ContractError, make_label, parse_result
from .review import ReviewNode, ReviewSession, probability_color

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
