"""Properties of the validators over generated input (Hypothesis)."""

from __future__ import annotations

import re
import unicodedata
import uuid

from hypothesis import example, given, settings
from hypothesis import strategies as st

from cthm.domain import (
    InvalidInput,
    validate_name,
    validate_namespace,
    validate_port,
    validate_project_id,
    validate_uuid,
)

SAFE_NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", re.ASCII)
INVISIBLE = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}

# Mostly the safe alphabet with hostile characters mixed in, so both outcomes are common.
namespace_like = st.text(
    alphabet=st.one_of(
        st.sampled_from("abcXYZ019_.-"),
        st.sampled_from("/ \n\t\x00;$`|&'\"\\:@~*\u202e\u200b\u0660\uff10é"),
        st.characters(),
    ),
    max_size=70,
)
# Decimals from other scripts look like digits to str.isdigit() and to `\d`, not to the kernel.
unicode_digits = st.sampled_from(["\u0660", "\uff10", "\u09e6", "\U0001d7ce"])

no_deadline = settings(deadline=None)


def _assert_clean(exc: InvalidInput) -> None:
    assert len(str(exc)) <= 300
    assert str(exc).isprintable()


@no_deadline
@given(namespace_like)
@example("-x")
@example(".x")
@example("..")
@example("a\n")
@example("a\u0660")
def test_accepted_namespace_is_in_the_safe_charset(value: str) -> None:
    try:
        accepted = validate_namespace(value)
    except InvalidInput as exc:
        _assert_clean(exc)
        return
    assert accepted == value
    assert SAFE_NAMESPACE.fullmatch(accepted)
    assert accepted.isascii()
    assert not accepted.startswith(("-", "."))
    assert "/" not in accepted
    assert accepted not in (".", "..")


@no_deadline
@given(st.from_regex(SAFE_NAMESPACE, fullmatch=True))
def test_every_safe_namespace_is_accepted(value: str) -> None:
    assert validate_namespace(value) == value


@no_deadline
@given(st.text(st.sampled_from("abc019"), min_size=0, max_size=10), unicode_digits)
def test_namespace_refuses_non_ascii_digits(prefix: str, digit: str) -> None:
    try:
        validate_namespace("n" + prefix + digit)
    except InvalidInput:
        return
    raise AssertionError("a non-ASCII digit was accepted in a namespace")


@no_deadline
@given(st.text(max_size=300))
@example("a\u202eb")
@example("a\u200bb")
@example("\U0001f680")
def test_accepted_name_has_no_control_or_invisible_characters(value: str) -> None:
    try:
        accepted = validate_name(value)
    except InvalidInput as exc:
        _assert_clean(exc)
        return
    assert accepted == value
    assert len(accepted) <= 255
    assert all(unicodedata.category(c) not in INVISIBLE for c in accepted)
    assert all(c.isprintable() or c == " " or unicodedata.category(c) == "Zs" for c in accepted)


@no_deadline
@given(st.text(max_size=80))
def test_accepted_project_id_is_in_the_safe_charset(value: str) -> None:
    try:
        accepted = validate_project_id(value)
    except InvalidInput as exc:
        _assert_clean(exc)
        return
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", accepted, re.ASCII)


@no_deadline
@given(st.one_of(st.text(max_size=50), st.uuids().map(str), st.uuids().map(lambda u: u.hex)))
def test_accepted_uuid_is_the_same_uuid_written_plainly(value: str) -> None:
    try:
        canonical = validate_uuid(value)
    except InvalidInput as exc:
        _assert_clean(exc)
        return
    assert canonical == str(uuid.UUID(canonical))
    assert value.lower() in (canonical, canonical.replace("-", ""))


@no_deadline
@given(st.integers())
def test_port_accepts_exactly_1_to_65535(value: int) -> None:
    try:
        accepted = validate_port(value)
    except InvalidInput as exc:
        _assert_clean(exc)
        assert not 1 <= value <= 65535
        return
    assert accepted == value
    assert 1 <= accepted <= 65535


@no_deadline
@given(st.one_of(st.floats(), st.booleans(), st.text(), st.none(), st.binary()))
def test_port_refuses_everything_that_is_not_an_int(value: object) -> None:
    try:
        validate_port(value)
    except InvalidInput as exc:
        _assert_clean(exc)
        return
    raise AssertionError(f"{value!r} was accepted as a port")
