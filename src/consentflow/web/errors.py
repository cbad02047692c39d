"""Domain and HTTP errors mapped to answers, once for the whole app.

Every expected failure is a 4xx with a one-line message: JSON ``{"detail": ...}`` (and, for bad
input, ``errors`` naming each field) under /api and for /openapi.json, a page elsewhere; a 401 on
a page is the sign-in form. ``ConsentflowError``: ``NotFound`` 404, ``InvalidInput`` 422,
``TransitionNotAllowed``/``Conflict`` (and any other) 409. A value the database refuses is a 422,
a unique-key race a 409. ``install(app)`` registers the handlers.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DataError, IntegrityError
from starlette.exceptions import HTTPException as StarletteHTTPException

from consentflow.errors import (
    Conflict,
    ConsentflowError,
    InvalidInput,
    NotFound,
    TransitionNotAllowed,
)
from consentflow.web.auth import AuthError
from consentflow.web.pages.login import login_page
from consentflow.web.templating import templates


def _is_api(request: Request) -> bool:
    """Machine routes answer errors in JSON (with ``WWW-Authenticate`` on a 401), pages in HTML."""
    return request.url.path.startswith("/api/") or request.url.path in {"/openapi.json", "/metrics"}


def error_response(
    request: Request, status: int, detail: str, errors: list[dict[str, Any]] | None = None
) -> Response:
    """A 4xx in the caller's language: JSON for the API, a page for people."""
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if _is_api(request):
        body: dict[str, Any] = {"detail": detail}
        if errors is not None:
            body["errors"] = errors
        return JSONResponse(body, status_code=status, headers=headers)
    if status == 401:
        return login_page(request, status=401, message=detail, next_url=str(request.url.path))
    return templates.TemplateResponse(
        request,
        "message.html",
        {"title": _TITLES.get(status, "Something is wrong"), "message": detail},
        status_code=status,
        headers=headers,
    )


_TITLES = {
    400: "This link does not work",
    403: "Not allowed",
    404: "Not found",
    405: "Not allowed",
    409: "Nothing was changed",
    410: "This link has expired",
    422: "Something in the request is wrong",
}


def _status_for(exc: ConsentflowError) -> int:
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, InvalidInput):
        return 422
    if isinstance(exc, TransitionNotAllowed | Conflict):
        return 409
    return 409


def _field_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    out = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        location = loc[0] if loc else "request"
        name = ".".join(loc[1:]) or location
        message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        out.append({"field": name, "location": location, "message": message})
    return out


# Long: one nested handler per kind of failure, each a few lines; together they are the whole map.
def install(app: FastAPI) -> None:
    """Register the app's exception handlers."""

    @app.exception_handler(ConsentflowError)
    async def _service_error(request: Request, exc: ConsentflowError) -> Response:
        return error_response(request, _status_for(exc), str(exc))

    @app.exception_handler(AuthError)
    async def _auth_error(request: Request, exc: AuthError) -> Response:
        return error_response(request, exc.status_code, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        errors = _field_errors(exc)
        first = errors[0] if errors else {"field": "request", "location": "", "message": ""}
        where = f"{first['location']} " if first["location"] != first["field"] else ""
        detail = f"{where}{first['field']}: {first['message']}"
        return error_response(request, 422, detail, errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        detail = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 400 and "parsing the body" in detail:
            # FastAPI's answer to a body that is not even text: bad input like any other.
            return error_response(request, 422, "body: not valid JSON (UTF-8 expected)")
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such page or endpoint: {request.method} {request.url.path}"
        response = error_response(request, exc.status_code, detail)
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    @app.exception_handler(DataError)
    async def _data_error(request: Request, exc: DataError) -> Response:
        # A value the database refuses (out of range, malformed): the caller's mistake.
        return error_response(request, 422, "a value is out of range or malformed")

    @app.exception_handler(IntegrityError)
    async def _integrity_error(request: Request, exc: IntegrityError) -> Response:
        # Two requests raced to create the same thing; the loser is told, nothing is half-written.
        return error_response(request, 409, "it exists already (a concurrent request created it)")
