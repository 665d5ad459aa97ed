"""Helpers for the fault-injection suite (tests/faults): an admin API client for a real
`cthm serve`, the kernel's view of a router read with the real nft, the desired view computed
from what the API returns, bounded waits for convergence, and a JSON-lines counts report.

The kernel is always read with the nft binary in the namespace (`ip netns exec NS nft`),
never through the server under test, so a server bug cannot hide itself.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx

from cthm.domain import Assignment, Direction, HelperCatalog, Protocol
from cthm.netfilter import KernelTable, NftablesBackend, SubprocessRunner, desired_table
from cthm.testing.netns import run_in_namespace
from cthm.testing.service import ServerProcess

REPORT_ENV = "CTHM_FAULT_REPORT"
"""When set, names a file each fault test appends one JSON line of counts to."""

FOREIGN_TABLE = "cthm_faults_foreign"
"""A table (family inet) that belongs to someone else: cthm must never touch it."""

# Helpers whose API name is the kernel's name, none high-risk: (protocol, helper).
HELPERS: dict[str, tuple[str, ...]] = {
    "tcp": ("ftp", "sane", "pptp"),
    "udp": ("tftp", "amanda", "snmp"),
}

Binding = Mapping[str, Any]
ServerFactory = Callable[..., ServerProcess]
"""make_server(*serve_args, env=...) -> a started ServerProcess (the faults suite's fixture)."""


def report_counts(test: str, counts: Mapping[str, object]) -> None:
    """Appends {"test": test, **counts} to the file named by $CTHM_FAULT_REPORT, if any."""
    path = os.environ.get(REPORT_ENV)
    if not path:
        return
    line = json.dumps({"test": test, **counts}, sort_keys=True, default=str)
    with Path(path).open("a", encoding="utf-8") as out:
        out.write(line + "\n")


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Polls `predicate` until true or `timeout` seconds pass (bounded in count and time)."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / interval) + 2):
        if predicate():
            return True
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    return predicate()


class Api:
    """The server's admin over HTTP. Methods return the response; callers check codes."""

    def __init__(self, server: ServerProcess, *, timeout: float = 5.0) -> None:
        self.server = server
        self.client = httpx.Client(
            base_url=server.url, timeout=timeout, headers=server.auth_headers()
        )

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create_router(self, namespace: str, name: str = "faults") -> str:
        body = {"router": {"name": name, "project_id": "faults", "namespace": namespace}}
        response = self.client.post("/v2.0/routers", json=body)
        if response.status_code != 201:
            raise AssertionError(f"router create: {response.status_code} {response.text}")
        router_id: str = response.json()["router"]["id"]
        return router_id

    def router(self, router_id: str) -> dict[str, Any]:
        response = self.client.get(f"/v2.0/routers/{router_id}")
        if response.status_code != 200:
            raise AssertionError(f"router show: {response.status_code} {response.text}")
        router: dict[str, Any] = response.json()["router"]
        return router

    def bindings(self, router_id: str) -> list[dict[str, Any]]:
        response = self.client.get(f"/v2.0/routers/{router_id}/conntrack_helpers")
        if response.status_code != 200:
            raise AssertionError(f"binding list: {response.status_code} {response.text}")
        items: list[dict[str, Any]] = response.json()["conntrack_helpers"]
        return items

    def create_binding(
        self, router_id: str, protocol: str, port: int, helper: str, direction: str | None = None
    ) -> httpx.Response:
        """direction None: not sent (the server's default, ingress)."""
        fields: dict[str, object] = {"protocol": protocol, "port": port, "helper": helper}
        if direction is not None:
            fields["direction"] = direction
        body = {"conntrack_helper": fields}
        return self.client.post(f"/v2.0/routers/{router_id}/conntrack_helpers", json=body)

    def update_binding(
        self,
        router_id: str,
        binding_id: str,
        changes: Mapping[str, object],
        *,
        revision: int | None,
    ) -> httpx.Response:
        headers = {} if revision is None else {"If-Match": f"revision_number={revision}"}
        return self.client.put(
            f"/v2.0/routers/{router_id}/conntrack_helpers/{binding_id}",
            json={"conntrack_helper": dict(changes)},
            headers=headers,
        )

    def delete_binding(
        self, router_id: str, binding_id: str, *, revision: int | None = None
    ) -> httpx.Response:
        headers = {} if revision is None else {"If-Match": f"revision_number={revision}"}
        return self.client.delete(
            f"/v2.0/routers/{router_id}/conntrack_helpers/{binding_id}", headers=headers
        )


# --- kernel side -------------------------------------------------------------------------

_BACKEND = NftablesBackend(SubprocessRunner())  # stateless: one nft process per call
_CATALOG = HelperCatalog()


def kernel_table(namespace: str) -> KernelTable | None:
    """cthm's table in the namespace as the kernel holds it (None: no table), its deployment
    identity left out: the suite compares what the table does (`kernel_owner` reads whose)."""
    table = _BACKEND.read(namespace)
    return replace(table, owner=None) if table is not None else None


def kernel_owner(namespace: str) -> str | None:
    """The deployment id cthm's table in the namespace is marked with (None: none, or no
    table)."""
    table = _BACKEND.read(namespace)
    return table.owner if table is not None else None


def desired_kernel_table(bindings: Iterable[Binding]) -> KernelTable:
    """What cthm's table must hold for these API bindings (kernel helper names resolved). A
    binding without a direction (a hand-written one, or an older server's) is ingress."""
    assignments = []
    for b in bindings:
        protocol = Protocol(b["protocol"])
        name = _CATALOG.resolve(str(b["helper"]), protocol).name
        direction = Direction(b.get("direction", Direction.INGRESS.value))
        assignments.append(Assignment(protocol, int(b["port"]), name, direction))
    return desired_table(assignments)


def state_of(bindings: Iterable[Binding]) -> dict[str, tuple[str, int, str]]:
    """binding id -> (protocol, port, helper), the part of a binding the fault suite's clients
    write (they leave direction at its default)."""
    return {str(b["id"]): (str(b["protocol"]), int(b["port"]), str(b["helper"])) for b in bindings}


def nft_text(namespace: str, table: str = "cthm") -> str | None:
    """`nft list table inet TABLE` exactly as nft prints it (None: no such table)."""
    done = run_in_namespace(namespace, ["nft", "list", "table", "inet", table], check=False)
    return done.stdout if done.returncode == 0 else None


def table_handle(namespace: str, table: str = "cthm") -> int | None:
    """The kernel's handle of `table inet TABLE` (`nft -j -a list tables`; the text form of
    nft 1.0.6 prints no table handles there): a rewrite of the table changes it."""
    out = run_in_namespace(namespace, ["nft", "-j", "-a", "list", "tables"]).stdout
    for item in json.loads(out)["nftables"]:
        found = item.get("table")
        if found and found["family"] == "inet" and found["name"] == table:
            handle: int = found["handle"]
            return handle
    return None


def nft(namespace: str, script: str) -> None:
    """Runs `nft -f -` in the namespace (the test playing an operator); raises on failure."""
    done = run_in_namespace(namespace, ["nft", "-f", "-"], input=script, check=False)
    if done.returncode != 0:
        raise AssertionError(f"nft in {namespace} failed: {done.stderr.strip()}\n{script}")


def add_foreign_table(namespace: str) -> str:
    """Puts someone else's table into the namespace; returns its text as nft prints it."""
    nft(
        namespace,
        f"table inet {FOREIGN_TABLE} {{\n"
        "  chain input { type filter hook input priority 10; policy accept;\n"
        "    tcp dport 2222 counter accept\n  }\n"
        '  ct helper ftp-tcp { type "ftp" protocol tcp; l3proto inet; }\n'
        "}\n",
    )
    text = nft_text(namespace, FOREIGN_TABLE)
    assert text is not None
    return text


def router_settled(api: Api, router_id: str, namespace: str) -> str:
    """ "" when the router is settled: its kernel table equals its bindings in the API, and the
    router and every binding are ACTIVE; otherwise what is not (for a failure message)."""
    bindings = api.bindings(router_id)
    want = desired_kernel_table(bindings)
    have = kernel_table(namespace)
    router = api.router(router_id)
    not_active = [(b["port"], b["status"], b["status_reason"]) for b in bindings]
    not_active = [x for x in not_active if x[1] != "ACTIVE"]
    status = f"router {router['status']} {router['status_reason']!r}, bindings {not_active}"
    if have != want:
        return f"{namespace}: kernel {have} != desired {want}; {status}"
    if router["status"] != "ACTIVE" or not_active:
        return f"{namespace}: {status}"
    return ""


@dataclass
class Settle:
    """The outcome of `wait_settled`: problems per router id (empty: all settled)."""

    problems: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems


def wait_settled(api: Api, routers: Mapping[str, str], timeout: float = 15.0) -> Settle:
    """Waits (bounded) until every router (id -> namespace) is settled."""
    start = time.monotonic()
    result = Settle()

    def check() -> bool:
        result.problems = {}
        for router_id, namespace in routers.items():
            problem = router_settled(api, router_id, namespace)
            if problem:
                result.problems[router_id] = problem
        return not result.problems

    wait_until(check, timeout, interval=0.05)
    result.seconds = time.monotonic() - start
    return result


def nft_wrapper(directory: Path, real_nft: str = "/usr/sbin/nft") -> tuple[Path, Path]:
    """Writes `DIR/bin/nft`, which runs the real nft unless a file `DIR/fail/<namespace>`
    exists for the namespace it runs in. That file's first line
    is `all` (every call fails) or `write` (only transactions, `-f` without `-c`, fail); its
    second line is the message printed as nft's error before exiting 1, so the real nft
    never ran. Returns (bin dir, fail dir)."""
    bin_dir, fail_dir = directory / "bin", directory / "fail"
    bin_dir.mkdir(parents=True)
    fail_dir.mkdir()
    script = bin_dir / "nft"
    # The namespace is recognised by the inode of its network namespace, compared with each
    # flagged name only: `ip netns identify` scans every namespace and fails when another
    # one disappears meanwhile (other tests), which would let a write through.
    script.write_text(
        "#!/bin/sh\n"
        "self=$(stat -L -c %i /proc/self/ns/net)\n"
        f'for flag in "{fail_dir}"/*; do\n'
        '  [ -f "$flag" ] || continue\n'
        '  ns=$(basename "$flag")\n'
        '  [ "$(stat -L -c %i "/run/netns/$ns" 2>/dev/null)" = "$self" ] || continue\n'
        '  mode=$(sed -n 1p "$flag"); message=$(sed -n 2p "$flag")\n'
        "  write=0; check=0\n"
        '  for arg in "$@"; do\n'
        '    [ "$arg" = "-f" ] && write=1\n'
        '    [ "$arg" = "-c" ] && check=1\n'
        "  done\n"
        '  if [ "$mode" = all ] || { [ "$write" = 1 ] && [ "$check" = 0 ]; }; then\n'
        '    echo "Error: $message" >&2\n'
        "    exit 1\n"
        "  fi\n"
        "done\n"
        f'exec {real_nft} "$@"\n'
    )
    script.chmod(0o755)
    return bin_dir, fail_dir


def set_nft_failure(fail_dir: Path, namespace: str, mode: str, message: str) -> None:
    """Makes the wrapper of `nft_wrapper` fail in `namespace` (mode "all" or "write")."""
    if mode not in ("all", "write"):
        raise ValueError(mode)
    (fail_dir / namespace).write_text(f"{mode}\n{message}\n")


def clear_nft_failure(fail_dir: Path, namespace: str) -> None:
    (fail_dir / namespace).unlink()
