"""The kernel changed behind cthm's back, and the router's namespace deleted and recreated.

Our table deleted by hand, a foreign rule added to our chain, a helper object deleted: the
periodic resync (0.5 s here) puts back exactly the desired table. A namespace deleted under a
live router turns its statuses ERROR ("namespace ... not found"); recreated, it gets the
table again and the router is ACTIVE. Someone else's table in the namespace is never touched.
"""

from __future__ import annotations

from collections import Counter

import pytest

from cthm.testing import NamespaceFactory
from support.faults import (
    FOREIGN_TABLE,
    Api,
    ServerFactory,
    add_foreign_table,
    kernel_table,
    nft,
    nft_text,
    table_handle,
    wait_settled,
    wait_until,
)

pytestmark = pytest.mark.kernel

RESYNC = ("--resync-interval", "0.5")
TAMPERING = {
    "table deleted": "delete table inet cthm\n",
    "foreign rule in our chain": "add rule inet cthm prerouting tcp dport 9999 counter accept\n",
    # A helper object still referenced cannot go (EBUSY): an operator flushes the chain first.
    "helper object deleted": (
        "flush chain inet cthm prerouting\ndelete ct helper inet cthm ftp-tcp\n"
    ),
    "chain flushed": "flush chain inet cthm prerouting\n",
}


def test_tampering_with_our_table_is_repaired_by_the_resync(
    make_server: ServerFactory, netns: NamespaceFactory, counts: Counter[str]
) -> None:
    server = make_server(*RESYNC)
    namespace = netns.create("drift")
    foreign = add_foreign_table(namespace)
    with Api(server) as api:
        router_id = api.create_router(namespace, "drift")
        for protocol, port, helper in (
            ("tcp", 21, "ftp"),
            ("udp", 69, "tftp"),
            ("udp", 161, "snmp"),
        ):
            assert api.create_binding(router_id, protocol, port, helper).status_code == 201
        settled = wait_settled(api, {router_id: namespace})
        assert settled.ok, (settled.problems, server.logs())
        good = kernel_table(namespace)
        good_text = nft_text(namespace)

        for what, script in TAMPERING.items():
            handle = table_handle(namespace)
            nft(namespace, script)  # raises unless the tampering happened
            counts["faults_injected"] += 1
            settled = wait_settled(api, {router_id: namespace})
            assert settled.ok, (what, settled.problems, server.logs())
            # Repaired by a rewrite (a new table, so a new handle): the drift was seen, and
            # the kernel equals the desired table again. (Reading the tampered table before the
            # repair would race with the 0.5 s resync.)
            assert table_handle(namespace) != handle, what
            assert kernel_table(namespace) == good, what
            assert nft_text(namespace) == good_text, what
            assert nft_text(namespace, FOREIGN_TABLE) == foreign, what
            counts["drifts_repaired"] += 1
            counts["repair_ms_max"] = max(counts["repair_ms_max"], round(settled.seconds * 1000))


def test_namespace_deleted_and_recreated_under_a_live_router(
    make_server: ServerFactory, netns: NamespaceFactory, counts: Counter[str]
) -> None:
    server = make_server(*RESYNC)
    namespace = netns.create("churn")
    other = netns.create("steady")
    foreign = add_foreign_table(other)
    with Api(server) as api:
        router_id = api.create_router(namespace, "churn")
        steady_id = api.create_router(other, "steady")
        ids = []
        for protocol, port, helper in (("tcp", 21, "ftp"), ("udp", 69, "tftp")):
            created = api.create_binding(router_id, protocol, port, helper)
            assert created.status_code == 201
            ids.append(created.json()["conntrack_helper"]["id"])
        assert api.create_binding(steady_id, "tcp", 6566, "sane").status_code == 201
        routers = {router_id: namespace, steady_id: other}
        settled = wait_settled(api, routers)
        assert settled.ok, (settled.problems, server.logs())
        steady_text = nft_text(other)

        reason = f"namespace {namespace} not found"

        def in_error() -> bool:
            router = api.router(router_id)
            bindings = api.bindings(router_id)
            return (
                router["status"] == "ERROR"
                and reason in router["status_reason"]
                and all(b["status"] == "ERROR" and reason in b["status_reason"] for b in bindings)
            )

        for _ in range(2):
            netns.delete(namespace)
            counts["namespaces_churned"] += 1
            assert wait_until(in_error, 10.0), (api.router(router_id), api.bindings(router_id))
            # Work on the router goes on while its namespace is missing.
            extra = api.create_binding(router_id, "tcp", 1723, "pptp")
            assert extra.status_code == 201
            assert netns.create("churn") == namespace
            settled = wait_settled(api, routers)
            assert settled.ok, (settled.problems, server.logs())
            assert kernel_table(namespace) is not None
            delete = api.delete_binding(router_id, extra.json()["conntrack_helper"]["id"])
            assert delete.status_code == 204
            settled = wait_settled(api, routers)
            assert settled.ok, (settled.problems, server.logs())
            counts["recoveries"] += 1

        # The other router in its own namespace never moved.
        assert nft_text(other) == steady_text
        assert nft_text(other, FOREIGN_TABLE) == foreign
