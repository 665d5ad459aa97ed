"""`cthm import neutron`: register a Neutron API's routers and conntrack helpers in cthm."""

from __future__ import annotations

from typing import Any

import click

from cthm.cli import render
from cthm.cli.context import CliState, json_option, pass_state
from cthm.cli.errors import (
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    Failure,
    SettingsFailure,
    UnreachableFailure,
)
from cthm.cli.neutron import (
    Action,
    NeutronError,
    Outcome,
    Step,
    apply_plan,
    make_plan,
    read_neutron,
    say_each,
    step_body,
)


def _failure(error: NeutronError) -> Failure:
    """Neutron could not be read: one line, with the exit status NeutronError chose."""
    kinds: dict[int, type[Failure]] = {
        EXIT_USAGE: SettingsFailure,
        EXIT_UNREACHABLE: UnreachableFailure,
    }
    return kinds.get(error.exit_code, Failure)(error.message)


@click.group("import")
def import_group() -> None:
    """Register in cthm what another system manages."""


@import_group.command("neutron")
@click.option(
    "--cloud",
    envvar="OS_CLOUD",
    required=True,
    help="The cloud in clouds.yaml whose Neutron to read (as `openstack --os-cloud`; "
    "OS_CLIENT_CONFIG_FILE names the file). [env OS_CLOUD]",
)
@click.option("--dry-run", is_flag=True, help="Print the plan only; change nothing.")
@json_option
@pass_state
def neutron(state: CliState, cloud: str, dry_run: bool) -> None:
    """Register Neutron's routers (same ids, names, projects) and their conntrack helpers.

    Prints the plan first, then carries it out. Only adds: what cthm has already is skipped,
    and left as is where it differs (a conflict, exit status 1), so a second run changes
    nothing. Needs an admin token for cthm (to give routers Neutron's ids). --json: one
    object at the end, every step with its outcome.
    """
    try:
        routers = read_neutron(cloud, state.timeout)
    except NeutronError as exc:
        raise _failure(exc) from None
    outcomes: dict[Step, tuple[Outcome, str]] = {}

    def report(step: Step, outcome: Outcome, detail: str) -> None:
        outcomes[step] = (outcome, detail)
        if not state.json:
            say_each(click.echo)(step, outcome, detail)

    with state.client() as client:
        plan = make_plan(routers, client.list_routers())
        _say(state, f"Plan for the routers of cloud {cloud!r} ({len(routers)} in Neutron):")
        for step in plan.steps:
            _say(state, f"  {step}")
        _say(state, f"Summary: {plan.summary()}.")
        failed = 0
        if dry_run:
            _say(state, "Dry run: nothing changed.")
        elif not plan.changes:
            _say(state, "Nothing to do: cthm already has every router and helper it can import.")
        else:
            failed = apply_plan(client, plan, report)
            done = len(plan.changes) - failed
            _say(state, f"Imported: {done} of {len(plan.changes)} changes made.")
    if state.json:
        steps = [_step_json(step, outcomes.get(step)) for step in plan.steps]
        body = {"cloud": cloud, "dry_run": dry_run, "neutron_routers": len(routers)}
        render.print_json({"import": {**body, "steps": steps}})
    if failed:
        raise Failure(f"{failed} of {len(plan.changes)} changes failed (see above)")
    conflicts = plan.count(Action.CONFLICT)
    if conflicts:
        raise Failure(f"{conflicts} conflicting item(s) left as they are in cthm (see above)")


def _say(state: CliState, line: str) -> None:
    if not state.json:  # --json prints one object, at the end
        click.echo(line)


def _step_json(step: Step, outcome: tuple[Outcome, str] | None) -> dict[str, Any]:
    """outcome None: the step was not tried (a skip, a conflict, a dry run)."""
    done, detail = (None, "") if outcome is None else (outcome[0].value, outcome[1])
    return {**step_body(step), "outcome": done, "detail": detail}
