"""How the bridge turns errors into HTTP answers, and the few errors only HTTP has.

Every error answer is ``{"error": {"code", "message", "details", "trace_id"}}``
with the status of the error's class (``registrygrid.errors``: one status
and one stable code per typed error). The classes below extend that
hierarchy with what only exists at the HTTP edge (a precondition header, a
reused idempotency key, a route or method that does not exist), so the
Python client can rebuild every one of them from its code.

This module imports no aiohttp: the client imports it too.
"""

from __future__ import annotations

from typing import Any

from registrygrid.errors import (
    Conflict,
    MalformedInput,
    NotFound,
    RateLimited,
    RegistryError,
    TooLarge,
    Unavailable,
    ValidationError,
)


class PreconditionFailed(Conflict):
    """``If-Match`` named a change the record has moved past (RFC 9110 13.1.1)."""

    code = "precondition_failed"
    http_status = 412


class IdempotencyKeyReused(ValidationError):
    """The same Idempotency-Key came back with a different request."""

    code = "idempotency_key_reused"
    http_status = 422


class IdempotencyInProgress(Conflict):
    """A request with this Idempotency-Key is still being answered."""

    code = "idempotency_in_progress"


class RouteNotFound(NotFound):
    code = "route_not_found"


class MethodNotAllowed(RegistryError):
    code = "method_not_allowed"
    http_status = 405


class InternalError(RegistryError):
    """A bug answered 500; the node's log holds the details under the trace id."""

    code = "internal_error"


def _subclasses(cls: type[RegistryError]) -> list[type[RegistryError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out.extend(_subclasses(sub))
    return out


def error_classes() -> dict[str, type[RegistryError]]:
    """code -> class, for every typed error (core and bridge), for the client.

    The transport's errors (``p2p_*``: a follow or a remote read whose peer
    failed) live in ``node/transport.py``, which imports trio; they are
    looked up only when such a code arrives (``rebuild``)."""
    return {cls.code: cls for cls in _subclasses(RegistryError)}


# An answer without our error body (a proxy's page, a crash before the
# middleware) is typed by its status, so 404s, 429s and 503s still behave.
_BY_STATUS: dict[int, type[RegistryError]] = {
    400: MalformedInput, 404: NotFound, 405: MethodNotAllowed, 409: Conflict, 412: PreconditionFailed,
    413: TooLarge, 422: ValidationError, 429: RateLimited, 500: InternalError, 503: Unavailable}


def error_body(exc: RegistryError, trace_id: str) -> dict[str, Any]:
    return {"error": {"code": exc.code, "message": exc.message, "details": _plain(exc.details),
                      "trace_id": trace_id}}


def rebuild(status: int, body: Any) -> RegistryError:
    """The typed error an error answer stands for (client side): the class
    of its code, or RegistryError keeping an unknown code; ``http_status``
    is the status answered, ``trace_id`` the answer's (or None)."""
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, str) and "code" in body:  # the MCP Registry API's shape (formats/mcp_registry.py)
        err = {"code": body["code"], "message": err, "details": body.get("details"), "trace_id": body.get("trace_id")}
    if not isinstance(err, dict):
        exc = _BY_STATUS.get(status, RegistryError)(f"HTTP {status} without an error body")
        exc.http_status = status
        exc.trace_id = None  # type: ignore[attr-defined]
        return exc
    code = str(err.get("code", "registry_error"))
    classes = error_classes()
    if code not in classes:
        # Defined where they are raised, in modules a client has no other
        # reason to load: the transport (p2p_*) and the blob store (an
        # expired upload must be a NotFound to the client that resumes it).
        if code.startswith("p2p_"):
            from registrygrid.node import transport  # noqa: F401
        else:
            from registrygrid.blobs import service  # noqa: F401
        classes = error_classes()
    cls = classes.get(code)
    message = str(err.get("message", ""))
    trace = err.get("trace_id")
    if trace:
        message = f"{message} (trace {trace})"
    # A code this version lacks (a newer node's) is typed by its status, so
    # a 404 still reads as NotFound; the code itself is kept.
    exc = (cls or _BY_STATUS.get(status, RegistryError))(message, details=err.get("details"))
    if cls is None:
        exc.code = code
    exc.http_status = status
    exc.trace_id = trace  # type: ignore[attr-defined]
    return exc


def _plain(value: Any) -> Any:
    """Details as JSON values (they may hold bytes, tuples or sets)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)
