"""`cthm router ...`: create, list, show, update and delete routers."""

from __future__ import annotations

import click

from cthm.cli import render
from cthm.cli.context import CliState, json_option, pass_state
from cthm.cli.resolve import complete_router, resolve_router


@click.group("router")
def router_group() -> None:
    """Manage routers (network namespaces that get conntrack helpers)."""


@router_group.command("create")
@click.argument("name")
@click.option("--project", "project_id", required=True, help="Project (tenant) that owns it.")
@click.option("--namespace", default=None, help="Network namespace [default: qrouter-<id>].")
@click.option(
    "--id",
    "router_id",
    default=None,
    metavar="UUID",
    help="Register it under this id (admin only): a Neutron router's own id, so that the "
    "default namespace is the one Neutron's L3 agent made. [default: a new id]",
)
@json_option
@pass_state
def create(
    state: CliState, name: str, project_id: str, namespace: str | None, router_id: str | None
) -> None:
    """Create a router called NAME."""
    with state.client() as client:
        router = client.create_router(
            name=name, project_id=project_id, namespace=namespace, router_id=router_id
        )
    render.emit(state, {"router": router}, render.print_router, router)


@router_group.command("list")
@click.option("--project", "project_id", default=None, help="Only routers of this project.")
@json_option
@pass_state
def list_(state: CliState, project_id: str | None) -> None:
    """List routers."""
    with state.client() as client:
        routers = client.list_routers(project_id=project_id)
    render.emit(state, {"routers": routers}, render.print_routers, routers)


@router_group.command("show")
@click.argument("router", shell_complete=complete_router)
@json_option
@pass_state
def show(state: CliState, router: str) -> None:
    """Show ROUTER (an id or a name) and its conntrack helpers."""
    with state.client() as client:
        found = resolve_router(client, router)
    render.emit(state, {"router": found}, render.print_router, found)


@router_group.command("update")
@click.argument("router", shell_complete=complete_router)
@click.option("--name", required=True, help="The new name.")
@json_option
@pass_state
def update(state: CliState, router: str, name: str) -> None:
    """Rename ROUTER (an id or a name)."""
    with state.client() as client:
        router_id = resolve_router(client, router)["id"]
        updated = client.update_router(router_id, name=name)
    render.emit(state, {"router": updated}, render.print_router, updated)


@router_group.command("delete")
@click.argument("router", shell_complete=complete_router)
@json_option
@pass_state
def delete(state: CliState, router: str) -> None:
    """Delete ROUTER (an id or a name) and all its conntrack helpers."""
    with state.client() as client:
        router_id = resolve_router(client, router)["id"]
        client.delete_router(router_id)
    # --json prints nothing: scripts get the exit status, and a 204 has no body.
    render.emit(state, None, render.print_line, f"Deleted router {router_id}")


@router_group.command("resync")
@click.argument("router", shell_complete=complete_router)
@json_option
@pass_state
def resync(state: CliState, router: str) -> None:
    """Reconcile ROUTER (an id or a name) in full now: its agents read its kernel table again
    and repair any difference. Returns once asked; `cthm status ROUTER` shows the result."""
    with state.client() as client:
        found = resolve_router(client, router)
        answer = client.resync_router(found["id"])
    render.emit(
        state,
        {"resync": answer},
        render.print_line,
        f"Resync of router {found.get('name') or found['id']} ({found['id']}) requested",
    )
