"""Domain errors -> HTTP status and OpenAI's error body, in one place.

Body: ``{"error": {"message", "type", "param", "code"}}`` as the OpenAI API returns it,
so that the official clients raise their matching exception types.
"""

from __future__ import annotations

import inspect
import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from siglip_serve import errors
from siglip_serve.api.protocol import ErrorResponse

# (status, OpenAI error type) per domain error; the most specific class wins (MRO order).
STATUS: dict[type[errors.SiglipServeError], tuple[int, str]] = {
    errors.InvalidImageError: (400, "invalid_request_error"),
    errors.EmptyImageError: (400, "invalid_request_error"),
    errors.ImageTooLargeError: (400, "invalid_request_error"),
    errors.ImageFetchError: (400, "invalid_request_error"),
    errors.EmptyInputError: (400, "invalid_request_error"),
    errors.InvalidTemplateError: (400, "invalid_request_error"),
    errors.InvalidTextError: (400, "invalid_request_error"),
    errors.TooManyInputsError: (400, "invalid_request_error"),
    errors.TextTooLongError: (400, "invalid_request_error"),
    errors.InvalidParameterError: (400, "invalid_request_error"),
    errors.InvalidFormError: (400, "invalid_request_error"),
    errors.RequestTooLargeError: (413, "invalid_request_error"),
    errors.AuthenticationError: (401, "authentication_error"),
    errors.UnknownModelError: (404, "not_found_error"),
    errors.QueueFullError: (429, "rate_limit_error"),
    errors.DeadlineExceededError: (504, "timeout_error"),
    errors.EngineUnavailableError: (503, "service_unavailable_error"),
    errors.InferenceError: (500, "server_error"),
    errors.CheckpointNotFoundError: (500, "server_error"),
    errors.InvalidCheckpointError: (500, "server_error"),
    errors.UnsupportedModelError: (500, "server_error"),
    errors.CollectionNotFoundError: (404, "not_found_error"),
    errors.CollectionExistsError: (409, "conflict_error"),
    errors.InvalidCollectionNameError: (400, "invalid_request_error"),
    errors.ModelMismatchError: (400, "invalid_request_error"),
    errors.LayerOutOfRangeError: (400, "invalid_request_error"),
    errors.ResponseTooLargeError: (413, "invalid_request_error"),
    # Keys and limits: OpenAI's types for 401/403/429 (error codes guide); see errors.RateLimitExceededError.
    errors.PermissionDeniedError: (403, "permission_error"),
    errors.RateLimitExceededError: (429, "rate_limit_error"),
    errors.QuotaExceededError: (429, "insufficient_quota"),
    errors.KeyNotFoundError: (404, "not_found_error"),
    errors.KeyExistsError: (409, "conflict_error"),
    errors.AccountsUnavailableError: (503, "service_unavailable_error"),
    errors.AccountsConfigError: (500, "server_error"),
}
RETRY_AFTER_S = "1"
# A message echoes user input only in short form (errors.shown); this caps whatever else slips through.
MAX_MESSAGE_CHARS = 1000
logger = logging.getLogger(__name__)


class ClientDisconnected(Exception):
    """The client went away before its answer was ready; its queued work has been cancelled."""


def status_of(exc: errors.SiglipServeError | type[errors.SiglipServeError]) -> tuple[int, str]:
    """(status, OpenAI error type) of an error or an error type."""
    for cls in (exc if isinstance(exc, type) else type(exc)).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500, "server_error"


def error_response(status: int, message: str, *, type_: str, param: str | None = None,
                   code: str | None = None, retry_after_s: int | None = None) -> JSONResponse:
    retry_after = str(retry_after_s) if retry_after_s is not None else RETRY_AFTER_S
    headers = {"Retry-After": retry_after} if status in (429, 503) else None
    if status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS] + "..."
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def domain_error_response(exc: errors.SiglipServeError) -> JSONResponse:
    status, type_ = status_of(exc)
    # An error may carry OpenAI's code (rate_limit_exceeded, insufficient_quota) and its own Retry-After.
    return error_response(status, exc.message, type_=type_, param=exc.param,
                          code=getattr(exc, "code", None) or type(exc).__name__,
                          retry_after_s=getattr(exc, "retry_after_s", None))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(errors.SiglipServeError)
    async def _domain(request: Request, exc: errors.SiglipServeError) -> JSONResponse:
        return domain_error_response(exc)

    @app.exception_handler(ClientDisconnected)
    async def _gone(request: Request, exc: ClientDisconnected) -> JSONResponse:
        # nginx's 499 "client closed request": recorded in metrics, never seen by anyone.
        return error_response(499, "client closed the connection", type_="client_closed")

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        # "an instance of Input" is the form-only branch of an item (protocol.FormInput): never the helpful one.
        problems = [p for p in exc.errors() if p.get("type") != "is_instance_of"] or exc.errors()
        # The deepest location names the item (input[1]) rather than the union branch (input).
        first = max(problems, key=lambda p: len(p.get("loc", ()))) if problems else {"loc": (), "msg": "invalid"}
        if first.get("type") == "json_invalid":
            return error_response(400, f"request body is not valid JSON: {first.get('msg')}",
                                  type_="invalid_request_error", code="invalid_json")
        param = _param_name(first.get("loc", ()))
        details = "; ".join(f"{_param_name(p.get('loc', ()))}: {p.get('msg')}" for p in problems[:5])
        return error_response(422, details, type_="invalid_request_error", param=param, code="invalid_field")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error on %s", request.url.path)
        return error_response(500, f"internal error: {type(exc).__name__}", type_="server_error",
                              code="internal_error")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), type_="invalid_request_error")

    @app.exception_handler(json.JSONDecodeError)
    async def _json(request: Request, exc: json.JSONDecodeError) -> JSONResponse:
        return error_response(400, f"request body is not valid JSON: {exc}", type_="invalid_request_error",
                              code="invalid_json")


def _param_name(loc: tuple | list) -> str:
    """('body', 'input', 3) -> 'input[3]'; union branch names pydantic adds are dropped."""
    name = ""
    for part in loc:
        if part == "body":
            continue
        if isinstance(part, int):
            name += f"[{part}]"
        elif isinstance(part, str) and (part[:1].isupper() or part in {"str", "list[...]", "function-after"}
                                        or "[" in part):
            continue
        else:
            name += f".{part}" if name else part
    return name or "body"


# --- the OpenAPI document: which errors each route can answer -----------------------------------------

# Errors answered outside the domain errors, by the middlewares and handlers above: code -> (status, meaning).
OTHER_ERRORS: dict[str, tuple[int, str]] = {
    "invalid_json": (400, "The body is not valid JSON."),
    "invalid_field": (422, "A field is missing, unknown, or of the wrong type or value; `param` names it."),
    "request_timeout": (408, "The body was not received within --body-timeout-s."),
    "url_too_long": (414, "The path and query are longer than --max-url-bytes."),
    "header_too_large": (431, "A header line is longer than --max-header-bytes."),
    "unhealthy": (503, "The engine cannot serve (its batch loop died, or it is stopping)."),
    "internal_error": (500, "An unexpected failure (a bug): `internal error: <exception type>`."),
}
ErrorCause = type[errors.SiglipServeError] | str
# Every route: the connection guard's limits and an unexpected failure.
ANY_ROUTE: tuple[ErrorCause, ...] = ("url_too_long", "header_too_large", "internal_error")
# Behind the key gate (api.security.ApiKeyGate): keys, route permissions, rate limits and quotas.
KEYED: tuple[ErrorCause, ...] = (errors.AuthenticationError, errors.PermissionDeniedError,
                                 errors.RateLimitExceededError, errors.QuotaExceededError,
                                 errors.AccountsUnavailableError)
# A route that reads a JSON body (or a form, api.uploads).
WITH_BODY: tuple[ErrorCause, ...] = ("invalid_json", "invalid_field", "request_timeout", errors.RequestTooLargeError)
# A route that runs the model on images and texts.
INFERENCE: tuple[ErrorCause, ...] = (
    errors.InvalidImageError, errors.EmptyImageError, errors.ImageTooLargeError, errors.ImageFetchError,
    errors.EmptyInputError, errors.InvalidTextError, errors.TooManyInputsError, errors.TextTooLongError,
    errors.InvalidParameterError, errors.UnknownModelError, errors.QueueFullError, errors.DeadlineExceededError,
    errors.EngineUnavailableError, errors.InferenceError,
)
COLLECTIONS: tuple[ErrorCause, ...] = (errors.InvalidCollectionNameError, errors.CollectionNotFoundError,
                                       errors.CollectionExistsError, errors.ModelMismatchError)
FEATURES: tuple[ErrorCause, ...] = (errors.LayerOutOfRangeError, errors.ResponseTooLargeError)
ADMIN: tuple[ErrorCause, ...] = (errors.KeyNotFoundError, errors.KeyExistsError, errors.AccountsConfigError)
_HEADERS = {
    401: {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
    429: {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}},
    503: {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}},
}


def error_responses(*causes: ErrorCause) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` for a route that can fail with `causes` (domain error types, or codes of
    `OTHER_ERRORS`): one entry per status with OpenAI's error body, its description listing each cause's
    `code` and meaning (an error type's docstring), so the document follows `STATUS` and never drifts."""
    lines: dict[int, list[str]] = {}
    for cause in dict.fromkeys(causes):
        if isinstance(cause, str):
            status, meaning = OTHER_ERRORS[cause]
            code = cause
        else:
            status = status_of(cause)[0]
            meaning = (inspect.getdoc(cause) or "").replace("\n", " ")
            code = getattr(cause, "code", None) or cause.__name__
        lines.setdefault(status, []).append(f"- `{code}`: {meaning}")
    responses: dict[int | str, dict[str, Any]] = {}
    for status in sorted(lines):
        description = "OpenAI's error body; `code` says which:\n\n" + "\n".join(lines[status])
        entry: dict[str, Any] = {"model": ErrorResponse, "description": description}
        if status in _HEADERS:
            entry["headers"] = _HEADERS[status]
        responses[status] = entry
    return responses
