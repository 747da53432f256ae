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

from registrygrid.errors import Conflict, NotFound, RegistryError, ValidationError


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


def _subclasses(cls: type[RegistryError]) -> list[type[RegistryError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out.extend(_subclasses(sub))
    return out


def error_classes() -> dict[str, type[RegistryError]]:
    """code -> class, for every typed error (core and bridge), for the client."""
    return {cls.code: cls for cls in _subclasses(RegistryError)}


def error_body(exc: RegistryError, trace_id: str) -> dict[str, Any]:
    return {"error": {"code": exc.code, "message": exc.message, "details": _plain(exc.details),
                      "trace_id": trace_id}}


def rebuild(status: int, body: Any) -> RegistryError:
    """The typed error an error answer stands for (client side)."""
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        exc = RegistryError(f"HTTP {status} without an error body")
        exc.http_status = status
        return exc
    code = str(err.get("code", "registry_error"))
    cls = error_classes().get(code)
    message = str(err.get("message", ""))
    trace = err.get("trace_id")
    if trace:
        message = f"{message} (trace {trace})"
    if cls is None:
        exc = RegistryError(message, details=err.get("details"))
        exc.code, exc.http_status = code, status
        return exc
    exc = cls(message, details=err.get("details"))
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
