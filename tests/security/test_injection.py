"""Rules are never built from raw user text: try to inject through every field of the API of a
real `cthm serve` (with its agent programming a real namespace) and check that nothing reaches
the kernel but validated values, and nothing outside cthm's table changes."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from cthm.testing import NamespaceFactory
from cthm.testing.service import ServerProcess

pytestmark = pytest.mark.kernel

FOREIGN = """
table inet filter {
    chain forward {
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
    }
}
"""

PAYLOADS = [
    '"; flush ruleset; #',
    "ftp\nflush ruleset",
    "$(nft flush ruleset)",
    "`reboot`",
    "ftp; ip netns del x",
    "../../../etc/passwd",
    "-n",
    "ftp\x00",
    "ftp }  table ip evil { ",
    "\u202eptf",
    "x" * 5000,
]


def nft_ruleset(namespace: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", namespace, "nft", "list", "ruleset"],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[httpx.Client]:
    with ServerProcess(tmp_path / "data", tmp_path / "logs") as server:
        headers = {"X-Auth-Token": server.admin_token}
        with httpx.Client(base_url=server.url, headers=headers, timeout=10) as http:
            yield http


def wait_active(client: httpx.Client, router_id: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        router = client.get(f"/v2.0/routers/{router_id}").json()["router"]
        if router["status"] == "ACTIVE":
            return
        time.sleep(0.02)
    raise AssertionError(f"router {router_id} did not become ACTIVE")


def test_injection_through_every_field_never_reaches_the_kernel(
    client: httpx.Client, netns: NamespaceFactory
) -> None:
    namespace = netns.create("inj")
    subprocess.run(
        ["ip", "netns", "exec", namespace, "nft", "-f", "-"],
        input=FOREIGN,
        text=True,
        check=True,
        timeout=10,
    )
    router = client.post(
        "/v2.0/routers",
        json={"router": {"name": "legit", "project_id": "p1", "namespace": namespace}},
    ).json()["router"]
    rid = router["id"]
    binding = client.post(
        f"/v2.0/routers/{rid}/conntrack_helpers",
        json={"conntrack_helper": {"protocol": "tcp", "port": 21, "helper": "ftp"}},
    ).json()["conntrack_helper"]
    wait_active(client, rid)
    baseline = nft_ruleset(namespace)
    before_namespaces = namespaces()
    statuses: list[int] = []

    def attempt(method: str, url: str, **kwargs: object) -> None:
        response = client.request(method, url, **kwargs)  # type: ignore[arg-type]
        statuses.append(response.status_code)
        assert response.status_code < 500, (method, url, kwargs, response.text)

    for payload in PAYLOADS:
        # router fields: namespace and project_id reach argv/kernel-facing code, so must be
        # refused; a name is only a label and may hold any printable text.
        for field in ("namespace", "project_id"):
            router = {"name": "x", "project_id": "p1", field: payload}
            attempt("POST", "/v2.0/routers", json={"router": router})
            assert statuses[-1] == 400, (field, payload)
        attempt("POST", "/v2.0/routers", json={"router": {"name": payload, "project_id": "p1"}})
        attempt("PUT", f"/v2.0/routers/{rid}", json={"router": {"name": payload}})
        attempt("PUT", f"/v2.0/routers/{rid}", json={"router": {"namespace": payload}})
        assert statuses[-1] == 400
        # binding fields, on create and on update
        for field in ("protocol", "helper", "port"):
            body: dict[str, object] = {"protocol": "udp", "port": 69, "helper": "tftp"}
            body[field] = payload
            attempt(
                "POST", f"/v2.0/routers/{rid}/conntrack_helpers", json={"conntrack_helper": body}
            )
            assert statuses[-1] == 400, (field, payload)
            attempt(
                "PUT",
                f"/v2.0/routers/{rid}/conntrack_helpers/{binding['id']}",
                json={"conntrack_helper": {field: payload}},
            )
            assert statuses[-1] == 400, (field, payload)
        # ids in paths and values in query strings
        attempt("GET", f"/v2.0/routers/{quote(payload[:200], safe='')}")
        attempt("DELETE", f"/v2.0/routers/{rid}/conntrack_helpers/{quote(payload[:200], safe='')}")
        attempt("GET", f"/v2.0/routers/{rid}/conntrack_helpers", params={"helper": payload})
        attempt("GET", f"/v2.0/routers/{rid}/conntrack_helpers", params={"sort_key": payload})
        attempt("GET", "/v2.0/routers", params={"fields": payload})

    # Give the agent every chance to act on anything that slipped through, then look.
    client.post(
        f"/v2.0/routers/{rid}/conntrack_helpers",
        json={"conntrack_helper": {"protocol": "udp", "port": 69, "helper": "tftp"}},
    )
    wait_active(client, rid)
    after = nft_ruleset(namespace)
    assert "table inet filter" in after
    assert after.count("table ") == baseline.count("table "), after
    assert 'udp dport @ingress-tftp-udp ct helper set "tftp-udp"' in after
    assert "flush" not in after
    assert "evil" not in after
    # Other tests (a parallel worker, another cthm) make and delete their own namespaces
    # meanwhile: what must not appear or go is a name any payload could have produced, or ours.
    changed = namespaces() ^ before_namespaces
    made_by_payload = [n for n in changed if any(n in payload for payload in PAYLOADS)]
    assert not made_by_payload, "no namespace was created or deleted"
    assert namespace in namespaces()
    listing = client.get(f"/v2.0/routers/{rid}/conntrack_helpers").json()["conntrack_helpers"]
    assert sorted((b["protocol"], b["port"], b["helper"]) for b in listing) == [
        ("tcp", 21, "ftp"),
        ("udp", 69, "tftp"),
    ]
    assert statuses.count(400) >= len(PAYLOADS) * 9
