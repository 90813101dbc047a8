"""Request errors that reach the client as 4xx with a message, instead of MONAI Label's bare 500.

They subclass FastAPI's HTTPException, which the server turns into a JSON ``{"detail": ...}``
response wherever in the request it is raised (endpoint, app, datastore or task).
"""

from __future__ import annotations

from fastapi import HTTPException


class RequestError(HTTPException):
    """A bad request: malformed input the client can fix (400 unless a status is given)."""

    def __init__(self, detail: str, status_code: int = 400):
        super().__init__(status_code=status_code, detail=detail)

    def __str__(self) -> str:
        return str(self.detail)


class NotFound(RequestError):
    """An unknown image, label, model, strategy or scoring method (404)."""

    def __init__(self, detail: str):
        super().__init__(detail, status_code=404)


class Unprocessable(RequestError):
    """Well-formed but unusable input, e.g. a label that breaks the contract (422)."""

    def __init__(self, detail: str):
        super().__init__(detail, status_code=422)


class ModelNotReady(RequestError):
    """A model that exists in the app but has no usable weights yet (503: retry after training)."""

    def __init__(self, detail: str):
        super().__init__(detail, status_code=503)


class PacsError(RequestError):
    """The PACS did not answer as it should: 502 (unreachable, an error) or 504 (too slow). ``transient``: worth
    asking again later (away, slow, a 5xx), not a refusal."""

    def __init__(self, detail: str, status_code: int = 502, transient: bool = True):
        super().__init__(detail, status_code=status_code)
        self.transient = transient
