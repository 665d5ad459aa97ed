"""`cthm status ROUTER`: desired state (from the API) beside kernel state (read here, now).

Runs on the router's host, as root: the kernel side is read from the namespace directly, so it
shows what the kernel holds at this moment, not what an agent last reported.
"""

from __future__ import annotations

from typing import Any

import click
from rich.text import Text

from cthm.cli import render
from cthm.cli.context import CliState, json_option, pass_state
from cthm.cli.errors import Failure
from cthm.cli.resolve import resolve_router
from cthm.domain import HelperCatalog, InvalidInput, Protocol
from cthm.netfilter import (
    KernelTable,
    LibraryUnavailable,
    NamespaceNotFound,
    NftablesBackend,
    NftError,
    make_runner,
)

Key = tuple[str, int]


@click.command("status")
@click.argument("router")
@json_option
@pass_state
def status(state: CliState, router: str) -> None:
    """Show ROUTER's desired bindings beside what its namespace's kernel holds now."""
    with state.client() as client:
        body = resolve_router(client, router)
        bindings = client.list_helpers(body["id"])
    kernel, kernel_error = _read_kernel(body["namespace"])
    report = compare(bindings, kernel, kernel_error)
    report["router"] = {k: body.get(k) for k in ("id", "name", "namespace", "status")}
    report["router"]["status_reason"] = body.get("status_reason", "")
    if state.json:
        render.print_json(report)
        return
    _print(report)


def _read_kernel(namespace: str) -> tuple[KernelTable | None, str | None]:
    try:
        backend = NftablesBackend(make_runner("auto"))
    except (LibraryUnavailable, OSError) as exc:
        raise Failure(f"cannot read nftables on this host: {exc}") from exc
    try:
        return backend.read(namespace), None
    except NamespaceNotFound:
        return None, f"namespace {namespace} not found on this host"
    except NftError as exc:
        return None, f"cannot read the kernel: {exc.message}"
    finally:
        backend.close()


def compare(
    bindings: list[dict[str, Any]], kernel: KernelTable | None, kernel_error: str | None
) -> dict[str, Any]:
    """Rows keyed by (protocol, port): desired helper, binding status, kernel helper, match."""
    catalog = HelperCatalog()  # the full kernel catalog: only used to name aliases (h323 -> RAS)
    desired: dict[Key, dict[str, Any]] = {}
    for binding in bindings:
        key = (binding["protocol"], binding["port"])
        try:
            kernel_name = catalog.resolve(binding["helper"], Protocol(binding["protocol"])).name
        except (InvalidInput, ValueError):
            kernel_name = None
        desired[key] = {**binding, "kernel_helper": kernel_name}
    actual: dict[Key, str] = {}
    if kernel is not None:
        actual = {(a.protocol.value, a.port): a.helper for a in kernel.assignments}
    rows = []
    for protocol, port in sorted(set(desired) | set(actual)):
        want = desired.get((protocol, port))
        have = actual.get((protocol, port))
        rows.append(
            {
                "protocol": protocol,
                "port": port,
                "desired": want["helper"] if want else None,
                "binding_status": want["status"] if want else None,
                "kernel": have,
                "match": want is not None and want["kernel_helper"] == have,
            }
        )
    garbage = list(kernel.garbage) if kernel is not None else []
    in_sync = kernel_error is None and all(r["match"] for r in rows) and not garbage
    return {
        "in_sync": in_sync,
        "kernel_error": kernel_error,
        "kernel_table": kernel is not None,
        "garbage": garbage,
        "bindings": rows,
    }


def _print(report: dict[str, Any]) -> None:
    router = report["router"]
    verdict = "in sync" if report["in_sync"] else "DIFFERS"
    render.print_line(
        f"router {router['name'] or router['id']} ({router['id']}) in {router['namespace']}: "
        f"status {router['status']}; kernel {verdict}"
    )
    if router.get("status_reason"):
        render.print_line(f"  reason: {router['status_reason']}")
    if report["kernel_error"]:
        render.print_line(f"  kernel: {report['kernel_error']}")
    table = render.make_table(
        None,
        (
            ("protocol", "Protocol"),
            ("port", "Port"),
            ("desired", "Desired helper"),
            ("binding_status", "Binding status"),
            ("kernel", "Kernel helper"),
            ("match", "Match"),
        ),
    )
    for row in report["bindings"]:
        table.add_row(
            Text(row["protocol"]),
            Text(str(row["port"])),
            Text(row["desired"] or "-"),
            Text(row["binding_status"] or "-"),
            Text(row["kernel"] or "-"),
            Text("yes", style="green") if row["match"] else Text("NO", style="bold red"),
        )
    render.console().print(table)
    for item in report["garbage"]:
        render.print_line(f"  not ours in cthm's table: {item}")
