"""`cthm helper ...`: the conntrack helpers (bindings) of one router."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click

from cthm.cli import render
from cthm.cli.client import ClientError, CthmClient, JSONObject
from cthm.cli.context import CliState, json_option, pass_state
from cthm.cli.errors import Failure, TimedOutFailure
from cthm.cli.resolve import (
    complete_router,
    is_uuid,
    resolve_binding,
    resolve_router,
    router_label,
)

F = TypeVar("F", bound=Callable[..., Any])


DIRECTIONS = ("ingress", "output")
DEFAULT_WAIT = 30.0  # seconds `create --wait` waits for the kernel at most
WAIT_POLL = 0.2
SETTLED = ("ACTIVE", "ERROR")
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
        click.option(
            "--protocol",
            metavar="tcp|udp",
            required=required,
            callback=_lower,
            help="The protocol (any case).",
        ),
        click.option("--port", type=int, required=required, help="Destination port (1-65535)."),
        click.option("--helper", metavar="NAME", required=required, help="See `cthm catalog`."),
        click.option("--direction", type=click.Choice(DIRECTIONS), help=DIRECTION_HELP + default),
    )

    def decorate(function: F) -> F:
        for option in reversed(options):  # shown in --help in the order listed
            function = option(function)
        return function

    return decorate


def _lower(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    # Protocol names are the kernel's, in lower case: TCP is tcp. The server judges the rest.
    return value.lower() if value is not None else None


def _binding_id(client: CthmClient, router: JSONObject, ref: str) -> str:
    """The id `ref` names (resolve.resolve_binding); a whole id is taken as it is."""
    return ref if is_uuid(ref) else str(resolve_binding(client, router, ref)["id"])


@contextmanager
def _named_not_found(router: JSONObject, binding_id: str) -> Iterator[None]:
    """A 404 of the binding said with the router's name (the API knows only ids)."""
    try:
        yield
    except ClientError as exc:
        if exc.status != 404 or exc.type == "RouterNotFound":
            raise
        raise ClientError(
            404, exc.type, f"router {router_label(router)} has no conntrack helper {binding_id}"
        ) from None


@click.group("helper")
def helper_group() -> None:
    """Manage the conntrack helpers of a router."""


@helper_group.command("create")
@click.argument("router", shell_complete=complete_router)
@binding_options(required=True)
@click.option(
    "--wait",
    is_flag=True,
    help="Return once the kernel has it: exit 0 when ACTIVE, 1 when in ERROR (the reason "
    "printed), 4 when still PENDING after --wait-timeout.",
)
@click.option(
    "--wait-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_WAIT,
    show_default=True,
    help="Seconds --wait waits at most.",
)
@json_option
@pass_state
def create(
    state: CliState,
    router: str,
    protocol: str,
    port: int,
    helper: str,
    direction: str | None,
    wait: bool,
    wait_timeout: float,
) -> None:
    """Give connections to --protocol/--port on ROUTER (an id or a name) the helper --helper."""
    with state.client() as client:
        found = resolve_router(client, router)
        binding = client.create_helper(
            found["id"], protocol=protocol, port=port, helper=helper, direction=direction
        )
        if wait:
            binding = _wait_settled(client, found, binding, wait_timeout)
    render.emit(state, {"conntrack_helper": binding}, render.print_object, binding)
    if binding.get("status") == "ERROR":
        reason = binding.get("status_reason") or "no reason given"
        raise Failure(
            f"conntrack helper {binding['id']} of router {router_label(found)} is in ERROR: "
            f"{reason}"
        )


def _wait_settled(
    client: CthmClient, router: JSONObject, binding: JSONObject, timeout: float
) -> JSONObject:
    """The binding once it is ACTIVE or in ERROR, read again every WAIT_POLL seconds; a
    TimedOutFailure when neither within `timeout` (bounded in time and count)."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / WAIT_POLL) + 2):
        if binding.get("status") in SETTLED:
            return binding
        left = deadline - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(WAIT_POLL, left))
        binding = client.get_helper(str(router["id"]), str(binding["id"]))
    if binding.get("status") in SETTLED:
        return binding
    raise TimedOutFailure(
        f"conntrack helper {binding['id']} of router {router_label(router)} is still "
        f"{binding.get('status')} after {timeout:g}s (it was created; `cthm status "
        f"{router.get('name') or router['id']}` tells more)"
    )


@helper_group.command("list")
@click.argument("router", shell_complete=complete_router)
@json_option
@pass_state
def list_(state: CliState, router: str) -> None:
    """List the conntrack helpers of ROUTER (an id or a name)."""
    with state.client() as client:
        router_id = resolve_router(client, router)["id"]
        bindings = client.list_helpers(router_id)
    render.emit(state, {"conntrack_helpers": bindings}, render.print_helpers, bindings)


@helper_group.command("show")
@click.argument("router", shell_complete=complete_router)
@click.argument("helper_id", metavar="ID")
@json_option
@pass_state
def show(state: CliState, router: str, helper_id: str) -> None:
    """Show conntrack helper ID of ROUTER (an id or a name). ID is the conntrack helper's id, a
    unique prefix of it, or PROTOCOL/PORT[/DIRECTION] (tcp/21, tcp/21/output)."""
    with state.client() as client:
        found = resolve_router(client, router)
        binding = resolve_binding(client, found, helper_id)
    render.emit(state, {"conntrack_helper": binding}, render.print_object, binding)


@helper_group.command("update")
@click.argument("router", shell_complete=complete_router)
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
    """Change conntrack helper ID of ROUTER (an id or a name); give at least one option.
    ID is the conntrack helper's id, a unique prefix of it, or PROTOCOL/PORT[/DIRECTION]."""
    if protocol is None and port is None and helper is None and direction is None:
        raise click.UsageError(
            "nothing to update: give --protocol, --port, --helper or --direction"
        )
    with state.client() as client:
        found = resolve_router(client, router)
        binding_id = _binding_id(client, found, helper_id)
        with _named_not_found(found, binding_id):
            binding = client.update_helper(
                found["id"],
                binding_id,
                protocol=protocol,
                port=port,
                helper=helper,
                direction=direction,
            )
    render.emit(state, {"conntrack_helper": binding}, render.print_object, binding)


@helper_group.command("delete")
@click.argument("router", shell_complete=complete_router)
@click.argument("helper_id", metavar="ID")
@json_option
@pass_state
def delete(state: CliState, router: str, helper_id: str) -> None:
    """Delete conntrack helper ID of ROUTER (an id or a name). ID is the conntrack helper's
    id, a unique prefix of it, or PROTOCOL/PORT[/DIRECTION]."""
    with state.client() as client:
        found = resolve_router(client, router)
        binding_id = _binding_id(client, found, helper_id)
        with _named_not_found(found, binding_id):
            client.delete_helper(found["id"], binding_id)
    render.emit(
        state,
        None,
        render.print_line,
        f"Deleted conntrack helper {binding_id} of router {found['id']}",
    )
