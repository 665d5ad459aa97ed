"""A write request is one transaction, begun by authentication (the token is read in it) and
ended by its route: what never reaches a route leaves nothing open, and a slow body is read
before the transaction begins."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cthm.domain import new_router
from cthm.testing.service import ServerProcess
from support.databases import sqlite_only

from .support import Api, ApiFactory

BAD_TOKEN = "cthm_" + "Z" * 43
WRITE_WAIT = 10.0  # seconds a store write may take here; a transaction left open holds it 30


@pytest.fixture
def api(api_factory: ApiFactory) -> Api:
    return api_factory()


def write_directly(api: Api) -> bool:
    """Whether a write through the store, beside the API, commits within WRITE_WAIT (a write
    transaction the API left open would hold SQLite's write lock)."""
    done = threading.Event()

    def work() -> None:
        with api.store.unit_of_work() as repo:
            repo.add_router(new_router(name="beside", project_id="p-beside"))
        done.set()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(WRITE_WAIT)
    return done.is_set()


def test_writes_refused_before_their_route_leave_no_transaction_open(api: Api) -> None:
    token = api.issue_token("p1", ["member"])
    refused = [
        (api.post("/v2.0/no-such-thing", json={}), 404),
        (api.request("PATCH", "/v2.0/routers", json={}), 405),
        (api.post("/v2.0/routers", content=b"{not json", headers=_json()), 400),
        (api.post("/v2.0/routers", json={"router": {"name": 7}}), 400),
        (api.post("/v2.0/routers", content=b"{}", headers={"Content-Type": "text/plain"}), 400),
        (api.as_token(BAD_TOKEN).post("/v2.0/routers", json={"router": {"name": "x"}}), 401),
        (api.as_token(None).delete("/v2.0/routers/x"), 401),
        (api.as_token(token).post("/v2.0/routers", json={"router": {"project_id": "p2"}}), 403),
    ]
    assert [r.status_code for r, _ in refused] == [code for _, code in refused]
    assert write_directly(api)
    created = api.post("/v2.0/routers", json={"router": {"name": "after"}})
    assert created.status_code == 201, created.text
    names = {r["name"] for r in api.get("/v2.0/routers").json()["routers"]}
    assert names == {"beside", "after"}  # none of the refused requests changed anything


def test_a_write_and_its_audit_event_name_the_token_that_made_it(api: Api) -> None:
    router = api.create_router(project_id="p1")
    user = api.as_token(api.issue_token("p1", ["member"]))
    binding = user.create_helper(router["id"])
    token_id = api.get("/v2.0/auth_tokens", params={"project_id": "p1"}).json()["auth_tokens"][0]
    events = api.get(
        "/v2.0/audit_events",
        params={"action": "create_router_conntrack_helper", "target_id": binding["id"]},
    ).json()["audit_events"]
    assert [(e["token_id"], e["project_id"], e["outcome"]) for e in events] == [
        (token_id["id"], "p1", "success")
    ]


def test_a_revoked_token_cannot_write_at_its_next_request(api: Api) -> None:
    router = api.create_router(project_id="p1")
    user = api.as_token(api.issue_token("p1", ["member"]))
    user.create_helper(router["id"], port=21)
    token_id = api.get("/v2.0/auth_tokens", params={"project_id": "p1"}).json()["auth_tokens"][0]
    assert api.delete(f"/v2.0/auth_tokens/{token_id['id']}").status_code == 204
    body = {"conntrack_helper": {"protocol": "tcp", "port": 2121, "helper": "ftp"}}
    refused = user.post(f"/v2.0/routers/{router['id']}/conntrack_helpers", json=body)
    assert refused.status_code == 401
    listed = api.get(f"/v2.0/routers/{router['id']}/conntrack_helpers").json()
    assert [b["port"] for b in listed["conntrack_helpers"]] == [21]


@sqlite_only("moves the SQLite file away between the route's work and its commit")
def test_a_commit_that_fails_after_the_route_is_the_answer(
    api_factory: ApiFactory, tmp_path: Path
) -> None:
    """The route commits in its own thread (deps.ends_transaction): a commit refused there (the
    database file moved away meanwhile) is a 503, and nothing was stored."""
    moved: list[tuple[Path, Path]] = []

    def move_the_file_away(namespace: str, routers: object) -> None:
        del namespace, routers
        database = Path(str(served.store.url).removeprefix("sqlite:///"))
        away = tmp_path / "away.db"
        database.rename(away)
        moved.append((away, database))

    served = api_factory(namespace_check=move_the_file_away)
    served.allow_status(503)
    refused = served.post("/v2.0/routers", json={"router": {"name": "lost"}})
    assert refused.status_code == 503, refused.text
    assert moved
    away, database = moved[0]
    away.rename(database)
    assert served.get("/v2.0/routers").json()["routers"] == []


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("write-transaction")
    with ServerProcess(base / "data", base / "logs", args=("--no-agent",)) as process:
        yield process


def test_a_slow_body_is_read_before_its_transaction_begins(server: ServerProcess) -> None:
    """A client that sends its headers and only part of its body holds nothing: another write
    goes through meanwhile (it would wait for the slow one if the transaction had begun)."""
    body = b'{"router": {"name": "slow"}}'
    head = (
        "POST /v2.0/routers HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"X-Auth-Token: {server.admin_token}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as slow:
        slow.sendall(head + body[:5])
        fast = httpx.post(
            f"{server.url}/v2.0/routers",
            json={"router": {"name": "fast"}},
            headers=server.auth_headers(),
            timeout=3.0,  # the slow client may take 5 s (the header timeout) before it is cut
        )
        assert fast.status_code == 201, fast.text
        slow.sendall(body[5:])
        answer = _read_all(slow)
    assert answer.startswith(b"HTTP/1.1 201"), answer[:200]


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    for _ in range(1000):  # bounded: the server closes the connection after its answer
        chunk = sock.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _json() -> dict[str, str]:
    return {"Content-Type": "application/json"}
