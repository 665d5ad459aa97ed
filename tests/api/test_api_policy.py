"""The policy module on its own: rules, visibility, high-risk helpers and what a denial carries.

The same rules over the real API, with real tokens, are in test_api_policy_matrix.py.
"""

from __future__ import annotations

import pytest

from cthm.api import policy
from cthm.api.errors import Forbidden
from cthm.api.principal import Principal
from cthm.domain import HelperCatalog, Protocol, Role

ADMIN = Principal(token_id="t0", project_id="pa", roles=frozenset({Role.ADMIN}))
MEMBER = Principal(token_id="t1", project_id="pa", roles=frozenset({Role.MEMBER}))
READER = Principal(token_id="t2", project_id="pa", roles=frozenset({Role.READER}))
AGENT = Principal(token_id="t3", project_id="agents", roles=frozenset({Role.AGENT}))
# AuthToken roles are Role members; a principal built from plain names must behave the same.
MEMBER_BY_NAME = Principal(token_id="t4", project_id="pa", roles=frozenset({"member"}))

CATALOG = HelperCatalog()


def test_every_action_has_a_rule_and_unknown_actions_fail_closed() -> None:
    for action, rule in policy.POLICY.items():
        assert isinstance(rule, policy.Rule), action
        assert policy.allowed(ADMIN, action, "any-project")
    with pytest.raises(LookupError):
        policy.allowed(ADMIN, "reboot_host", None)
    with pytest.raises(LookupError):
        policy.enforce(ADMIN, "reboot_host", None)


@pytest.mark.parametrize(
    ("principal", "action", "target", "expected"),
    [
        (MEMBER, "create_router", "pa", False),  # a router is a namespace on a host
        (MEMBER, "delete_router", "pa", False),
        (MEMBER, "update_router", "pa", True),
        (MEMBER, "update_router", "pb", False),
        (MEMBER_BY_NAME, "update_router", "pa", True),
        (MEMBER, "get_router", "pa", True),
        (MEMBER, "get_router", None, False),  # every project: not for a project's member
        (MEMBER, "create_router_conntrack_helper", "pa", True),
        (MEMBER, "create_router_conntrack_helper", "pb", False),
        (MEMBER, "update_router_status", "pa", False),
        (READER, "get_router_conntrack_helper", "pa", True),
        (READER, "get_router_conntrack_helper", "pb", False),
        (READER, "update_router", "pa", False),
        (READER, "delete_router_conntrack_helper", "pa", False),
        (AGENT, "get_router", None, True),
        (AGENT, "get_router_conntrack_helper", "pb", True),
        (AGENT, "update_router_status", "pb", True),
        (AGENT, "update_router", "agents", False),
        (AGENT, "create_router_conntrack_helper", "agents", False),
        (AGENT, "delete_router", "pb", False),
        (READER, "get_conntrack_helper_catalog", None, True),
        (AGENT, "get_conntrack_helper_catalog", None, True),
    ],
)
def test_rules(principal: Principal, action: str, target: str | None, expected: bool) -> None:
    assert policy.allowed(principal, action, target) is expected
    if expected:
        policy.enforce(principal, action, target)
    else:
        with pytest.raises(Forbidden) as raised:
            policy.enforce(principal, action, target)
        assert raised.value.message == f"rule:{action} is disallowed by policy"


def test_a_denial_carries_its_target_for_the_audit_trail() -> None:
    with pytest.raises(Forbidden) as raised:
        policy.enforce(READER, "update_router", "pa", target_type="router", target_id="r-1")
    denial = raised.value
    assert (denial.action, denial.target_type, denial.target_id, denial.target_project_id) == (
        "update_router",
        "router",
        "r-1",
        "pa",
    )


def test_visibility_and_the_scope_of_listings() -> None:
    for principal in (ADMIN, AGENT):
        assert policy.list_scope(principal) is None
        assert policy.can_see(principal, "pb")
    for principal in (MEMBER, READER, MEMBER_BY_NAME):
        assert policy.list_scope(principal) == "pa"
        assert policy.can_see(principal, "pa")
        assert not policy.can_see(principal, "pb")


@pytest.mark.parametrize(
    ("allowed_list", "helper", "protocol", "expected"),
    [
        ([], "sip", Protocol.UDP, False),
        (["sip"], "sip", Protocol.UDP, True),
        (["*"], "irc", Protocol.TCP, True),
        (["irc"], "sip", Protocol.TCP, False),
        (["h323"], "h323", Protocol.UDP, True),
        (["h323"], "RAS", Protocol.UDP, True),  # the alias covers its kernel helpers
        (["h323"], "Q.931", Protocol.TCP, True),
        (["RAS"], "h323", Protocol.UDP, True),  # the kernel name covers the alias
        (["RAS"], "h323", Protocol.TCP, False),  # h323 over tcp is Q.931
        (["Q.931"], "RAS", Protocol.UDP, False),
        (["SIP"], "sip", Protocol.UDP, False),  # names as the catalog spells them
    ],
)
def test_what_the_operator_allows(
    allowed_list: list[str], helper: str, protocol: Protocol, expected: bool
) -> None:
    spec = CATALOG.resolve(helper, protocol)
    settings = {"pa": allowed_list, "pb": ["*"]}
    assert policy.operator_allows_helper(settings, "pa", helper, spec) is expected
    assert policy.operator_allows_helper(settings, "pc", helper, spec) is False


def _enforce_helper(
    principal: Principal, helper: str, protocol: Protocol, allowed: dict[str, list[str]]
) -> None:
    policy.enforce_helper(
        principal,
        "create_router_conntrack_helper",
        requested=helper,
        spec=CATALOG.resolve(helper, protocol),
        project_id="pa",
        high_risk_projects=allowed,
        target_type="conntrack_helper",
        target_id=None,
    )


def test_high_risk_helpers_are_admin_only_unless_allowed_and_the_refusal_says_why() -> None:
    _enforce_helper(ADMIN, "h323", Protocol.UDP, {})
    _enforce_helper(MEMBER, "h323", Protocol.UDP, {"pa": ["h323"]})
    _enforce_helper(READER, "ftp", Protocol.TCP, {})  # not high-risk: nothing more to pass
    with pytest.raises(Forbidden) as raised:
        _enforce_helper(MEMBER, "h323", Protocol.UDP, {"pb": ["*"]})
    assert raised.value.message == (
        "helper h323 (RAS) is high-risk (NAT slipstreaming, CVE history): admin only unless "
        "the operator allows it for project pa"
    )
    assert raised.value.action == "create_router_conntrack_helper:high_risk_helper"
    assert (raised.value.target_type, raised.value.target_project_id) == ("conntrack_helper", "pa")
    with pytest.raises(Forbidden) as raised:
        _enforce_helper(MEMBER, "sip", Protocol.TCP, {})
    assert raised.value.message.startswith("helper sip is high-risk (NAT slipstreaming")


def test_the_catalog_marks_exactly_sip_h323_and_irc_high_risk() -> None:
    risky = {e.helper for e in CATALOG.entries() if e.spec.high_risk}
    assert risky == {"sip", "h323", "RAS", "Q.931", "irc"}
