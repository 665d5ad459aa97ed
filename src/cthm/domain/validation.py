"""Checks of single field values. Each returns the value in canonical form or raises InvalidInput.

These are the only gates between user text and the kernel: a namespace name or helper name that
reaches `cthm.netfilter` has passed here, and ports are integers.
"""

from __future__ import annotations

import re
import unicodedata
import uuid

from cthm.domain.errors import InvalidInput

NAME_MAX = 255
PROJECT_ID_MAX = 64
NAMESPACE_MAX = 64
STATUS_REASON_MAX = 1024

_PROJECT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# A namespace name is a file name under /run/netns and an argv word for `ip netns`: a safe,
# shell-inert subset, not starting with '-' (option injection) or '.' (hidden, '..').
_NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# 8-4-4-4-12 hex digits, with all four dashes or none (\1 repeats the first separator).
_UUID = re.compile(
    r"[0-9a-fA-F]{8}(-?)[0-9a-fA-F]{4}\1[0-9a-fA-F]{4}\1[0-9a-fA-F]{4}\1[0-9a-fA-F]{12}"
)


def _require_str(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"must be a string, not {type(value).__name__}", field=field)
    return value


def validate_uuid(value: object, field: str = "id") -> str:
    text = _require_str(value, field)
    # uuid.UUID() alone also takes braces, "urn:", and whatever int() tolerates (surrounding
    # whitespace and newlines, a sign, '_'), and the value types keep the text they were given.
    if not _UUID.fullmatch(text):
        raise InvalidInput(f"{text[:40]!r} is not a valid UUID", field=field)
    return str(uuid.UUID(text))


def validate_name(value: object, field: str = "name") -> str:
    text = _require_str(value, field)
    if len(text) > NAME_MAX:
        raise InvalidInput(f"is {len(text)} characters long; at most {NAME_MAX}", field=field)
    for char in text:
        if unicodedata.category(char) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            raise InvalidInput(
                f"contains a control or invisible character (U+{ord(char):04X})", field=field
            )
    return text


def validate_project_id(value: object, field: str = "project_id") -> str:
    text = _require_str(value, field)
    if not 1 <= len(text) <= PROJECT_ID_MAX or not _PROJECT_ID.fullmatch(text):
        raise InvalidInput(
            f"must be 1-{PROJECT_ID_MAX} characters of letters, digits, '_', '.', '-', "
            "starting with a letter or digit",
            field=field,
        )
    return text


def validate_namespace(value: object, field: str = "namespace") -> str:
    text = _require_str(value, field)
    if not 1 <= len(text) <= NAMESPACE_MAX or not _NAMESPACE.fullmatch(text):
        raise InvalidInput(
            f"must be 1-{NAMESPACE_MAX} characters of letters, digits, '_', '.', '-', "
            "starting with a letter or digit",
            field=field,
        )
    return text


def validate_port(value: object, field: str = "port") -> int:
    # bool is an int subclass in Python; JSON true is not a port.
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"must be an integer, not {type(value).__name__}", field=field)
    if not 1 <= value <= 65535:
        # Not echoed when huge: bounded messages, and str() raises past 4300 digits.
        shown = str(value) if abs(value) < 10**12 else "the value"
        raise InvalidInput(f"{shown} is out of range 1-65535", field=field)
    return value


def validate_status_reason(value: object, field: str = "status_reason") -> str:
    text = _require_str(value, field)
    # Reasons come from the kernel and agents; keep them one printable line of bounded size.
    cleaned = "".join(c if c.isprintable() else " " for c in text)
    return cleaned[:STATUS_REASON_MAX]
