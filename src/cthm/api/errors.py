"""Every error leaves the API as Neutron's body: {"NeutronError": {"type", "message", "detail"}}.

Domain errors map to HTTP statuses here and nowhere else. Messages may carry user input (an
unknown key, a bad id): they are escaped and capped here so that no response echoes unbounded or
control-character text back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fastapi.responses import JSONResponse

from cthm.domain import (
    Conflict,
    CthmError,
    InvalidInput,
    NotFound,
    PreconditionFailed,
    RouterNotFound,
    Unavailable,
)

MESSAGE_MAX = 1000
VALUE_SHOWN_MAX = 40
ERRORS_SHOWN_MAX = 3


class Denial:
    """Mixin of errors that deny a principal something: the audit trail records each one."""

    action: str = ""
    target_type: str = ""
    target_id: str | None = None
    target_project_id: str | None = None


class Forbidden(Denial, CthmError):
    """The principal may see the target but the policy denies this action on it (403)."""

    kind = "PolicyNotAuthorized"

    def __init__(
        self,
        action: str,
        *,
        message: str | None = None,
        target_type: str = "",
        target_id: str | None = None,
        target_project_id: str | None = None,
    ) -> None:
        super().__init__(message or f"rule:{action} is disallowed by policy")
        self.action = action
        self.target_type = target_type
        self.target_id = target_id
        self.target_project_id = target_project_id


class HiddenRouter(Denial, RouterNotFound):
    """A router that exists but the principal may not see: answered exactly as an unknown id."""

    def __init__(self, router_id: str, action: str, project_id: str) -> None:
        super().__init__(router_id)
        self.action = action
        self.target_type = "router"
        self.target_id = router_id
        self.target_project_id = project_id


class Unauthenticated(CthmError):
    """No valid token. The message says nothing about why (expired, revoked, unknown)."""

    kind = "HTTPUnauthorized"

    def __init__(
        self,
        *,
        token_id: str | None = None,
        client: str | None = None,
        failures_in_a_row: int = 1,
    ) -> None:
        super().__init__("Authentication required")
        # For the audit trail only (never in the response): the id of a revoked or expired
        # token, who failed (the throttle's client key), and the client's count so far.
        self.token_id = token_id
        self.client = client
        self.failures_in_a_row = failures_in_a_row


class RequestTooLarge(CthmError):
    kind = "RequestEntityTooLarge"

    def __init__(self, limit: int) -> None:
        super().__init__(f"Request body is larger than the limit of {limit} bytes")


# Most specific first: the first class an error is an instance of decides its status.
_STATUS_OF: tuple[tuple[type[CthmError], int], ...] = (
    (InvalidInput, 400),
    (Unauthenticated, 401),
    (Forbidden, 403),
    (NotFound, 404),
    (Conflict, 409),
    (PreconditionFailed, 412),
    (RequestTooLarge, 413),
    (Unavailable, 503),
)

# Neutron-style type names of errors that are not domain errors (unknown URL, wrong method...).
_HTTP_KINDS: Mapping[int, str] = {
    400: "HTTPBadRequest",
    401: "HTTPUnauthorized",
    403: "HTTPForbidden",
    404: "HTTPNotFound",
    405: "HTTPMethodNotAllowed",
    406: "HTTPNotAcceptable",
    409: "HTTPConflict",
    413: "HTTPRequestEntityTooLarge",
    415: "HTTPUnsupportedMediaType",
    500: "HTTPInternalServerError",
    503: "HTTPServiceUnavailable",
}

INTERNAL_ERROR_MESSAGE = "Request failed: internal server error while processing your request."


def status_of(error: CthmError) -> int:
    for cls, status in _STATUS_OF:
        if isinstance(error, cls):
            return status
    return 500  # the bare base class is a programming error, never a user's


def http_kind(status: int) -> str:
    return _HTTP_KINDS.get(status, f"HTTP{status}")


def shown(value: object, limit: int = VALUE_SHOWN_MAX) -> str:
    """A user value quoted for a message: repr (escapes control characters), length capped."""
    if isinstance(value, str):
        text = repr(value[:limit])
        return text + ("..." if len(value) > limit else "")
    return repr(value)[:limit]


def clean_message(text: str) -> str:
    """Last line of defence: one printable line of bounded size."""
    cleaned = "".join(c if c.isprintable() else " " for c in text)
    return cleaned if len(cleaned) <= MESSAGE_MAX else cleaned[:MESSAGE_MAX] + "..."


def error_body(kind: str, message: str) -> dict[str, dict[str, str]]:
    return {"NeutronError": {"type": kind, "message": clean_message(message), "detail": ""}}


def error_response(
    status: int, kind: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(kind, message), status_code=status, headers=headers)


def domain_error_response(error: CthmError) -> JSONResponse:
    status = status_of(error)
    if status == 500:
        return error_response(500, http_kind(500), INTERNAL_ERROR_MESSAGE)
    return error_response(status, error.kind, error.message)


# --- request validation (pydantic errors as FastAPI reports them) -------------------------

_JSON_TYPES: Mapping[type, str] = {
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    list: "an array",
    dict: "an object",
    type(None): "null",
}

_EXPECTED: Mapping[str, str] = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "string_type": "a string",
    "bool_type": "a boolean",
    "float_type": "a number",
    "dict_type": "a JSON object",
    "model_type": "a JSON object",
    "model_attributes_type": "a JSON object",
    "list_type": "an array",
}


def validation_message(errors: Sequence[Mapping[str, Any]]) -> str:
    """One readable message naming each wrong field and what is wrong with it."""
    parts = [_describe(error) for error in errors[:ERRORS_SHOWN_MAX]]
    message = "; ".join(parts) or "Invalid request"
    if len(errors) > ERRORS_SHOWN_MAX:
        message += f" (and {len(errors) - ERRORS_SHOWN_MAX} more errors)"
    return message


def _describe(error: Mapping[str, Any]) -> str:
    kind = str(error.get("type", ""))
    loc = tuple(error.get("loc", ()))
    where = loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc
    value = error.get("input")
    ctx = error.get("ctx") or {}
    if kind == "json_invalid":
        reason = str(ctx.get("error", "not valid JSON"))[:100]
        position = f" at position {where[0]}" if where and isinstance(where[0], int) else ""
        return f"Malformed JSON in the request body: {reason}{position}"
    if not where:
        if kind == "missing":
            return "Request body is required: a JSON object"
        if isinstance(value, bytes | bytearray):
            return "Request body must be JSON sent with Content-Type: application/json"
        return f"Request body must be a JSON object, not {_json_type(value)}"
    if kind == "extra_forbidden":
        parent = _path(where[:-1])
        prefix = f"Invalid input for {parent}: " if parent else ""
        return f"{prefix}unknown field {shown(where[-1])}"
    field = _path(where)
    if kind == "missing":
        return f"Invalid input for {field}: field is required"
    if kind in _EXPECTED:
        return f"Invalid input for {field}: must be {_EXPECTED[kind]}, not {_json_type(value)}"
    if kind.startswith("cthm_"):  # our own validators: the message is already written for users
        return f"Invalid input for {field}: {error.get('msg', '')}"
    return f"Invalid input for {field}: {str(error.get('msg', 'invalid value'))[:200]}"


def _json_type(value: object) -> str:
    for cls, name in _JSON_TYPES.items():
        if type(value) is cls:
            return name
    return type(value).__name__


def _path(parts: Sequence[object]) -> str:
    out: list[str] = []
    for part in parts:
        if isinstance(part, int):
            out.append(f"[{part}]")
            continue
        text = str(part)
        safe = text.isascii() and text.replace("_", "a").isalnum() and len(text) <= VALUE_SHOWN_MAX
        out.append(("." if out else "") + (text if safe else shown(text)))
    return "".join(out)


def body_parse_message(cause: BaseException | None) -> str:
    """The message for a body FastAPI could not decode at all (not a plain JSON syntax error)."""
    if isinstance(cause, UnicodeDecodeError):
        return "Malformed request body: it is not valid UTF-8"
    if isinstance(cause, RecursionError):
        return "Malformed request body: JSON nested too deeply"
    if isinstance(cause, ValueError):
        return "Malformed request body: a JSON number is too long"
    return "Malformed request body: it could not be parsed as JSON"
