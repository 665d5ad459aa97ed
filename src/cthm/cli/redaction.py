"""No secret in any log line, at any level: a filter that masks what looks like one.

A client may put a token where it does not belong: in a path (`/v2.0/routers/cthm_...`) or in
the query string (`?token=...`). uvicorn's access log (shown at DEBUG) prints both as they came,
and an error message may quote either. The filter masks, in a record's message, its arguments
and its formatted traceback: anything shaped like a cthm token, and the value of any query
parameter whose name says it is a secret (token, password, secret, key, auth...).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

REDACTED = "[redacted]"
# A cthm token (cthm_ + 43 urlsafe characters), or a long enough piece of one.
_TOKEN = re.compile(r"cthm_[A-Za-z0-9_-]{8,}")
# name=value in a query string (or a form), where the name says the value is a secret.
_SECRET_PARAMETER = re.compile(
    r"(?:^|(?<=[?&;\s\"']))"
    r"(?P<name>(?:[^=&;?\s\"']*(?:token|passw|secret|api[_-]?key|access[_-]?key|private[_-]?key"
    r"|auth|credential|signature)[^=&;?\s\"']*|key)=)"
    r"(?P<value>[^&;\s\"']*)",
    re.IGNORECASE,
)


def _mask_parameter(match: re.Match[str]) -> str:
    name = match.group("name")
    if name[:-1].lower().endswith("id"):  # token_id=...: an id, not a secret
        return match.group(0)
    return name + REDACTED


def redact(text: str) -> str:
    """`text` with token-shaped strings and secret query values masked."""
    # The substring tests skip what cannot match: the parameter pattern tries every position
    # of the text (~90 µs for an audit line, logged on every write).
    if "cthm_" in text:
        text = _TOKEN.sub("cthm_" + REDACTED, text)
    if "=" in text:
        text = _SECRET_PARAMETER.sub(_mask_parameter, text)
    return text


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, bytes):
        return redact(value.decode("latin-1"))
    return value


class RedactSecrets(logging.Filter):
    """Masks secrets in a record in place (so every handler after this one sees it masked);
    never drops a record. The arguments stay a tuple of the same length, as uvicorn's access
    formatter unpacks them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redacted(arg) for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {key: _redacted(arg) for key, arg in record.args.items()}
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


LOGGERS = ("", "cthm", "uvicorn", "uvicorn.error", "uvicorn.access")


def install(logger_names: Iterable[str] = LOGGERS) -> RedactSecrets:
    """Adds the filter to these loggers (a logger's filter sees the records logged to it by
    name) and to every handler they have (a handler's sees all that reach it, from any
    logger), once each. Call after logging is configured (uvicorn replaces its handlers)."""
    found = RedactSecrets()
    for name in logger_names:
        logger = logging.getLogger(name)
        for target in (logger, *logger.handlers):
            if not any(isinstance(f, RedactSecrets) for f in target.filters):
                target.addFilter(found)
    return found
