"""`cthm import neutron`'s plan (cthm.cli.neutron.make_plan): Neutron's routers against cthm's,
as the cthm API lists them. Pure: no server (the import itself: tests/openstack)."""

from __future__ import annotations

from typing import Any

from cthm.cli.neutron import Action, NeutronHelper, NeutronRouter, make_plan

R1 = "11111111-1111-4111-8111-111111111111"
R2 = "22222222-2222-4222-8222-222222222222"
FTP = NeutronHelper("tcp", 21, "ftp")
TFTP = NeutronHelper("udp", 69, "tftp")


def _cthm(router_id: str, project: str, *bindings: tuple[str, int, str, str]) -> dict[str, Any]:
    return {
        "id": router_id,
        "project_id": project,
        "namespace": f"qrouter-{router_id}",
        "conntrack_helpers": [
            {"protocol": p, "port": n, "helper": h, "direction": d} for p, n, h, d in bindings
        ],
    }


def _steps(plan: Any) -> list[tuple[Action, str, NeutronHelper | None]]:
    return [(s.action, s.router.id, s.helper) for s in plan.steps]


def test_everything_new_is_created_in_name_order() -> None:
    plan = make_plan(
        [NeutronRouter(R2, "b", "p2", ()), NeutronRouter(R1, "a", "p1", (FTP, TFTP))], []
    )
    assert _steps(plan) == [
        (Action.CREATE_ROUTER, R1, None),
        (Action.ADD_HELPER, R1, FTP),
        (Action.ADD_HELPER, R1, TFTP),
        (Action.CREATE_ROUTER, R2, None),
    ]
    assert plan.summary() == "2 routers to create, 2 helpers to add, 0 already in cthm, 0 conflicts"


def test_what_cthm_has_is_skipped_and_only_the_rest_added() -> None:
    cthm = [_cthm(R1, "p1", ("tcp", 21, "ftp", "ingress"))]
    plan = make_plan([NeutronRouter(R1, "a", "p1", (FTP, TFTP))], cthm)
    assert _steps(plan) == [
        (Action.SKIP, R1, None),
        (Action.SKIP, R1, FTP),
        (Action.ADD_HELPER, R1, TFTP),
    ]
    assert [s.router.id for s in plan.changes] == [R1]


def test_nothing_to_do_when_cthm_has_it_all() -> None:
    cthm = [_cthm(R1, "p1", ("tcp", 21, "ftp", "ingress"))]
    plan = make_plan([NeutronRouter(R1, "a", "p1", (FTP,))], cthm)
    assert plan.changes == ()
    assert plan.count(Action.SKIP) == 2


def test_another_helper_on_the_port_is_a_conflict_left_as_is() -> None:
    cthm = [_cthm(R1, "p1", ("tcp", 21, "sip", "ingress"))]
    plan = make_plan([NeutronRouter(R1, "a", "p1", (FTP,))], cthm)
    (_, conflict) = plan.steps
    assert (conflict.action, conflict.helper) == (Action.CONFLICT, FTP)
    assert "tcp/21 is bound to sip" in str(conflict)
    assert plan.changes == ()


def test_an_output_binding_does_not_stand_for_neutrons_ingress_one() -> None:
    cthm = [_cthm(R1, "p1", ("tcp", 21, "ftp", "output"))]
    plan = make_plan([NeutronRouter(R1, "a", "p1", (FTP,))], cthm)
    assert _steps(plan)[1] == (Action.ADD_HELPER, R1, FTP)


def test_two_neutron_helpers_on_one_port_the_second_conflicts() -> None:
    sip = NeutronHelper("tcp", 21, "sip")  # Neutron's unique key includes the helper
    plan = make_plan([NeutronRouter(R1, "a", "p1", (FTP, sip))], [])
    assert [s.action for s in plan.steps] == [
        Action.CREATE_ROUTER,
        Action.ADD_HELPER,
        Action.CONFLICT,
    ]


def test_a_namespace_taken_by_another_cthm_router_is_a_conflict() -> None:
    squatter = {**_cthm(R2, "p1"), "namespace": f"qrouter-{R1}"}
    plan = make_plan([NeutronRouter(R1, "a", "p1", (FTP,))], [squatter])
    (step,) = plan.steps  # its helpers are not planned: the router will not exist
    assert step.action is Action.CONFLICT
    assert f"cthm router {R2} already has namespace qrouter-{R1}" in str(step)


def test_a_router_in_another_project_is_skipped_and_says_so() -> None:
    plan = make_plan([NeutronRouter(R1, "a", "p1", ())], [_cthm(R1, "p9")])
    (step,) = plan.steps
    assert step.action is Action.SKIP
    assert "in project p9, left there" in str(step)
