"""High-risk helpers (sip, h323 = RAS/Q.931, irc) over the real API: admin-only unless the
operator allows them per project (settings.high_risk_projects), for creating a binding and for
updating one to such a helper. Denials change nothing and are recorded in the audit trail."""

from __future__ import annotations

from typing import Any

import pytest

from .support import JSON, Api, ApiFactory, error_of, helpers_url

PROJECT = "pa"


def _binding(protocol: str, port: int, helper: str) -> JSON:
    return {"conntrack_helper": {"protocol": protocol, "port": port, "helper": helper}}


def _message(helper: str) -> str:
    return (
        f"helper {helper} is high-risk (NAT slipstreaming, CVE history): admin only unless the "
        f"operator allows it for project {PROJECT}"
    )


def _setup(api_factory: ApiFactory, **settings: Any) -> tuple[Api, Api, JSON]:
    """(admin, a member of PROJECT, a router of PROJECT)."""
    admin = api_factory(**settings)
    member = admin.as_token(admin.issue_token(PROJECT, ["member"]))
    return admin, member, admin.create_router(name="edge", project_id=PROJECT)


def _refused(member: Api, admin: Api, method: str, url: str, body: JSON, helper: str) -> None:
    before = admin.snapshot()
    response = member.request(method, url, json=body)
    assert response.status_code == 403, response.text
    error = error_of(response)
    assert error == {"type": "PolicyNotAuthorized", "message": _message(helper), "detail": ""}
    assert admin.snapshot() == before


@pytest.mark.parametrize(
    ("protocol", "port", "helper", "shown"),
    [
        ("udp", 5060, "sip", "sip"),
        ("tcp", 5060, "sip", "sip"),
        ("tcp", 6667, "irc", "irc"),
        ("udp", 1719, "h323", "h323 (RAS)"),
        ("tcp", 1720, "h323", "h323 (Q.931)"),
        ("udp", 1719, "RAS", "RAS"),
        ("tcp", 1720, "Q.931", "Q.931"),
    ],
)
def test_a_member_may_not_bind_a_high_risk_helper_by_default(
    api_factory: ApiFactory, protocol: str, port: int, helper: str, shown: str
) -> None:
    admin, member, router = _setup(api_factory)
    url = helpers_url(router["id"])
    _refused(member, admin, "POST", url, _binding(protocol, port, helper), shown)
    # The same binding is the admin's to make; and the member may bind what is not high-risk.
    assert admin.post(url, json=_binding(protocol, port, helper)).status_code == 201
    assert member.post(url, json=_binding("udp", 69, "tftp")).status_code == 201


def test_the_operator_allows_high_risk_helpers_per_project_and_per_helper(
    api_factory: ApiFactory,
) -> None:
    admin, member, router = _setup(
        api_factory, high_risk_projects={PROJECT: ["sip", "RAS"], "pb": ["*"]}
    )
    url = helpers_url(router["id"])
    assert member.post(url, json=_binding("udp", 5060, "sip")).status_code == 201
    assert member.post(url, json=_binding("udp", 1719, "h323")).status_code == 201  # h323/udp: RAS
    _refused(member, admin, "POST", url, _binding("tcp", 1720, "h323"), "h323 (Q.931)")
    _refused(member, admin, "POST", url, _binding("tcp", 6667, "irc"), "irc")  # pb's "*" only

    # A member of a project the operator allows nothing for is still refused.
    other = admin.create_router(name="other", project_id="pc")
    member_c = admin.as_token(admin.issue_token("pc", ["member"]))
    before = admin.snapshot()
    refused = member_c.post(helpers_url(other["id"]), json=_binding("udp", 5060, "sip"))
    assert refused.status_code == 403
    assert "allows it for project pc" in error_of(refused)["message"]
    assert admin.snapshot() == before


def test_a_star_allows_every_high_risk_helper_for_the_project(api_factory: ApiFactory) -> None:
    admin, member, router = _setup(api_factory, high_risk_projects={PROJECT: ["*"]})
    url = helpers_url(router["id"])
    for protocol, port, helper in (
        ("udp", 5060, "sip"),
        ("tcp", 6667, "irc"),
        ("tcp", 1720, "h323"),
    ):
        response = member.post(url, json=_binding(protocol, port, helper))
        assert response.status_code == 201, response.text
    # Allowing a helper does not make a reader a member.
    reader = admin.as_token(admin.issue_token(PROJECT, ["reader"]))
    refused = reader.post(url, json=_binding("tcp", 5061, "sip"))
    assert refused.status_code == 403
    assert (
        error_of(refused)["message"]
        == "rule:create_router_conntrack_helper is disallowed by policy"
    )


def test_updating_to_a_high_risk_helper_or_one_that_stays_high_risk(
    api_factory: ApiFactory,
) -> None:
    admin, member, router = _setup(api_factory)
    ftp = admin.create_helper(router["id"], "tcp", 21, "ftp")
    sip = admin.create_helper(router["id"], "udp", 5060, "sip")
    ftp_url, sip_url = helpers_url(router["id"], ftp["id"]), helpers_url(router["id"], sip["id"])

    _refused(member, admin, "PUT", ftp_url, {"conntrack_helper": {"helper": "irc"}}, "irc")
    _refused(member, admin, "PUT", ftp_url, {"conntrack_helper": {"helper": "sip"}}, "sip")
    # Moving a sip binding to another port still binds sip: the admin's decision too.
    _refused(member, admin, "PUT", sip_url, {"conntrack_helper": {"port": 5080}}, "sip")

    # Away from high-risk, and an ordinary change, are the member's to make; so is removing one.
    ordinary = member.put(ftp_url, json={"conntrack_helper": {"port": 2121}})
    assert ordinary.status_code == 200, ordinary.text
    away = member.put(sip_url, json={"conntrack_helper": {"helper": "tftp", "port": 69}})
    assert away.status_code == 200, away.text
    assert away.json()["conntrack_helper"]["helper"] == "tftp"
    assert admin.put(ftp_url, json={"conntrack_helper": {"helper": "sip"}}).status_code == 200
    assert member.delete(ftp_url).status_code == 204


def test_a_refusal_is_recorded_with_its_target(api_factory: ApiFactory) -> None:
    admin, member, router = _setup(api_factory)
    refused = member.post(helpers_url(router["id"]), json=_binding("udp", 5060, "sip"))
    assert refused.status_code == 403
    events = admin.get("/v2.0/audit_events", params={"outcome": "denied"}).json()["audit_events"]
    [event] = [e for e in events if e["request_id"] == refused.headers["X-Openstack-Request-Id"]]
    assert event["action"] == "create_router_conntrack_helper:high_risk_helper"
    assert (event["target_type"], event["target_project_id"]) == ("conntrack_helper", PROJECT)
    assert event["status_code"] == 403
