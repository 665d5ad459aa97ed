"""The API against a real store, through the ASGI app (FastAPI's TestClient): every test on a
SQLite file and on a PostgreSQL database (tests/conftest.py's `database_url`; each API of a test
gets a database of its own).

Every API is authenticated as an admin by a real token in its store (`admin=False`: no token);
failed authentications are slowed down by milliseconds only, so tests that fail it stay fast.
Every client records the status of every response; a test that received a 5xx it did not
declare (`api.allow_status(503)`) fails in teardown, so no request anywhere in this suite may
produce a 500 unnoticed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cthm.api import create_app
from cthm.api.auth import Authenticator, FailureThrottle
from cthm.domain import NamespaceCheck
from cthm.settings import Settings
from cthm.store import Store
from support.databases import kind_of

from .support import JSON, Api, ApiFactory, TestClient, issue_token, make_settings, make_store

ADMIN_PROJECT = "admin"


def fast_authenticator() -> Authenticator:
    """The real authenticator with delays of milliseconds (the defaults reach 2 s)."""
    return Authenticator(FailureThrottle(base_delay=0.001, max_delay=0.004))


@pytest.fixture
def api_factory(
    tmp_path: Path, database_url: str, new_database_url: Callable[[], str]
) -> Iterator[ApiFactory]:
    """Builds APIs (each on its own database); all are checked for 5xx in teardown."""
    made: list[tuple[Api, TestClient]] = []
    on_postgres = kind_of(database_url) == "postgresql"

    def build(
        *,
        settings: Settings | None = None,
        store: Store | None = None,
        helper_availability: Callable[[], Any] | None = None,
        app_hook: Callable[[Any], None] | None = None,
        admin: bool = True,
        authenticator: Authenticator | None = None,
        namespace_check: NamespaceCheck | None = None,
        **settings_overrides: Any,
    ) -> Api:
        directory = tmp_path / f"api{len(made)}"
        directory.mkdir()
        if on_postgres and settings is None and store is None:
            settings_overrides.setdefault(
                "database_url", new_database_url() if made else database_url
            )
        chosen = settings or make_settings(directory, **settings_overrides)
        chosen_store = store or make_store(chosen)
        app = create_app(
            chosen,
            chosen_store,
            helper_availability=helper_availability,
            authenticator=authenticator or fast_authenticator(),
            namespace_check=namespace_check,
        )
        if app_hook is not None:
            app_hook(app)
        client = TestClient(app)
        token = issue_token(chosen_store, ADMIN_PROJECT, ["admin"]) if admin else None
        api = Api(client=client, store=chosen_store, token=token, admin_token=token)

        def record(response: httpx.Response) -> None:
            api.statuses.append(
                (response.request.method, str(response.request.url), response.status_code)
            )

        client.event_hooks = {"request": [], "response": [record]}
        made.append((api, client))
        return api

    yield build
    failures = []
    for api, client in made:
        client.close()
        api.store.close()
        failures += [s for s in api.statuses if s[2] >= 500 and s[2] not in api.allowed_5xx]
    assert not failures, f"requests answered with a server error: {failures}"


@pytest.fixture
def api(api_factory: ApiFactory) -> Api:
    return api_factory()


@pytest.fixture
def router(api: Api) -> JSON:
    return api.create_router(name="edge", project_id="p1")
