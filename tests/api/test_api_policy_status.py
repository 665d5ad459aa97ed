"""PUT /v2.0/routers/{id}/status: an agent reports what the kernel holds.

Statuses are written only for the revision the agent applied (a stale report never overwrites a
newer change's PENDING), only for bindings of the router in the path, and the answer says which
were written. The body is strict. Who may call it is in the policy matrix; here: what it does.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from cthm.domain import InvalidInput, Status

from .support import JSON, Api, ApiFactory, error_of, helpers_url


@pytest.fixture
def admin(api_factory: ApiFactory) -> Api:
    return api_factory()


@pytest.fixture
def agent(admin: Api) -> Api:
    return admin.as_token(admin.issue_token("agents", ["agent"]))


def _router_with_bindings(admin: Api, project: str = "pa") -> tuple[JSON, JSON, JSON]:
    router = admin.create_router(name="r", project_id=project)
    ftp = admin.create_helper(router["id"], "tcp", 21, "ftp")
    tftp = admin.create_helper(router["id"], "udp", 69, "tftp")
    current = admin.get(f"/v2.0/routers/{router['id']}").json()["router"]
    return current, ftp, tftp


def _report(router: JSON, *bindings: JSON, status: str = "ACTIVE", **extra: Any) -> JSON:
    return {
        "status": {
            "revision_number": router["revision_number"],
            "status": status,
            "status_reason": "",
            "conntrack_helpers": [
                {
                    "id": b["id"],
                    "revision_number": b["revision_number"],
                    "status": status,
                    "status_reason": "",
                }
                for b in bindings
            ],
            **extra,
        }
    }


def _status_url(router_id: str) -> str:
    return f"/v2.0/routers/{router_id}/status"


def _statuses(api: Api) -> dict[str, tuple[Status, str]]:
    snapshot = api.snapshot()
    result = {r.id: (r.status, r.status_reason) for r in snapshot.routers}
    result.update({b.id: (b.status, b.status_reason) for b in snapshot.bindings})
    return result


def test_an_agent_writes_what_it_verified(admin: Api, agent: Api) -> None:
    router, ftp, tftp = _router_with_bindings(admin)
    body = _report(router, ftp, tftp)
    body["status"]["conntrack_helpers"][1].update(status="ERROR", status_reason="no tftp helper")
    before = admin.snapshot()

    response = agent.put(_status_url(router["id"]), json=body)

    assert response.status_code == 200, response.text
    assert response.json() == {
        "status": {
            "id": router["id"],
            "revision_number": router["revision_number"],
            "written": True,
            "conntrack_helpers": [
                {"id": ftp["id"], "revision_number": 1, "written": True},
                {"id": tftp["id"], "revision_number": 1, "written": True},
            ],
        }
    }
    assert _statuses(admin) == {
        router["id"]: (Status.ACTIVE, ""),
        ftp["id"]: (Status.ACTIVE, ""),
        tftp["id"]: (Status.ERROR, "no tftp helper"),
    }
    after = admin.snapshot()
    # Status is not desired state: no revision moves, nothing else changes.
    assert [r.revision_number for r in after.routers] == [r.revision_number for r in before.routers]
    assert [(b.id, b.port, b.helper, b.revision_number) for b in after.bindings] == [
        (b.id, b.port, b.helper, b.revision_number) for b in before.bindings
    ]


def test_statuses_of_stale_revisions_are_ignored_and_the_answer_says_so(
    admin: Api, agent: Api
) -> None:
    router, ftp, tftp = _router_with_bindings(admin)
    stale = _report(router, ftp, tftp)  # what the agent applied
    changed = admin.put(
        helpers_url(router["id"], ftp["id"]), json={"conntrack_helper": {"port": 2121}}
    )
    assert changed.status_code == 200  # ftp -> revision 2, router -> next revision

    response = agent.put(_status_url(router["id"]), json=stale)

    assert response.status_code == 200, response.text
    written = response.json()["status"]
    assert written["written"] is False
    assert [(b["id"], b["written"]) for b in written["conntrack_helpers"]] == [
        (ftp["id"], False),
        (tftp["id"], True),  # unchanged since: its report is current
    ]
    assert _statuses(admin) == {
        router["id"]: (Status.PENDING, ""),
        ftp["id"]: (Status.PENDING, ""),
        tftp["id"]: (Status.ACTIVE, ""),
    }


def test_only_bindings_of_the_router_in_the_path_are_written(admin: Api, agent: Api) -> None:
    router, ftp, _ = _router_with_bindings(admin)
    _, other_ftp, _ = _router_with_bindings(admin, project="pa")
    unknown = {"id": str(uuid.uuid4()), "revision_number": 1}
    before = _statuses(admin)

    response = agent.put(_status_url(router["id"]), json=_report(router, other_ftp, unknown))

    assert response.status_code == 200, response.text
    assert [b["written"] for b in response.json()["status"]["conntrack_helpers"]] == [False, False]
    after = _statuses(admin)
    assert after[other_ftp["id"]] == before[other_ftp["id"]] == (Status.PENDING, "")
    assert after[router["id"]] == (Status.ACTIVE, "")
    assert after[ftp["id"]] == (Status.PENDING, "")  # not reported


def test_reasons_are_kept_to_one_printable_line(admin: Api, agent: Api) -> None:
    router, ftp, _ = _router_with_bindings(admin)
    body = _report(router, ftp, status="ERROR")
    body["status"]["status_reason"] = "nft:\nError\x1b[31m " + "x" * 2000
    response = agent.put(_status_url(router["id"]), json=body)
    assert response.status_code == 200, response.text
    status, reason = _statuses(admin)[router["id"]]
    assert status == Status.ERROR
    assert reason.startswith("nft: Error [31m x")
    assert reason.isprintable()
    assert len(reason) == 1024


def _bad_bodies(router: JSON, binding: JSON) -> dict[str, Any]:
    good = _report(router, binding)
    item = good["status"]["conntrack_helpers"][0]

    def with_status(**changes: Any) -> JSON:
        return {"status": {**good["status"], **changes}}

    def with_item(**changes: Any) -> JSON:
        return with_status(conntrack_helpers=[{**item, **changes}])

    return {
        "PENDING is not a verified status": with_status(status="PENDING"),
        "statuses are upper case": with_status(status="active"),
        "revision as a string": with_status(revision_number="1"),
        "revision as a boolean": with_status(revision_number=True),
        "revision as a float": with_status(revision_number=1.0),
        "negative revision": with_status(revision_number=-1),
        "revision beyond the bound": with_status(revision_number=2**53 + 1),
        "revision beyond 64 bits": with_status(revision_number=2**64),
        "unknown field": with_status(namespace="qrouter-x"),
        "null reason": with_status(status_reason=None),
        "missing status": {"status": {"revision_number": 1}},
        "not wrapped": good["status"],
        "bindings not a list": with_status(conntrack_helpers={"id": item["id"]}),
        "binding id not a UUID": with_item(id="../../etc"),
        "binding unknown field": with_item(port=21),
        "binding status PENDING": with_item(status="PENDING"),
        "binding revision string": with_item(revision_number="1"),
        "binding reported twice": with_status(conntrack_helpers=[item, item]),
        "binding missing id": with_status(
            conntrack_helpers=[{k: v for k, v in item.items() if k != "id"}]
        ),
    }


def test_the_body_is_strict(admin: Api, agent: Api) -> None:
    router, ftp, _ = _router_with_bindings(admin)
    before = admin.snapshot()
    for case, body in _bad_bodies(router, ftp).items():
        response = agent.put(_status_url(router["id"]), json=body)
        assert response.status_code == 400, (case, response.text)
        assert error_of(response)["type"] in ("HTTPBadRequest", InvalidInput.kind), case
    query = agent.put(_status_url(router["id"]), params={"x": "1"}, json=_report(router, ftp))
    assert query.status_code == 400
    assert admin.snapshot() == before


def test_an_unknown_router_is_not_found(agent: Api) -> None:
    body = {"status": {"revision_number": 1, "status": "ACTIVE"}}
    for router_id in (str(uuid.uuid4()), "not-a-uuid"):
        response = agent.put(_status_url(router_id), json=body)
        assert response.status_code == 404
        assert error_of(response)["type"] == "RouterNotFound"
