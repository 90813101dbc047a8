"""Checks in front of MONAI Label's HTTP endpoints, for what they would take in or answer with a 500.

MONAI Label 0.8.5 writes an uploaded file to disk before the app sees it, parses the ``params`` form
field itself, and starts a process for ``POST /scoring/<method>`` before anyone checks the method.
These are installed on its FastAPI server once the app is up (:func:`install`):

* :class:`UploadLimit`: a request body over ``--conf max_upload_mb`` answers 413 and nothing of it is
  stored (its bytes are read and dropped, so the client gets the answer, not a broken connection);
* :class:`KnownScoringMethod`: an unknown scoring method answers 404 instead of a started process;
* ``params`` (or ``info``) that are not JSON, or JSON but not an object (``[1]``, ``"x"``), answer 400;
* an upload refused with a 4xx leaves no temp file behind (MONAI Label removes its copy of an upload
  in a background task that runs only after a successful answer).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Collection, Iterator
from typing import Any

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import RequestError

__all__ = [
    "DEFAULT_MAX_UPLOAD_MB",
    "KnownScoringMethod",
    "UploadLimit",
    "install",
    "server_app",
    "served_scoring_methods",
]

DEFAULT_MAX_UPLOAD_MB = 2048  # a 512 x 512 x 2000 CT in int16, uncompressed, fits
_ENDPOINTS_DIR = None  # monailabel/endpoints/, found on first use


async def _answer(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _drain(receive: Receive, message: Message | None = None) -> None:
    """Read the rest of a request body and drop it."""
    while message is None or (message["type"] == "http.request" and message.get("more_body", False)):
        message = await receive()


class UploadTooLarge(RequestError):
    def __init__(self, size: int | str, limit: int):
        super().__init__(
            f"request body of {size} bytes is over the upload limit of {limit:,} bytes "
            f"(--conf max_upload_mb {limit // 2**20}); nothing was stored",
            status_code=413,
        )


class UploadLimit:
    """ASGI middleware: refuse request bodies over ``max_bytes`` with a 413 naming the limit.

    A declared ``Content-Length`` over the limit is refused before the endpoint runs; a streamed body
    (chunked) is counted as it arrives and refused once it passes the limit, before the endpoint
    stores anything (FastAPI reads a whole multipart form before calling the endpoint)."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.max_bytes <= 0:
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _drain(receive)
            await _answer(send, 413, UploadTooLarge(f"{int(declared):,}", self.max_bytes).detail)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    await _drain(receive, message)
                    # an HTTPException: FastAPI passes it through its body parsing to a JSON 413
                    raise UploadTooLarge(f"more than {self.max_bytes:,}", self.max_bytes)
            return message

        await self.app(scope, counted, send)


class KnownScoringMethod:
    """ASGI middleware: ``POST /scoring/<method>`` for a method the app does not have answers 404."""

    def __init__(self, app: ASGIApp, methods: Callable[[], Collection[str]]):
        self.app = app
        self.methods = methods

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].startswith("/scoring/"):
            method = scope["path"][len("/scoring/") :].strip("/")
            known = self.methods()
            if method and method not in known:
                await _drain(receive)
                # no list here: this answers before any login check (GET /info/ lists the methods)
                await _answer(send, 404, f"unknown scoring method {method!r} (GET /info/ lists them)")
                return
        await self.app(scope, receive, send)


def _endpoint_frames(exc: BaseException) -> Iterator[dict[str, Any]]:
    """Locals of the MONAI Label endpoint frames the exception went through, outermost first."""
    global _ENDPOINTS_DIR
    if _ENDPOINTS_DIR is None:
        import monailabel.endpoints

        _ENDPOINTS_DIR = os.path.dirname(monailabel.endpoints.__file__) + os.sep
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.startswith(_ENDPOINTS_DIR):
            yield tb.tb_frame.f_locals
        tb = tb.tb_next


def _endpoint_params(exc: BaseException) -> tuple[bool, Any]:
    """(found, value): the decoded ``params`` (or ``info``) form field of the endpoint the exception went
    through (its frames hold the raw string), if any."""
    for f_locals in _endpoint_frames(exc):
        for name in ("params", "info"):
            raw = f_locals.get(name)
            if isinstance(raw, str):
                try:
                    return True, json.loads(raw)
                except ValueError:
                    return False, None
    return False, None


def _remove_uploads(exc: BaseException) -> None:
    """Delete the temp copies of an upload that MONAI Label made for a request that failed."""
    tmp = os.path.realpath(tempfile.gettempdir())
    for f_locals in _endpoint_frames(exc):
        for name in ("image_file", "label_file"):
            path = f_locals.get(name)
            if isinstance(path, str) and os.path.dirname(os.path.realpath(path)) == tmp:
                with contextlib.suppress(OSError):
                    os.remove(path)


def install(server: Any, max_upload_bytes: int, scoring_methods: Callable[[], Collection[str]]) -> None:
    """Add the checks to MONAI Label's FastAPI ``server`` (once; the app object is built after the server
    started, so the middleware stack is rebuilt on the next request)."""
    from fastapi.responses import JSONResponse

    if getattr(server.state, "lnnode_guards", False):
        return

    async def bad_json(request, exc: json.JSONDecodeError):
        _remove_uploads(exc)
        if request.method in ("POST", "PUT"):  # a client's params or body
            return JSONResponse(status_code=400, content={"detail": f"params is not valid JSON: {exc}"})
        return JSONResponse(status_code=500, content={"detail": f"a server file is not valid JSON: {exc}"})

    async def refused(request, exc: RequestError):
        _remove_uploads(exc)
        return JSONResponse(status_code=exc.status_code, content={"detail": exc.detail}, headers=exc.headers)

    async def params_not_an_object(request, exc: Exception):
        # MONAI Label does dict.update(params) / params["user"] = ... with whatever the JSON was
        found, value = _endpoint_params(exc)
        if found and not isinstance(value, dict):
            _remove_uploads(exc)
            detail = f'params must be a JSON object such as {{"score_thresh": 0.5}}, not {type(value).__name__}'
            return JSONResponse(status_code=400, content={"detail": detail})
        raise exc  # anything else: MONAI Label's own 500, logged with its traceback

    server.middleware_stack = None
    server.add_exception_handler(json.JSONDecodeError, bad_json)
    server.add_exception_handler(RequestError, refused)
    server.add_exception_handler(TypeError, params_not_an_object)
    server.add_exception_handler(ValueError, params_not_an_object)
    # inside MONAI Label's CORS middleware (user middleware runs outermost first): a browser client
    # reads these answers too
    server.user_middleware.append(Middleware(KnownScoringMethod, methods=scoring_methods))
    server.user_middleware.append(Middleware(UploadLimit, max_bytes=max_upload_bytes))
    server.state.lnnode_guards = True


def server_app():
    """MONAI Label's FastAPI application (imported late: it builds the app instance on import)."""
    from monailabel.app import app

    return app


def served_scoring_methods() -> Collection[str]:
    """The scoring methods of the app in service now (POST /reload/ builds a new one; the guards stay)."""
    from monailabel.interfaces.utils.app import app_instance

    return app_instance().info().get("scoring", {})
