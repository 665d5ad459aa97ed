"""`cthm catalog`: the helpers that may be bound on this deployment."""

from __future__ import annotations

import click

from cthm.cli import render
from cthm.cli.context import CliState, json_option, pass_state


@click.command("catalog")
@json_option
@pass_state
def catalog(state: CliState) -> None:
    """List the conntrack helpers that may be bound, and whether this host's kernel has them."""
    with state.client() as client:
        body = client.catalog()
    render.emit(state, body, render.print_catalog, body)
