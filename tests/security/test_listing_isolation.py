"""Listings never tell a caller anything about another project's items (issue 10, item 1).

The reported attack: as project A's member, `GET /v2.0/routers?marker=<B's router id>` answered
200 while an unknown id answered 400, and with `sort_key=name&fields=id` a binary search
recovered B's router's name. Here a foreign id anywhere in a listing's query string (marker,
filters, sort, fields, page_reverse) must get exactly the answer a fresh unknown id gets, and a
foreign marker is recorded in the audit trail as a denied attempt.

Runs the real app over a real SQLite file store in process (FastAPI's TestClient).
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cthm.api import create_app
from cthm.api.auth import TOKEN_HEADER, Authenticator, FailureThrottle
from cthm.api.query import FIELDS, PAGING, SORTING, ResourceSpec
from cthm.api.routes.agents import AGENT_SPEC
from cthm.api.routes.audit_events import AUDIT_EVENT_SPEC
from cthm.api.routes.auth_tokens import AUTH_TOKEN_SPEC
from cthm.api.schemas import BINDING_SPEC, ROUTER_SPEC
from cthm.domain import parse_roles
from cthm.settings import Settings
from cthm.store import Store

with warnings.catch_warnings():  # starlette suggests httpx2; httpx is what the project uses
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

OWN, OTHER = "pa", "pb"
REQUEST_ID = "x-openstack-request-id"
Params = Sequence[tuple[str, str]]


@dataclass
class World:
    client: TestClient
    tokens: dict[str, str]  # role (admin, member, reader of OWN) -> secret
    mine: dict[str, Any]
    my_bindings: list[dict[str, Any]]
    theirs: dict[str, Any]
    their_bindings: list[dict[str, Any]]
    their_other: dict[str, Any]  # B's second router: a path that is not the probed id
    their_token_id: str

    def get(self, role: str, url: str, params: Params = ()) -> httpx.Response:
        response: httpx.Response = self.client.get(
            url, params=list(params), headers={TOKEN_HEADER: self.tokens[role]}
        )
        assert response.status_code < 500, response.text
        return response

    def foreign_ids(self) -> list[str]:
        return [
            self.theirs["id"],
            *(b["id"] for b in self.their_bindings),
            self.their_token_id,
        ]

    def denied_events(self) -> dict[str, dict[str, Any]]:
        listed = self.get("admin", "/v2.0/audit_events", [("outcome", "denied"), ("limit", "0")])
        assert listed.status_code == 200, listed.text
        return {e["request_id"]: e for e in listed.json()["audit_events"]}


def _issue(store: Store, project_id: str, role: str) -> tuple[str, str]:
    with store.unit_of_work() as repo:
        token, secret = repo.tokens.create(
            project_id=project_id, roles=parse_roles([role]), expires_at=None
        )
    return token.id, secret


def _created(response: httpx.Response, key: str) -> dict[str, Any]:
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()[key]
    return body


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Project A (the caller's) and project B, each with routers and bindings. Read-only for
    the tests below (they add only audit rows), so one world serves the whole module."""
    directory: Path = tmp_path_factory.mktemp("listing")
    settings = Settings(data_dir=directory, database_url=None, agent_enabled=False)
    store = Store(settings.effective_database_url)
    store.migrate()
    fast = Authenticator(FailureThrottle(base_delay=0.001, max_delay=0.004))
    client = TestClient(create_app(settings, store, authenticator=fast))
    _, admin = _issue(store, "admin", "admin")
    _, member = _issue(store, OWN, "member")
    _, reader = _issue(store, OWN, "reader")
    their_token_id, _ = _issue(store, OTHER, "member")
    headers = {TOKEN_HEADER: admin}

    def router(name: str, project_id: str) -> dict[str, Any]:
        body = {"router": {"name": name, "project_id": project_id}}
        return _created(client.post("/v2.0/routers", json=body, headers=headers), "router")

    def binding(router_id: str, protocol: str, port: int, helper: str) -> dict[str, Any]:
        body = {"conntrack_helper": {"protocol": protocol, "port": port, "helper": helper}}
        url = f"/v2.0/routers/{router_id}/conntrack_helpers"
        return _created(client.post(url, json=body, headers=headers), "conntrack_helper")

    # Names on both sides of B's ("m"), as in the binary search of the report.
    mine = router("a-first", OWN)
    router("z-last", OWN)
    theirs = router("m-secret", OTHER)
    their_other = router("n-other", OTHER)
    my_bindings = [binding(mine["id"], "tcp", 21, "ftp"), binding(mine["id"], "udp", 69, "tftp")]
    their_bindings = [
        binding(theirs["id"], "tcp", 21, "ftp"),
        binding(theirs["id"], "udp", 69, "tftp"),
    ]
    yield World(
        client,
        {"admin": admin, "member": member, "reader": reader},
        mine,
        my_bindings,
        theirs,
        their_bindings,
        their_other,
        their_token_id,
    )
    client.close()
    store.close()


def _headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.lower() != REQUEST_ID}


def _assert_identical(probe: httpx.Response, control: httpx.Response) -> None:
    """Byte for byte: status, headers (but the request id) and body."""
    assert probe.status_code == control.status_code, (probe.text, control.text)
    assert probe.content == control.content
    assert _headers(probe) == _headers(control)


# --- the reported attack -----------------------------------------------------------------------


@pytest.mark.parametrize("role", ["member", "reader"])
@pytest.mark.parametrize(
    "extra",
    [
        [],
        [("sort_key", "name"), ("fields", "id")],
        [("sort_key", "name"), ("sort_dir", "desc"), ("fields", "id"), ("limit", "1")],
        [("page_reverse", "true")],
        [("sort_key", "name"), ("fields", "id"), ("page_reverse", "true")],
    ],
)
def test_a_foreign_router_marker_is_answered_as_an_unknown_one_and_audited(
    world: World, role: str, extra: list[tuple[str, str]]
) -> None:
    theirs, unknown = world.theirs["id"], str(uuid.uuid4())
    probe = world.get(role, "/v2.0/routers", [("marker", theirs), *extra])
    control = world.get(role, "/v2.0/routers", [("marker", unknown), *extra])

    assert probe.status_code == 400, probe.text
    _assert_identical(probe, control)
    assert "m-secret" not in probe.text

    events = world.denied_events()
    event = events.get(probe.headers[REQUEST_ID])
    assert event is not None, "the foreign marker is not in the audit trail as denied"
    assert event["outcome"] == "denied"
    assert event["status_code"] == 400
    assert event["action"] == "get_router"
    assert event["target_type"] == "router"
    assert event["target_id"] == theirs
    assert event["target_project_id"] == OTHER
    assert event["project_id"] == OWN
    # An unknown id is a mistake, not a probe: no denied record.
    assert control.headers[REQUEST_ID] not in events


def test_an_own_marker_still_pages(world: World) -> None:
    first = world.get("member", "/v2.0/routers", [("sort_key", "name"), ("limit", "1")])
    assert first.status_code == 200, first.text
    (only,) = first.json()["routers"]
    assert only["name"] == "a-first"
    after = world.get(
        "member", "/v2.0/routers", [("sort_key", "name"), ("marker", only["id"]), ("limit", "5")]
    )
    assert after.status_code == 200, after.text
    assert [r["name"] for r in after.json()["routers"]] == ["z-last"]


def test_an_admin_pages_over_every_project(world: World) -> None:
    listed = world.get("admin", "/v2.0/routers", [("marker", world.theirs["id"])])
    assert listed.status_code == 200, listed.text
    assert world.theirs["id"] not in {r["id"] for r in listed.json()["routers"]}


# --- bindings ----------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["member", "reader"])
def test_a_foreign_binding_marker_under_an_own_router_is_unknown_and_audited(
    world: World, role: str
) -> None:
    url = f"/v2.0/routers/{world.mine['id']}/conntrack_helpers"
    theirs, unknown = world.their_bindings[0]["id"], str(uuid.uuid4())
    for extra in ([], [("sort_key", "port"), ("fields", "id"), ("page_reverse", "true")]):
        probe = world.get(role, url, [("marker", theirs), *extra])
        control = world.get(role, url, [("marker", unknown), *extra])
        assert probe.status_code == 400, probe.text
        _assert_identical(probe, control)

        events = world.denied_events()
        event = events.get(probe.headers[REQUEST_ID])
        assert event is not None, "the foreign marker is not in the audit trail as denied"
        assert event["target_type"] == "conntrack_helper"
        assert event["target_id"] == theirs
        assert event["target_project_id"] == OTHER
        assert event["project_id"] == OWN
        assert control.headers[REQUEST_ID] not in events


@pytest.mark.parametrize("role", ["member", "reader"])
def test_bindings_under_a_foreign_router_are_unknown_whatever_the_query(
    world: World, role: str
) -> None:
    url = f"/v2.0/routers/{world.theirs['id']}/conntrack_helpers"
    for params in (
        [("marker", world.their_bindings[0]["id"])],
        [("marker", world.my_bindings[0]["id"])],
        [("id", world.their_bindings[0]["id"]), ("fields", "port")],
        [("sort_key", "port"), ("limit", "1")],
    ):
        probe = world.get(role, url, params)
        control = world.get(
            role, url, [(k, str(uuid.uuid4()) if k == "marker" else v) for k, v in params]
        )
        assert probe.status_code == 404, probe.text
        _assert_identical(probe, control)


# --- every listing: the property ---------------------------------------------------------------


@dataclass(frozen=True)
class Listing:
    name: str
    spec: ResourceSpec
    extra_keys: tuple[str, ...] = ()

    def url(self, world: World) -> str:
        if self.name == "conntrack_helpers (own router)":
            return f"/v2.0/routers/{world.mine['id']}/conntrack_helpers"
        if self.name == "conntrack_helpers (foreign router)":
            return f"/v2.0/routers/{world.their_other['id']}/conntrack_helpers"
        return f"/v2.0/{self.spec.collection}"


LISTINGS = (
    Listing("routers", ROUTER_SPEC),
    Listing("conntrack_helpers (own router)", BINDING_SPEC),
    Listing("conntrack_helpers (foreign router)", BINDING_SPEC),
    Listing("auth_tokens", AUTH_TOKEN_SPEC),
    Listing("audit_events", AUDIT_EVENT_SPEC, ("since", "until")),
    Listing("agents", AGENT_SPEC),
)

SLOT = "\x00slot"  # where the foreign (or the unknown) id goes
PLAIN_VALUES = (
    "asc",
    "desc",
    "true",
    "false",
    "0",
    "1",
    "2",
    "21",
    "69",
    "tcp",
    "udp",
    "ftp",
    "ingress",
    "ACTIVE",
    "PENDING",
    OWN,
    OTHER,
    "a-first",
    "m-secret",
    "2020-01-01T00:00:00Z",
)


@st.composite
def _queries(draw: st.DrawFn) -> tuple[Listing, list[tuple[str, str]]]:
    listing = draw(st.sampled_from(LISTINGS))
    keys = sorted({*listing.spec.fields, FIELDS, *SORTING, *PAGING, *listing.extra_keys})
    names = sorted(listing.spec.fields)
    value = st.one_of(
        st.just(SLOT),
        st.sampled_from(PLAIN_VALUES),
        st.sampled_from(names),
        st.sampled_from(["own router", "own binding"]),
    )
    params = draw(st.lists(st.tuples(st.sampled_from(keys), value), max_size=4))
    # The id goes where probes put it most: the marker, or an id-like filter.
    slot_key = draw(st.one_of(st.just("marker"), st.sampled_from(keys)))
    at = draw(st.integers(0, len(params)))
    params.insert(at, (slot_key, SLOT))
    return listing, params


def _filled(world: World, params: Params, slot: str) -> list[tuple[str, str]]:
    own = {"own router": world.mine["id"], "own binding": world.my_bindings[0]["id"]}
    return [(k, slot if v == SLOT else own.get(v, v)) for k, v in params]


def _normalised(response: httpx.Response, value: str) -> tuple[int, str]:
    # The caller's own input may come back (an error message, a page link): never the object.
    return response.status_code, response.text.replace(value, "<ID>")


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@example(query=(LISTINGS[0], [("marker", SLOT)]), which=0, role="member")
@example(
    query=(LISTINGS[0], [("sort_key", "name"), ("marker", SLOT), ("fields", "id")]),
    which=0,
    role="reader",
)
@given(
    query=_queries(),
    which=st.integers(0, 3),
    role=st.sampled_from(["member", "reader"]),
)
def test_a_foreign_id_anywhere_in_a_listing_query_is_an_unknown_id(
    world: World, query: tuple[Listing, list[tuple[str, str]]], which: int, role: str
) -> None:
    listing, params = query
    foreign = world.foreign_ids()[which]
    unknown = str(uuid.uuid4())
    url = listing.url(world)
    probe = world.get(role, url, _filled(world, params, foreign))
    control = world.get(role, url, _filled(world, params, unknown))
    assert _normalised(probe, foreign) == _normalised(control, unknown), (listing.name, params)
    assert _headers(probe).keys() == _headers(control).keys()
