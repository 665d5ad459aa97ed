"""Security headers on every response: success, client error, unknown route, server-made 413."""

from __future__ import annotations

import pytest

from cthm.api.app import security_headers

from .support import Api

EXPECTED = dict(security_headers(tls=False))


@pytest.mark.parametrize(
    ("method", "url", "kwargs"),
    [
        ("GET", "/healthz", {}),
        ("GET", "/", {}),
        ("GET", "/v2.0/routers", {}),
        ("GET", "/v2.0/routers/not-a-uuid", {}),
        ("GET", "/no/such/route", {}),
        (
            "POST",
            "/v2.0/routers",
            {"content": b"{not json", "headers": {"Content-Type": "application/json"}},
        ),
        (
            "POST",
            "/v2.0/routers",
            {"content": b"x" * 70000, "headers": {"Content-Type": "application/json"}},
        ),
    ],
)
def test_every_response_carries_the_security_headers(
    api: Api, method: str, url: str, kwargs: dict[str, object]
) -> None:
    response = api.request(method, url, **kwargs)
    for name, value in EXPECTED.items():
        assert response.headers.get(name) == value, (name, response.status_code)
    assert "Strict-Transport-Security" not in response.headers
    assert "server" not in {k.lower() for k in response.headers}


def test_hsts_only_when_tls_is_configured() -> None:
    headers = dict(security_headers(tls=True))
    assert headers["Strict-Transport-Security"].startswith("max-age=")
    assert "Strict-Transport-Security" not in dict(security_headers(tls=False))
