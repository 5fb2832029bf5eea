"""JSON errors: one exception type for the API's own errors, and the middleware
that turns every failure into `{"error": {"code", "message", "parameter"?}}`.

A 500 or 503 body never carries exception or database text; that goes to the log.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

import asyncpg
import msgspec
import redis.exceptions
from aiohttp import web
from aiohttp.typedefs import Handler

from .shapes import ErrorBody, ErrorDetail

log = logging.getLogger("web")

#: Failures that mean "a backing service is unreachable" (503), not "we have a bug" (500).
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.exceptions.OperatorInterventionError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)

#: `code` of errors raised by aiohttp itself (unknown route, wrong method, ...).
_HTTP_CODES: Mapping[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
}


class ApiError(Exception):
    """An error answered as JSON with this status, code and message."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        parameter: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.parameter = parameter
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        return error_response(self.status, self.code, self.message, parameter=self.parameter, headers=self.headers)


def bad_parameter(name: str, message: str) -> ApiError:
    """400 naming the query or path parameter and what is allowed."""
    return ApiError(400, "bad_parameter", f"{name}: {message}", parameter=name)


def forbidden(message: str, parameter: str | None = None) -> ApiError:
    return ApiError(403, "forbidden", message, parameter=parameter)


def not_found(message: str) -> ApiError:
    return ApiError(404, "not_found", message)


def json_response(body: object, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    """A response whose body is `body` encoded by msgspec."""
    return web.Response(
        body=msgspec.json.encode(body), status=status, content_type="application/json", headers=headers
    )


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    parameter: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    detail = ErrorDetail(code=code, message=message, parameter=msgspec.UNSET if parameter is None else parameter)
    return json_response(ErrorBody(error=detail), status=status, headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer every error as JSON; log what the client must not see."""
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise  # redirects and the like are not errors
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        code = _HTTP_CODES.get(exc.status, "http_error")
        return error_response(exc.status, code, exc.reason, headers=allow)
    except UNAVAILABLE_ERRORS as exc:
        log.warning("%s %s: backing service unavailable: %s: %s", request.method, request.path, type(exc).__name__, exc)
        return error_response(503, "unavailable", "the database or Redis is unavailable; try again shortly")
    except Exception:
        log.exception("%s %s: unhandled error", request.method, request.path)
        return error_response(500, "internal_error", "internal error; the server log has the details")
