"""Table-driven checks of every single-field validator, hostile inputs first.

Every refusal must name the field and carry a message a person can read: bounded in size (a 10k
input is never echoed back) and free of raw control characters (nothing a terminal or a log
parser would interpret).
"""

from __future__ import annotations

import re
import uuid

import pytest

from cthm.domain import (
    InvalidInput,
    validate_name,
    validate_namespace,
    validate_port,
    validate_project_id,
    validate_status_reason,
    validate_uuid,
)

MESSAGE_MAX = 300
LONG = "a" * 10_000

SHELL = [
    "; rm -rf /",
    "a;b",
    "$(id)",
    "`id`",
    "a|b",
    "a && b",
    "a'b",
    'a"b',
    "a b",
    "a>b",
    "a<b",
    "a*",
    "~root",
    "a\\b",
    "a$b",
    "a{b}",
]
CONTROL = [
    "a\nb",
    "a\rb",
    "a\x00b",
    "a\tb",
    "\x1b[31mred",
    "a\x7fb",
    "a\x85b",  # NEL
    "a\u2028b",  # line separator
    "a\u2029b",  # paragraph separator
    "a\u202eb",  # right-to-left override
    "a\u200bb",  # zero-width space
    "\ufeffa",  # byte order mark
    "a\ud800b",  # lone surrogate
    "a\ue000b",  # private use
]
NON_STRINGS: list[object] = [None, 1, 1.5, True, b"bytes", ["a"], {"a": 1}, object()]


def assert_clean_refusal(exc: InvalidInput, field: str) -> None:
    assert exc.field == field
    message = str(exc)
    assert message.startswith(f"Invalid input for {field}: ")
    assert len(message) <= MESSAGE_MAX, message[:200]
    assert message.isprintable(), repr(message)


# --- namespace ---------------------------------------------------------------------------

NAMESPACE_OK = [
    "a",
    "0",
    "qrouter-" + str(uuid.UUID(int=1)),
    "A_b.c-d",
    "ns..x",  # dots inside are harmless: the name cannot start with one
    "n" * 64,
]
NAMESPACE_BAD = [
    "",
    "-x",
    "--help",
    "-",
    ".x",
    ".",
    "..",
    "../etc",
    "a/b",
    "/",
    "/run/netns/x",
    "a:b",
    "a@b",
    "é",
    "router\U0001f680",
    "n" * 65,
    LONG,
    *SHELL,
    *CONTROL,
]


@pytest.mark.parametrize("value", NAMESPACE_OK)
def test_namespace_accepted(value: str) -> None:
    assert validate_namespace(value) == value


@pytest.mark.parametrize("value", NAMESPACE_BAD)
def test_namespace_refused(value: str) -> None:
    with pytest.raises(InvalidInput) as info:
        validate_namespace(value)
    assert_clean_refusal(info.value, "namespace")


@pytest.mark.parametrize("value", NON_STRINGS)
def test_namespace_must_be_a_string(value: object) -> None:
    with pytest.raises(InvalidInput) as info:
        validate_namespace(value)
    assert_clean_refusal(info.value, "namespace")
    assert "must be a string" in str(info.value)


def test_namespace_field_name_is_the_callers() -> None:
    with pytest.raises(InvalidInput) as info:
        validate_namespace("-x", field="router.namespace")
    assert info.value.field == "router.namespace"


# --- project id --------------------------------------------------------------------------

PROJECT_OK = ["p", "0", uuid.UUID(int=7).hex, "my-project_1.x", "P" * 64]
PROJECT_BAD = ["", "-p", ".p", "_p", "p/q", "p q", "p" * 65, LONG, "é", *SHELL, *CONTROL]


@pytest.mark.parametrize("value", PROJECT_OK)
def test_project_id_accepted(value: str) -> None:
    assert validate_project_id(value) == value


@pytest.mark.parametrize("value", PROJECT_BAD + NON_STRINGS)
def test_project_id_refused(value: object) -> None:
    with pytest.raises(InvalidInput) as info:
        validate_project_id(value)
    assert_clean_refusal(info.value, "project_id")


# --- name --------------------------------------------------------------------------------

# A name is data shown to people, never a command word: metacharacters and any printable
# unicode are fine, control and invisible characters are not.
NAME_OK = [
    "",
    "router 1",
    "ルーター",
    "\U0001f680 rocket router",
    "caf\u00e9",
    "e\u0301",  # combining accent
    "n" * 255,
    "\U0001f680" * 255,
    *SHELL,
]
NAME_BAD = [*CONTROL, "n" * 256, LONG, "\x00", "\n", "line\n"]


@pytest.mark.parametrize("value", NAME_OK)
def test_name_accepted(value: str) -> None:
    assert validate_name(value) == value


@pytest.mark.parametrize("value", NAME_BAD)
def test_name_refused(value: str) -> None:
    with pytest.raises(InvalidInput) as info:
        validate_name(value)
    assert_clean_refusal(info.value, "name")


@pytest.mark.parametrize(
    ("value", "shown"),
    [("a\u202eb", "U+202E"), ("a\u200bb", "U+200B"), ("a\x00b", "U+0000"), ("a\nb", "U+000A")],
)
def test_name_refusal_names_the_invisible_character(value: str, shown: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(shown)):
        validate_name(value)


@pytest.mark.parametrize("value", NON_STRINGS)
def test_name_must_be_a_string(value: object) -> None:
    with pytest.raises(InvalidInput) as info:
        validate_name(value)
    assert_clean_refusal(info.value, "name")


# --- uuid --------------------------------------------------------------------------------

CANONICAL = "0123abcd-4567-89ab-cdef-0123456789ab"
UUID_OK = [
    (CANONICAL, CANONICAL),
    (CANONICAL.upper(), CANONICAL),
    (CANONICAL.replace("-", ""), CANONICAL),
]
UUID_BAD = [
    "",
    "not-a-uuid",
    CANONICAL[:-1],
    CANONICAL + "0",
    "{" + CANONICAL + "}",
    "urn:uuid:" + CANONICAL,
    # Spellings uuid.UUID() tolerates but which are not a UUID a client should send: they would
    # be stored verbatim by the value types (newline in an id, a prefix, a sign, separators).
    "urn:" + CANONICAL.replace("-", ""),
    "\n" + CANONICAL.replace("-", "")[1:],
    " " + CANONICAL.replace("-", "")[1:],
    "+" + CANONICAL.replace("-", "")[1:],
    CANONICAL.replace("-", "")[:16] + "_" + CANONICAL.replace("-", "")[17:],
    "0-1-2-3-" + "0" * 28,
    CANONICAL.replace("-", "")[:-1] + "g",
    "; rm -rf /" + CANONICAL[10:],
    LONG,
    *CONTROL,
]


@pytest.mark.parametrize(("value", "canonical"), UUID_OK)
def test_uuid_accepted_in_canonical_form(value: str, canonical: str) -> None:
    assert validate_uuid(value) == canonical


@pytest.mark.parametrize("value", UUID_BAD)
def test_uuid_refused(value: str) -> None:
    with pytest.raises(InvalidInput) as info:
        validate_uuid(value, field="router_id")
    assert_clean_refusal(info.value, "router_id")


@pytest.mark.parametrize("value", [*NON_STRINGS, uuid.UUID(CANONICAL), 12345678901234567890])
def test_uuid_must_be_a_string(value: object) -> None:
    with pytest.raises(InvalidInput) as info:
        validate_uuid(value)
    assert_clean_refusal(info.value, "id")


# --- port --------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [1, 21, 69, 1024, 65535])
def test_port_accepted(value: int) -> None:
    assert validate_port(value) == value


@pytest.mark.parametrize(
    "value",
    [0, -1, -21, 65536, 70000, 2**16 + 21, 2**31, 2**63, -(2**63), 10**100, 10**4000, 10**5000],
)
def test_port_out_of_range(value: int) -> None:
    with pytest.raises(InvalidInput) as info:
        validate_port(value)
    assert_clean_refusal(info.value, "port")
    assert "1-65535" in str(info.value)


@pytest.mark.parametrize(
    "value",
    [
        True,
        False,
        21.0,
        21.5,
        float("nan"),
        float("inf"),
        "21",
        "0x15",
        " 21",
        None,
        [21],
        {"p": 21},
    ],
)
def test_port_must_be_an_integer(value: object) -> None:
    with pytest.raises(InvalidInput) as info:
        validate_port(value)
    assert_clean_refusal(info.value, "port")
    assert "must be an integer" in str(info.value)


# --- status reason -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "cleaned"),
    [
        ("", ""),
        ("namespace qrouter-x not found", "namespace qrouter-x not found"),
        ("line one\nline two", "line one line two"),
        ("nul\x00here", "nul here"),
        ("\x1b[31mred", " [31mred"),
        ("rtl\u202eoverride", "rtl override"),
        ("sip \U0001f680", "sip \U0001f680"),
    ],
)
def test_status_reason_is_one_printable_line(value: str, cleaned: str) -> None:
    assert validate_status_reason(value) == cleaned


def test_status_reason_is_capped() -> None:
    assert validate_status_reason(LONG) == "a" * 1024


@pytest.mark.parametrize("value", NON_STRINGS)
def test_status_reason_must_be_a_string(value: object) -> None:
    with pytest.raises(InvalidInput) as info:
        validate_status_reason(value)
    assert_clean_refusal(info.value, "status_reason")
