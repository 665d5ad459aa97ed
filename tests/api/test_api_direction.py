"""The `direction` field of conntrack helpers: ingress (default, as Neutron) or output.

Create (absent means ingress), show, list, filter, sort, `fields=`, update, the uniqueness per
(router, protocol, port, direction), refused values, the router body, the audit trail and the
OpenAPI document. What the database holds is read back through the store, not the API.
"""

from __future__ import annotations

import pytest

from cthm.domain import Direction

from .support import JSON, Api, error_of, helpers_url


def _create(api: Api, router_id: str, fields: JSON) -> JSON:
    response = api.post(helpers_url(router_id), json={"conntrack_helper": fields})
    assert response.status_code == 201, response.text
    created: JSON = response.json()["conntrack_helper"]
    return created


def _stored_directions(api: Api) -> dict[str, Direction]:
    return {b.id: b.direction for b in api.snapshot().bindings}


def test_absent_direction_is_ingress_and_output_is_kept(api: Api, router: JSON) -> None:
    rid = router["id"]
    ingress = api.create_helper(rid, "tcp", 21, "ftp")
    output = api.create_helper(rid, "tcp", 21, "ftp", direction="output")
    explicit = api.create_helper(rid, "udp", 69, "tftp", direction="ingress")

    assert (ingress["direction"], output["direction"], explicit["direction"]) == (
        "ingress",
        "output",
        "ingress",
    )
    assert _stored_directions(api) == {
        ingress["id"]: Direction.INGRESS,
        output["id"]: Direction.OUTPUT,
        explicit["id"]: Direction.INGRESS,
    }
    shown = api.get(helpers_url(rid, output["id"]))
    assert shown.json() == {"conntrack_helper": output}
    listed = api.get(helpers_url(rid)).json()["conntrack_helpers"]
    assert {b["id"]: b["direction"] for b in listed} == {
        ingress["id"]: "ingress",
        output["id"]: "output",
        explicit["id"]: "ingress",
    }


def test_filter_sort_and_fields_on_direction(api: Api, router: JSON) -> None:
    rid = router["id"]
    in21 = api.create_helper(rid, "tcp", 21, "ftp")
    out21 = api.create_helper(rid, "tcp", 21, "ftp", direction="output")
    out69 = api.create_helper(rid, "udp", 69, "tftp", direction="output")

    def ids(query: str) -> list[str]:
        response = api.get(f"{helpers_url(rid)}?{query}")
        assert response.status_code == 200, response.text
        return [b["id"] for b in response.json()["conntrack_helpers"]]

    assert sorted(ids("direction=output")) == sorted([out21["id"], out69["id"]])
    assert ids("direction=ingress") == [in21["id"]]
    assert sorted(ids("direction=ingress&direction=output")) == sorted(
        [in21["id"], out21["id"], out69["id"]]
    )
    assert ids("direction=output&protocol=tcp") == [out21["id"]]
    assert ids("sort_key=direction&sort_dir=desc&sort_key=port&sort_dir=asc") == [
        out21["id"],
        out69["id"],
        in21["id"],
    ]
    # Pages over a direction sort: the marker carries the direction's place in the order.
    first = api.get(f"{helpers_url(rid)}?sort_key=direction&sort_key=port&limit=2").json()
    assert [b["id"] for b in first["conntrack_helpers"]] == [in21["id"], out21["id"]]
    assert ids(f"sort_key=direction&sort_key=port&marker={out21['id']}") == [out69["id"]]

    narrow = api.get(f"{helpers_url(rid)}?fields=direction&fields=port&direction=output&port=21")
    assert narrow.json() == {"conntrack_helpers": [{"port": 21, "direction": "output"}]}
    shown = api.get(f"{helpers_url(rid, out69['id'])}?fields=direction")
    assert shown.json() == {"conntrack_helper": {"direction": "output"}}


@pytest.mark.parametrize("value", ["sideways", "OUTPUT", "prerouting", ""])
def test_an_unknown_direction_filter_is_400(api: Api, router: JSON, value: str) -> None:
    response = api.get(f"{helpers_url(router['id'])}?direction={value}")
    assert response.status_code == 400
    error = error_of(response)
    assert error["type"] == "InvalidInput"
    assert error["message"] == (
        f"Invalid input for direction: {value!r} is not one of ingress, output"
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("sideways", "Invalid input for direction: 'sideways' is not one of ingress, output"),
        ("Output", "Invalid input for direction: 'Output' is not one of ingress, output"),
        ("", "Invalid input for direction: '' is not one of ingress, output"),
    ],
)
def test_an_unknown_direction_is_400_and_nothing_is_written(
    api: Api, router: JSON, value: str, message: str
) -> None:
    existing = api.create_helper(router["id"], "tcp", 21, "ftp")
    before = api.snapshot()
    fields = {"protocol": "udp", "port": 69, "helper": "tftp", "direction": value}
    created = api.post(helpers_url(router["id"]), json={"conntrack_helper": fields})
    updated = api.put(
        helpers_url(router["id"], existing["id"]),
        json={"conntrack_helper": {"direction": value}},
    )
    for response in (created, updated):
        assert response.status_code == 400
        error = error_of(response)
        assert error["type"] == "InvalidInput"
        assert error["message"] == message
    assert api.snapshot() == before


@pytest.mark.parametrize("value", [1, True, ["output"], {"hook": "output"}])
def test_a_direction_that_is_not_a_string_is_400(api: Api, router: JSON, value: object) -> None:
    existing = api.create_helper(router["id"], "tcp", 21, "ftp")
    before = api.snapshot()
    fields = {"protocol": "udp", "port": 69, "helper": "tftp", "direction": value}
    created = api.post(helpers_url(router["id"]), json={"conntrack_helper": fields})
    updated = api.put(
        helpers_url(router["id"], existing["id"]),
        json={"conntrack_helper": {"direction": value}},
    )
    for response in (created, updated):
        assert response.status_code == 400
        assert "direction" in error_of(response)["message"]
    assert api.snapshot() == before


def test_a_null_direction_on_update_is_400(api: Api, router: JSON) -> None:
    existing = api.create_helper(router["id"], "tcp", 21, "ftp", direction="output")
    response = api.put(
        helpers_url(router["id"], existing["id"]), json={"conntrack_helper": {"direction": None}}
    )
    assert response.status_code == 400
    assert error_of(response)["message"] == (
        "Invalid input for conntrack_helper: direction may not be null"
    )
    assert _stored_directions(api) == {existing["id"]: Direction.OUTPUT}


def test_uniqueness_is_per_direction(api: Api, router: JSON) -> None:
    rid = router["id"]
    ingress = api.create_helper(rid, "tcp", 21, "ftp")
    # The same protocol/port for connections the router itself makes: another connection.
    output = api.create_helper(rid, "tcp", 21, "sip", direction="output")
    before = api.snapshot()

    second_ingress = api.post(
        helpers_url(rid),
        json={"conntrack_helper": {"protocol": "tcp", "port": 21, "helper": "sip"}},
    )
    assert second_ingress.status_code == 409
    error = error_of(second_ingress)
    assert error["type"] == "ConntrackHelperConflict"
    assert error["message"] == (
        f"Router {rid} already has conntrack helper {ingress['id']} for tcp/21: "
        "a connection gets one helper"
    )
    second_output = api.post(
        helpers_url(rid),
        json={
            "conntrack_helper": {
                "protocol": "tcp",
                "port": 21,
                "helper": "ftp",
                "direction": "output",
            }
        },
    )
    assert second_output.status_code == 409
    assert error_of(second_output)["message"] == (
        f"Router {rid} already has conntrack helper {output['id']} for output tcp/21: "
        "a connection gets one helper"
    )
    assert api.snapshot() == before


def test_update_direction(api: Api, router: JSON) -> None:
    rid = router["id"]
    ftp = api.create_helper(rid, "tcp", 21, "ftp")
    other = api.create_helper(rid, "tcp", 2121, "ftp", direction="output")

    moved = api.put(helpers_url(rid, ftp["id"]), json={"conntrack_helper": {"direction": "output"}})
    assert moved.status_code == 200, moved.text
    body = moved.json()["conntrack_helper"]
    assert (body["protocol"], body["port"], body["helper"]) == ("tcp", 21, "ftp")
    assert body["direction"] == "output"
    assert (body["revision_number"], body["status"]) == (2, "PENDING")
    assert _stored_directions(api)[ftp["id"]] is Direction.OUTPUT

    # The other binding onto tcp/21 output: taken now. Onto tcp/21 ingress: free now.
    before = api.snapshot()
    taken = api.put(helpers_url(rid, other["id"]), json={"conntrack_helper": {"port": 21}})
    assert taken.status_code == 409
    assert f"{ftp['id']} for output tcp/21" in error_of(taken)["message"]
    assert api.snapshot() == before
    both = api.put(
        helpers_url(rid, other["id"]),
        json={"conntrack_helper": {"port": 21, "direction": "ingress"}},
    )
    assert both.status_code == 200, both.text
    assert (
        both.json()["conntrack_helper"]["port"],
        both.json()["conntrack_helper"]["direction"],
    ) == (
        21,
        "ingress",
    )

    # The direction it already has: no change, no new revision.
    same = api.put(helpers_url(rid, ftp["id"]), json={"conntrack_helper": {"direction": "output"}})
    assert same.json()["conntrack_helper"]["revision_number"] == 2


def test_router_body_shows_each_helpers_direction(api: Api, router: JSON) -> None:
    rid = router["id"]
    ingress = api.create_helper(rid, "tcp", 21, "ftp")
    output = api.create_helper(rid, "tcp", 21, "ftp", direction="output")
    expected = [
        {
            "id": ingress["id"],
            "protocol": "tcp",
            "port": 21,
            "helper": "ftp",
            "direction": "ingress",
        },
        {"id": output["id"], "protocol": "tcp", "port": 21, "helper": "ftp", "direction": "output"},
    ]
    shown = api.get(f"/v2.0/routers/{rid}").json()["router"]
    assert shown["conntrack_helpers"] == expected
    listed = api.get("/v2.0/routers").json()["routers"]
    assert [r["conntrack_helpers"] for r in listed if r["id"] == rid] == [expected]


def test_audit_events_record_the_direction(api: Api, router: JSON) -> None:
    rid = router["id"]
    created = api.create_helper(rid, "udp", 69, "tftp", direction="output")
    api.put(helpers_url(rid, created["id"]), json={"conntrack_helper": {"direction": "ingress"}})
    events = api.get(f"/v2.0/audit_events?target_id={created['id']}").json()["audit_events"]
    by_action = {e["action"]: e for e in events}
    assert by_action["create_router_conntrack_helper"]["after"]["direction"] == "output"
    update = by_action["update_router_conntrack_helper"]
    assert (update["before"]["direction"], update["after"]["direction"]) == ("output", "ingress")


def test_the_openapi_document_declares_direction(api: Api) -> None:
    schemas = api.get("/openapi.json").json()["components"]["schemas"]
    create = schemas["ConntrackHelperCreate"]["properties"]["direction"]
    assert create["enum"] == ["ingress", "output"]
    assert create["default"] == "ingress"
    assert "direction" not in schemas["ConntrackHelperCreate"].get("required", [])
    update = schemas["ConntrackHelperUpdate"]["properties"]["direction"]
    assert [v.get("enum") for v in update["anyOf"]] == [["ingress", "output"], None]
    assert "direction" in schemas["ConntrackHelperPublic"]["required"]
    assert "direction" in schemas["ConntrackHelperSummary"]["required"]
