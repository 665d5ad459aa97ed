"""`POST /v2.0/routers/{id}/resync` with node agents: the change feed carries a RESYNC event to
the hosts placing the router, whose agents then reconcile it in full and repair a table emptied
behind their back. The agents' periodic resync is longer than the test (cluster.RESYNC_INTERVAL):
the repair came through the feed."""

from __future__ import annotations

import subprocess

from hosts.cluster import HOST_A, HOST_B, Cluster, head_revision, kernel_ports, poll, watch_events

FTP = ("tcp", 21, "ftp")


def test_a_resync_reaches_the_hosts_placing_the_router_and_repairs_drift(
    cluster: Cluster,
) -> None:
    cluster.start_server()
    cluster.add_host(HOST_A)
    cluster.add_host(HOST_B)
    router = cluster.place("rsy", [HOST_A])
    cluster.start_agent(HOST_A)
    cluster.start_agent(HOST_B)
    cluster.create_router(router, [FTP])
    cluster.wait_settled([router])
    revision = head_revision(cluster)
    router_revision = cluster.router(router)["revision_number"]
    real = router.real[HOST_A]

    flush = ["ip", "netns", "exec", real, "nft", "flush", "table", "inet", "cthm"]
    subprocess.run(flush, check=True, timeout=10)
    assert kernel_ports(real) == set()

    answer = cluster.request("POST", f"/v2.0/routers/{router.id}/resync", json={})
    assert answer.status_code == 202, answer.text
    assert answer.json()["resync"]["agent"] == "hosts"
    events = watch_events(cluster, revision, HOST_A)
    assert [(e["type"], e["router_id"]) for e in events] == [("RESYNC", router.id)]
    assert watch_events(cluster, revision, HOST_B) == []  # not placed there
    # Nothing desired changed: no new revision of the router.
    assert cluster.router(router)["revision_number"] == router_revision

    poll(
        lambda: kernel_ports(real) == {FTP},
        15.0,
        "the resync repaired the emptied table",
        cluster.explain,
    )
