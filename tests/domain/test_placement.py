"""Several hosts in the domain: one status out of many hosts' reports, host names, agent ids."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from cthm.domain import (
    AGENT_ID_NAMESPACE,
    AgentRecord,
    HostStatus,
    InvalidInput,
    Status,
    aggregate_status,
    node_agent_id,
    validate_host,
)
from cthm.domain.validation import STATUS_REASON_MAX

BEAT = datetime(2026, 12, 4, 20, 0, 0, tzinfo=UTC)
ROUTER = "namespace qrouter-x"


def host(
    name: str,
    revision: int | None = 3,
    status: Status | None = Status.ACTIVE,
    reason: str = "",
    *,
    alive: bool = True,
) -> HostStatus:
    return HostStatus(name, revision, status, reason, alive, BEAT)


# --- aggregate_status -----------------------------------------------------------------------


def test_no_host_is_pending_and_a_router_says_no_agent_reports_its_namespace() -> None:
    assert aggregate_status(3, [], what=ROUTER) == (
        Status.PENDING,
        "no agent reports namespace qrouter-x on its host",
    )


def test_no_host_is_pending_with_no_reason_for_a_binding() -> None:
    assert aggregate_status(3, [], what="") == (Status.PENDING, "")


def test_one_active_host_keeps_its_reason_unprefixed() -> None:
    assert aggregate_status(3, [host("a", reason="helper ok")], what=ROUTER) == (
        Status.ACTIVE,
        "helper ok",
    )


def test_every_host_active_at_the_revision_is_active_with_notes_prefixed() -> None:
    hosts = [host("b", reason="note b"), host("a")]
    assert aggregate_status(3, hosts, what=ROUTER) == (Status.ACTIVE, "host b: note b")


def test_a_host_behind_makes_it_pending_and_is_named() -> None:
    hosts = [host("a"), host("b", revision=2)]
    assert aggregate_status(3, hosts, what=ROUTER) == (
        Status.PENDING,
        "host b: not yet at revision 3",
    )


def test_a_host_with_no_report_is_behind() -> None:
    status, reason = aggregate_status(3, [host("a", revision=None, status=None)], what=ROUTER)
    assert (status, reason) == (Status.PENDING, "host a: not yet at revision 3")


def test_a_host_reporting_pending_at_the_revision_is_pending() -> None:
    status, reason = aggregate_status(3, [host("a", status=Status.PENDING)], what="")
    assert (status, reason) == (Status.PENDING, "host a: not yet at revision 3")


def test_an_error_wins_over_behind_and_problems_come_before_notes_in_host_order() -> None:
    hosts = [
        host("c", reason="fine"),
        host("b", revision=2),
        host("a", status=Status.ERROR, reason="no ftp helper"),
    ]
    assert aggregate_status(3, hosts, what=ROUTER) == (
        Status.ERROR,
        "host a: no ftp helper; host b: not yet at revision 3; host c: fine",
    )


def test_a_dead_agent_makes_it_error_with_its_last_report_time() -> None:
    hosts = [host("a"), host("b", alive=False)]
    assert aggregate_status(3, hosts, what=ROUTER) == (
        Status.ERROR,
        "host b: agent dead (last report 2026-12-04T20:00:00Z)",
    )


def test_a_dead_agent_is_named_even_with_a_current_active_report() -> None:
    # Its report may be true of the kernel still, but nobody watches that host any more.
    status, reason = aggregate_status(3, [host("a", alive=False)], what=ROUTER)
    assert status is Status.ERROR
    assert reason.startswith("host a: agent dead")


def test_one_host_in_error_is_prefixed() -> None:
    assert aggregate_status(3, [host("a", status=Status.ERROR, reason="boom")], what="") == (
        Status.ERROR,
        "host a: boom",
    )


def test_the_reason_is_bounded_and_one_printable_line() -> None:
    hosts = [host(f"h{i:03}", status=Status.ERROR, reason="x" * 200 + "\n") for i in range(30)]
    status, reason = aggregate_status(3, hosts, what=ROUTER)
    assert status is Status.ERROR
    assert len(reason) == STATUS_REASON_MAX
    assert reason.isprintable()


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ((Status.ACTIVE, Status.ACTIVE), Status.ACTIVE),
        ((Status.ACTIVE, Status.PENDING), Status.PENDING),
        ((Status.ACTIVE, Status.ERROR), Status.ERROR),
        ((Status.PENDING, Status.ERROR), Status.ERROR),
        ((None, Status.ACTIVE), Status.PENDING),
        ((None, Status.ERROR), Status.ERROR),
    ],
)
def test_status_precedence(statuses: tuple[Status | None, Status | None], expected: Status) -> None:
    hosts = [host(f"h{i}", status=s, revision=3 if s else None) for i, s in enumerate(statuses)]
    assert aggregate_status(3, hosts, what=ROUTER)[0] is expected


# --- agents ---------------------------------------------------------------------------------


def test_node_agent_id_is_stable_and_per_host() -> None:
    assert node_agent_id("node-a") == node_agent_id("node-a")
    assert node_agent_id("node-a") != node_agent_id("node-b")
    assert node_agent_id("node-a") == str(uuid.uuid5(AGENT_ID_NAMESPACE, "host:node-a"))
    assert uuid.UUID(node_agent_id("node-a")).version == 5


def test_an_agent_is_alive_within_down_time() -> None:
    agent = AgentRecord(
        id=node_agent_id("a"),
        host="a",
        started_at=None,
        heartbeat_at=BEAT,
        created_at=BEAT,
        configurations={},
        registered_by=None,
    )
    assert agent.alive(BEAT + timedelta(seconds=75), 75.0)
    assert not agent.alive(BEAT + timedelta(seconds=75.5), 75.0)


# --- validate_host --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["node-a", "a", "compute-1.example.org", "_x", "A9_b-c.d", "n" * 255]
)
def test_valid_hosts(value: str) -> None:
    assert validate_host(value) == value


@pytest.mark.parametrize(
    "value",
    ["", "-a", ".a", "..", "a b", "a/b", "a;b", "ä", "a\n", "n" * 256, "a\x00", None, 3],
)
def test_invalid_hosts_are_refused_with_a_bounded_message(value: object) -> None:
    with pytest.raises(InvalidInput) as raised:
        validate_host(value, "agent.host")
    assert raised.value.field == "agent.host"
    assert len(raised.value.message) < 200
