"""Readable ids for the hostile-input tables (10k-character strings, 5000-digit integers)."""

from __future__ import annotations

import pytest

ID_MAX = 32


def pytest_make_parametrize_id(config: pytest.Config, val: object, argname: str) -> str | None:
    if isinstance(val, int) and not isinstance(val, bool) and val.bit_length() > 64:
        return f"int<{val.bit_length()}bits>"
    text = ascii(val)
    if " at 0x" in text:  # an object's address differs per process (parallel workers)
        return f"<{type(val).__name__}>"
    if len(text) > ID_MAX:
        return f"{text[: ID_MAX - 8]}...<{len(text)}>"
    return text
