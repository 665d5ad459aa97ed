"""The front door's parts on their own: bounded logging, the descriptor budget, redaction.
(The whole is tested against a real server in tests/faults/test_fault_half_open.py and
tests/security/test_log_redaction.py.)"""

from __future__ import annotations

import logging
import sys

import pytest

from cthm.cli.frontdoor import RateLimitedLog
from cthm.cli.redaction import RedactSecrets, redact
from cthm.cli.server import DESCRIPTOR_RESERVE, connection_budget

SECRET = "cthm_" + "s3cr3t-" * 6 + "x"


def test_a_flood_of_events_is_one_line_per_interval_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    events = RateLimitedLog(
        logging.getLogger("cthm.test.rate"), interval=10.0, clock=lambda: now[0]
    )
    with caplog.at_level(logging.INFO, logger="cthm.test.rate"):
        for _ in range(10_000):
            events.event("accept", "socket.accept() out of system resource")
            now[0] += 0.001
        now[0] = 20.0
        events.event("accept", "socket.accept() out of system resource")
        events.event("other", "another kind")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "socket.accept() out of system resource",
        "socket.accept() out of system resource (10000 times in the last 20s)",
        "another kind",
    ]


@pytest.mark.parametrize(
    ("descriptors", "wanted", "expected"),
    [
        (1_048_576, 1000, (1000, 2048)),
        (20_000, 1000, (1000, 2048)),
        (1024, 1000, (1024 - 2 * 128 - DESCRIPTOR_RESERVE, 128)),
        (400, 1000, (400 - 2 * 50 - DESCRIPTOR_RESERVE, 50)),
        (200, 1000, (1, 25)),
    ],
)
def test_the_connection_cap_leaves_the_reserve_free(
    descriptors: int, wanted: int, expected: tuple[int, int]
) -> None:
    assert connection_budget(descriptors, wanted) == expected


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        (f"GET /v2.0/routers/{SECRET} HTTP/1.1", "GET /v2.0/routers/cthm_[redacted] HTTP/1.1"),
        (f"/v2.0/routers?token={SECRET[5:]}&fields=id", "/v2.0/routers?token=[redacted]&fields=id"),
        ("/x?password=hunter2&sort_key=name", "/x?password=[redacted]&sort_key=name"),
        ("/x?api_key=k&key=v&limit=2", "/x?api_key=[redacted]&key=[redacted]&limit=2"),
        ("revoked token_id=1234", "revoked token_id=1234"),
    ],
)
def test_secrets_are_masked_and_the_rest_stays_readable(text: str, masked: str) -> None:
    assert redact(text) == masked


def test_the_filter_keeps_uvicorns_access_log_arguments_in_shape() -> None:
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5555", "GET", f"/v2.0/routers?token={SECRET}", "1.1", 401),
        None,
    )
    assert RedactSecrets().filter(record)
    assert (
        record.getMessage() == '127.0.0.1:5555 - "GET /v2.0/routers?token=[redacted] HTTP/1.1" 401'
    )
    try:
        raise ValueError(f"bad path /v2.0/routers/{SECRET}")
    except ValueError:
        failed = logging.LogRecord("cthm", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    RedactSecrets().filter(failed)
    assert SECRET not in logging.Formatter().format(failed)
