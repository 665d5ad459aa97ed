"""Helpers proven with real traffic: active FTP and TFTP through a strict NAT router.

Without a helper the router cannot NAT the FTP PORT address nor expect the TFTP reply, so
both downloads fail while the FTP control connection works. With the ftp/tftp helpers
assigned after conntrack lookup both succeed; assigned at priority raw (before conntrack
lookup) nft accepts the table but nothing is assigned (DESIGN.md).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cthm.testing import HelperAssigner, HelperTraffic, TransferFailed, run_in_namespace

pytestmark = [pytest.mark.traffic, pytest.mark.kernel]


def test_without_helpers_active_ftp_and_tftp_fail(helper_traffic: HelperTraffic) -> None:
    helper_traffic.assert_helpers_missing()


def test_control_connection_works_while_the_data_connection_fails(
    helper_traffic: HelperTraffic,
) -> None:
    with pytest.raises(TransferFailed) as failed:
        helper_traffic.ftp_list()
    # Stage "list": the client connected, logged in and was refused only the data connection.
    assert failed.value.stage == "list", failed.value


def test_assigned_helpers_make_active_ftp_and_tftp_work(
    helper_traffic: HelperTraffic, assign_helpers: HelperAssigner
) -> None:
    helper_traffic.prove(assign_helpers)


def test_helpers_set_at_raw_priority_assign_nothing(
    helper_traffic: HelperTraffic, nft_assigner_at: Callable[[str], HelperAssigner]
) -> None:
    helper_traffic.assert_helpers_missing()
    nft_assigner_at("raw")(helper_traffic.topology)
    # nft took the table as written: the chain and both map rules are in the kernel...
    listed = run_in_namespace(
        helper_traffic.topology.router_ns, ["nft", "list", "table", "inet", "cthm"]
    ).stdout
    assert "hook prerouting priority raw" in listed, listed
    assert listed.count("ct helper set") == 2, listed
    # ...and still no connection gets a helper.
    helper_traffic.assert_helpers_missing()


def test_harness_tells_the_two_states_apart(
    helper_traffic: HelperTraffic, assign_helpers: HelperAssigner
) -> None:
    # Guards the guard: each assertion fails in the state it must reject.
    with pytest.raises(AssertionError, match="failed with helpers assigned"):
        helper_traffic.assert_helpers_working()
    assign_helpers(helper_traffic.topology)
    with pytest.raises(AssertionError, match="a helper is at work"):
        helper_traffic.assert_helpers_missing()
