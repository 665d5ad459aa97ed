"""`cthm helper ...`: the conntrack helpers (bindings) of one router."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from cthm.cli import render
from cthm.cli.context import CliState, json_option, pass_state
from cthm.cli.resolve import resolve_router

F = TypeVar("F", bound=Callable[..., Any])


DIRECTIONS = ("ingress", "output")
DIRECTION_HELP = (
    "ingress: connections arriving at the router, forwarded or addressed to it (as Neutron); "
    "output: connections the router's namespace itself originates."
)


def binding_options(*, required: bool) -> Callable[[F], F]:
    """--protocol, --port, --helper and --direction. Values go to the server as given (only the
    port must be an integer): it judges them, so the CLI, curl and openstacksdk get the same
    message. --direction is never required; absent, nothing is sent (create: the server's
    default, ingress; update: unchanged), so the CLI still works with an older server."""

    default = " [default: ingress]" if required else ""
    options = (
        click.option("--protocol", metavar="tcp|udp", required=required, help="The protocol."),
        click.option("--port", type=int, required=required, help="Destination port (1-65535)."),
        click.option("--helper", metavar="NAME", required=required, help="See `cthm catalog`."),
        click.option("--direction", type=click.Choice(DIRECTIONS), help=DIRECTION_HELP + default),
    )

    def decorate(function: F) -> F:
        for option in reversed(options):  # shown in --help in the order listed
            function = option(function)
        return function

    return decorate


@click.group("helper")
def helper_group() -> None:
    """Manage the conntrack helpers of a router."""


@helper_group.command("create")
@click.argument("router")
@binding_options(required=True)
@json_option
@pass_state
def create(
    state: CliState, router: str, protocol: str, port: int, helper: str, direction: str | None
) -> None:
    """Give connections to --protocol/--port on ROUTER (an id or a name) the helper --helper."""
    with state.client() as client:
        router_id = resolve_router(client, router)["id"]
        binding = client.create_helper(
            router_id, protocol=protocol, port=port, helper=helper, direction=direction
        )
    render.emit(state, {"conntrack_helper": binding}, render.print_object, binding)


@helper_group.command("list")
@click.argument("router")
@json_option
@pass_state
def list_(state: CliState, router: str) -> None:
    """List the conntrack helpers of ROUTER (an id or a name)."""
    with state.client() as client:
        router_id = resolve_router(client, router)["id"]
        bindings = client.list_helpers(router_id)
    render.emit(state, {"conntrack_helpers": bindings}, render.print_helpers, bindings)


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
    render.emit(state, {"conntrack_helper": binding}, render.print_object, binding)


@helper_group.command("update")
@click.argument("router")
@click.argument("helper_id", metavar="ID")
@binding_options(required=False)
@json_option
@pass_state
def update(
    state: CliState,
    router: str,
    helper_id: str,
    protocol: str | None,
    port: int | None,
    helper: str | None,
    direction: str | None,
) -> None:
    """Change conntrack helper ID of ROUTER (an id or a name); give at least one option."""
    if protocol is None and port is None and helper is None and direction is None:
        raise click.UsageError(
            "nothing to update: give --protocol, --port, --helper or --direction"
        )
    with state.client() as client:
        router_id = resolve_router(client, router)["id"]
        binding = client.update_helper(
            router_id, helper_id, protocol=protocol, port=port, helper=helper, direction=direction
        )
    render.emit(state, {"conntrack_helper": binding}, render.print_object, binding)


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
    render.emit(
        state,
        None,
        render.print_line,
        f"Deleted conntrack helper {helper_id} of router {router_id}",
    )
