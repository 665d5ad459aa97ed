"""The harness for direction "output", proven with hand-written rules, independently of cthm.

The router namespace itself runs the active FTP and TFTP clients against the servers, behind
a strict INPUT firewall (`inet cthm_test_in`). Without a helper the server's active data
connection and the TFTP reply from a new port are new connections the firewall refuses, while
the FTP control connection works. With `ct helper set` in a chain at the OUTPUT hook, the
router's own connections carry the helpers, their expectations make data and reply RELATED,
and both transfers succeed. A PREROUTING assignment (what forwarded traffic needs) does nothing
for them, and the OUTPUT one nothing for forwarded traffic.
"""

from __future__ import annotations

import pytest
from traffic_support import (
    assign_output_with_nft,
    helper_table,
    output_helper_table,
    replace_cthm_table,
)

from cthm.testing import (
    HelperTraffic,
    TransferFailed,
    concurrently,
    conntrack_flush,
    run_in_namespace,
)

pytestmark = [pytest.mark.traffic, pytest.mark.kernel]


def test_router_input_firewall_lives_in_its_own_table(router_traffic: HelperTraffic) -> None:
    t = router_traffic.topology
    tables = run_in_namespace(t.router_ns, ["nft", "list", "tables"]).stdout.splitlines()
    assert f"table inet {t.input_firewall_table}" in tables
    assert f"table inet {t.firewall_table}" in tables
    assert "table inet cthm" not in tables
    listed = run_in_namespace(
        t.router_ns, ["nft", "list", "table", "inet", t.input_firewall_table]
    ).stdout
    assert "hook input priority filter; policy drop;" in listed, listed


def test_without_the_input_firewall_the_router_needs_no_helper(
    helper_traffic: HelperTraffic,
) -> None:
    # Guards the guard: the router's transfers fail below because of its INPUT firewall (and
    # the missing helper), not because the router cannot reach the servers.
    unfiltered = helper_traffic.router_originated()
    assert helper_traffic.ftp_file in unfiltered.ftp_list()
    assert unfiltered.tftp_download() == helper_traffic.tftp.files[helper_traffic.tftp_file]


def test_without_helpers_router_originated_ftp_and_tftp_fail(
    router_traffic: HelperTraffic,
) -> None:
    with pytest.raises(TransferFailed) as failed:
        router_traffic.ftp_list()
    # Stage "list": the router connected and logged in; only the data connection was refused.
    assert failed.value.stage == "list", failed.value
    router_traffic.assert_helpers_missing()


def test_output_chain_helpers_make_router_originated_ftp_and_tftp_work(
    router_traffic: HelperTraffic,
) -> None:
    router_traffic.prove(assign_output_with_nft)


def test_direction_matters_in_the_kernel(
    helper_traffic: HelperTraffic, router_traffic: HelperTraffic
) -> None:
    t = router_traffic.topology
    # PREROUTING helpers: forwarded transfers work, the router's own still fail.
    replace_cthm_table(t, helper_table("filter"))
    concurrently(helper_traffic.assert_helpers_working, router_traffic.assert_helpers_missing)
    # OUTPUT helpers only: the other way round. Old connections keep their helpers: forget them.
    replace_cthm_table(t, output_helper_table())
    conntrack_flush(t.router_ns)
    concurrently(router_traffic.assert_helpers_working, helper_traffic.assert_helpers_missing)


def test_harness_tells_the_two_router_states_apart(router_traffic: HelperTraffic) -> None:
    # Each assertion fails in the state it must reject.
    with pytest.raises(AssertionError, match="failed with helpers assigned"):
        router_traffic.assert_helpers_working()
    assign_output_with_nft(router_traffic.topology)
    with pytest.raises(AssertionError, match="a helper is at work"):
        router_traffic.assert_helpers_missing()


def test_concurrently_reports_every_failure() -> None:
    def fails(message: str) -> None:
        raise AssertionError(message)

    with pytest.raises(AssertionError, match="first") as failed:
        concurrently(lambda: None, lambda: fails("first"), lambda: fails("second"))
    assert any("second" in note for note in failed.value.__notes__)
    concurrently(lambda: None, lambda: None)
