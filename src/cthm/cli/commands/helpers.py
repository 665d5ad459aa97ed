"""`cthm helper ...`: the conntrack helpers (bindings) of one router."""

from __future__ import annotations

import click

from cthm.cli import render
from cthm.cli.context import CliState, json_option, pass_state
from cthm.cli.resolve import resolve_router

# Protocol, port and helper are passed as given: the server judges them, so the CLI, curl and
# openstacksdk all get the same message for the same mistake.
PROTOCOL = click.option("--protocol", metavar="tcp|udp", help="Transport protocol.")
PORT = click.option("--port", type=int, help="Destination port of the connections (1-65535).")
HELPER = click.option("--helper", metavar="NAME", help="Kernel helper (see `cthm catalog`).")


@click.group("helper")
def helper_group() -> None:
    """Manage the conntrack helpers of a router."""


@helper_group.command("create")
@click.argument("router")
@click.option("--protocol", metavar="tcp|udp", required=True, help="Transport protocol.")
@click.option("--port", type=int, required=True, help="Destination port (1-65535).")
@click.option("--helper", metavar="NAME", required=True, help="Kernel helper (see `cthm catalog`).")
@json_option
@pass_state
def create(state: CliState, router: str, protocol: str, port: int, helper: str) -> None:
    """Give connections to --protocol/--port on ROUTER (an id or a name) the helper --helper."""
    with state.client() as client:
        router_id = resolve_router(client, router)["id"]
        binding = client.create_helper(router_id, protocol=protocol, port=port, helper=helper)
    if state.json:
        render.print_json({"conntrack_helper": binding})
    else:
        render.print_object(binding)


@helper_group.command("list")
@click.argument("router")
@json_option
@pass_state
def list_(state: CliState, router: str) -> None:
    """List the conntrack helpers of ROUTER (an id or a name)."""
    with state.client() as client:
        router_id = resolve_router(client, router)["id"]
        bindings = client.list_helpers(router_id)
    if state.json:
        render.print_json({"conntrack_helpers": bindings})
    else:
        render.print_helpers(bindings)


@helper_group.command("show")
@click.argument("router")
@click.argument("helper_id", metavar="ID")
@json_option
@pass_state
def show(state: CliState, router: str, helper_id: str) -> None:
    """Show conntrack helper ID of ROUTER (an id or a name)."""
    with state.client() as client:
        router_id = resolve_router(client, router)["id"]
        binding = client.get_helper(router_id, helper_id)
    if state.json:
        render.print_json({"conntrack_helper": binding})
    else:
        render.print_object(binding)


@helper_group.command("update")
@click.argument("router")
@click.argument("helper_id", metavar="ID")
@PROTOCOL
@PORT
@HELPER
@json_option
@pass_state
def update(
    state: CliState,
    router: str,
    helper_id: str,
    protocol: str | None,
    port: int | None,
    helper: str | None,
) -> None:
    """Change conntrack helper ID of ROUTER (an id or a name); give at least one option."""
    if protocol is None and port is None and helper is None:
        raise click.UsageError("nothing to update: give --protocol, --port or --helper")
    with state.client() as client:
        router_id = resolve_router(client, router)["id"]
        binding = client.update_helper(
            router_id, helper_id, protocol=protocol, port=port, helper=helper
        )
    if state.json:
        render.print_json({"conntrack_helper": binding})
    else:
        render.print_object(binding)


@helper_group.command("delete")
@click.argument("router")
@click.argument("helper_id", metavar="ID")
@json_option
@pass_state
def delete(state: CliState, router: str, helper_id: str) -> None:
    """Delete conntrack helper ID of ROUTER (an id or a name)."""
    with state.client() as client:
        router_id = resolve_router(client, router)["id"]
        client.delete_helper(router_id, helper_id)
    if not state.json:
        render.print_line(f"Deleted conntrack helper {helper_id} of router {router_id}")
