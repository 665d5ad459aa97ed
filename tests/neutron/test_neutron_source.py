"""The pieces of cthm's Neutron L3 agent extension that need no kernel: Neutron's helpers as
cthm's desired state (source.py), the plan that removes Neutron's chains (migration.py) and the
state files (state_file.py). Neutron's real ConntrackHelper objects throughout."""

from __future__ import annotations

import json
import stat
import uuid
from pathlib import Path
from typing import Any

import pytest

from cthm.agent import RouterReport
from cthm.domain import HelperCatalog, InvalidInput, Protocol, Status
from cthm.neutron.migration import plan_removal
from cthm.neutron.source import NeutronSource, make_router
from cthm.neutron.state_file import read_state, remove_state, write_state

pytest.importorskip("neutron")

from neutron.objects.conntrack_helper import ConntrackHelper


def helper(router_id: str, protocol: str, port: int, name: str, id: str | None = None) -> Any:
    return ConntrackHelper(
        id=id or str(uuid.uuid4()), router_id=router_id, protocol=protocol, port=port, helper=name
    )


def hosted(source: NeutronSource, *helpers: Any, router_id: str | None = None) -> str:
    router_id = router_id or str(uuid.uuid4())
    source.set_router(make_router(router_id, f"qrouter-{router_id}"), helpers)
    return router_id


def ports(source: NeutronSource, router_id: str) -> set[tuple[str, int, str]]:
    desired = source.load(router_id)
    assert desired is not None
    return {(b.protocol.value, b.port, b.helper) for b in desired.bindings}


def test_a_sync_of_one_router_never_touches_anothers() -> None:
    """Neutron's extension: a sync of one router drops other routers' helpers from its map."""
    source = NeutronSource(HelperCatalog())
    first = hosted(source)
    second = hosted(source)
    source.set_router(make_router(first, f"qrouter-{first}"), [helper(first, "tcp", 21, "ftp")])
    source.set_router(make_router(second, f"qrouter-{second}"), [helper(second, "udp", 69, "tftp")])

    source.set_router(make_router(first, f"qrouter-{first}"), [helper(first, "tcp", 2121, "ftp")])

    assert ports(source, first) == {("tcp", 2121, "ftp")}
    assert ports(source, second) == {("udp", 69, "tftp")}


def test_every_item_of_a_batch_is_processed() -> None:
    """Neutron's extension returns at the first helper of an unknown router."""
    source = NeutronSource(HelperCatalog())
    router_id = hosted(source)
    unknown = str(uuid.uuid4())

    changed = source.upsert(
        [
            helper(unknown, "tcp", 21, "ftp"),
            helper(router_id, "tcp", 21, "ftp"),
            helper(router_id, "udp", 69, "tftp"),
        ]
    )

    assert changed == {router_id}
    assert ports(source, router_id) == {("tcp", 21, "ftp"), ("udp", 69, "tftp")}
    assert not source.knows(unknown)


def test_update_and_delete_by_helper_id() -> None:
    source = NeutronSource(HelperCatalog())
    ftp = helper(str(uuid.uuid4()), "tcp", 21, "ftp")
    router_id = hosted(source, ftp, router_id=ftp.router_id)
    before = source.load(router_id)
    assert before is not None

    source.upsert([helper(router_id, "tcp", 2121, "ftp", id=ftp.id)])
    after = source.load(router_id)
    assert after is not None
    assert ports(source, router_id) == {("tcp", 2121, "ftp")}
    # Every change moves the router's revision: the reconciler tells change from drift by it.
    assert after.router.revision_number > before.router.revision_number

    assert source.remove([ftp]) == {router_id}
    assert ports(source, router_id) == set()


def test_a_refused_helper_is_reported_and_the_others_kept() -> None:
    source = NeutronSource(HelperCatalog())
    router_id = str(uuid.uuid4())
    irc = helper(router_id, "udp", 6667, "irc")  # the kernel's irc helper is tcp only
    hosted(source, irc, helper(router_id, "tcp", 21, "ftp"), router_id=router_id)

    desired = source.load(router_id)

    assert desired is not None
    assert [(b.helper, b.protocol, b.port) for b in desired.bindings] == [("ftp", Protocol.TCP, 21)]
    assert [(r.binding_id, r.status) for r in desired.rejected] == [(irc.id, Status.ERROR)]
    assert "irc does not support udp" in desired.rejected[0].reason


def test_neutrons_h323_is_cthms_pair_and_ingress() -> None:
    source = NeutronSource(HelperCatalog())
    router_id = str(uuid.uuid4())
    hosted(
        source,
        helper(router_id, "udp", 1719, "h323"),
        helper(router_id, "tcp", 1720, "h323"),
        router_id=router_id,
    )
    desired = source.load(router_id)
    assert desired is not None
    assert {b.direction.value for b in desired.bindings} == {"ingress"}
    assert not desired.rejected


def test_reports_become_the_routers_status() -> None:
    source = NeutronSource(HelperCatalog())
    ftp = helper(str(uuid.uuid4()), "tcp", 21, "ftp")
    router_id = hosted(source, ftp, router_id=ftp.router_id)
    desired = source.load(router_id)
    assert desired is not None
    binding = desired.bindings[0]

    from cthm.agent import BindingReport

    source.report(
        RouterReport(
            router_id,
            desired.router.revision_number,
            Status.ACTIVE,
            "",
            (BindingReport(binding.id, binding.revision_number, Status.ACTIVE),),
        )
    )

    assert [b.id for b in source.managed(router_id)] == [ftp.id]
    held = source.status(router_id)
    assert held is not None
    assert held[0].status is Status.ACTIVE
    assert held[1] == [
        {
            "id": ftp.id,
            "protocol": "tcp",
            "port": 21,
            "helper": "ftp",
            "status": "ACTIVE",
            "reason": "",
        }
    ]
    # Unchanged since: the same bindings tuple (the reconciler reuses what it derived).
    again = source.load(router_id)
    assert again is not None
    reloaded = source.reload(router_id, again)
    assert reloaded is not None
    assert reloaded.bindings is again.bindings


def test_a_forgotten_router_leaves_a_tombstone_with_its_namespace() -> None:
    source = NeutronSource(HelperCatalog())
    router_id = hosted(source, helper(str(uuid.uuid4()), "tcp", 21, "ftp"))

    assert source.forget_router(router_id) == f"qrouter-{router_id}"

    assert source.load(router_id) is None
    assert source.tombstones() == {router_id: f"qrouter-{router_id}"}
    source.clear_tombstone(router_id)
    assert source.tombstones() == {}


def test_an_unusable_router_name_or_project_is_replaced_an_unusable_id_refused() -> None:
    router_id = str(uuid.uuid4())
    router = make_router(router_id, f"qrouter-{router_id}", name="a\nb", project_id="bad id")
    assert (router.name, router.project_id) == ("", "neutron")
    with pytest.raises(InvalidInput):
        make_router("not-a-uuid", "qrouter-x")
    with pytest.raises(InvalidInput):
        make_router(router_id, "-evil")


# --- the migration's restore -----------------------------------------------------------------

SAVED = """# Generated by iptables-save v1.8.9 (nf_tables)
*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:neutron-l3-agent-OUTPUT - [0:0]
:neutron-l3-agent-PREROUTING - [0:0]
:neutron-l3-agent-cth - [0:0]
:neutron-l3-agent-cth-1111111 - [0:0]
:neutron-l3-agent-cth-2222222 - [0:0]
-A PREROUTING -j neutron-l3-agent-PREROUTING
-A OUTPUT -j neutron-l3-agent-OUTPUT
-A neutron-l3-agent-PREROUTING -j neutron-l3-agent-cth
-A neutron-l3-agent-cth -j neutron-l3-agent-cth-1111111
-A neutron-l3-agent-cth -j neutron-l3-agent-cth-2222222
-A neutron-l3-agent-cth-1111111 -p tcp -m tcp --dport 21 -j CT --helper ftp
-A neutron-l3-agent-cth-2222222 -p udp -m udp --dport 69 -j CT --helper tftp
COMMIT
"""
FTP_ID = "11111111-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
TFTP_ID = "22222222-bbbb-4bbb-8bbb-bbbbbbbbbbbb"


def test_the_migration_removes_only_the_managed_helpers_chains() -> None:
    plan = plan_removal(SAVED, [FTP_ID], [TFTP_ID])

    assert plan is not None
    assert plan.chains == ("neutron-l3-agent-cth-1111111",)
    assert plan.text == (
        "*raw\n"
        "-D neutron-l3-agent-cth -j neutron-l3-agent-cth-1111111\n"
        "-F neutron-l3-agent-cth-1111111\n"
        "-X neutron-l3-agent-cth-1111111\n"
        "COMMIT\n"
    )


def test_the_migration_removes_the_cth_chain_and_its_jump_when_none_is_left() -> None:
    plan = plan_removal(SAVED, [FTP_ID, TFTP_ID], [])

    assert plan is not None
    assert plan.text == (
        "*raw\n"
        "-D neutron-l3-agent-PREROUTING -j neutron-l3-agent-cth\n"
        "-F neutron-l3-agent-cth\n"
        "-X neutron-l3-agent-cth\n"
        "-F neutron-l3-agent-cth-1111111\n"
        "-X neutron-l3-agent-cth-1111111\n"
        "-F neutron-l3-agent-cth-2222222\n"
        "-X neutron-l3-agent-cth-2222222\n"
        "COMMIT\n"
    )


def test_the_migration_keeps_a_chain_an_unmanaged_helper_shares_and_finds_nothing_else() -> None:
    sharing = "11111112-cccc-4ccc-8ccc-cccccccccccc"  # same first 7 characters as FTP_ID
    assert plan_removal(SAVED, [FTP_ID], [sharing]) is None
    assert plan_removal(SAVED, [str(uuid.uuid4())], []) is None
    assert plan_removal("*raw\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n", [FTP_ID], []) is None


# --- state files ---------------------------------------------------------------------------


def test_state_files_are_whole_0644_and_removable(tmp_path: Path) -> None:
    router_id = str(uuid.uuid4())
    assert read_state(tmp_path, router_id) is None

    path = write_state(tmp_path, router_id, {"status": "ACTIVE"})
    write_state(tmp_path, router_id, {"status": "ERROR"})

    assert path == tmp_path / f"{router_id}.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert json.loads(path.read_text())["status"] == "ERROR"
    assert read_state(tmp_path, router_id) == {"format": 1, "status": "ERROR"}
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left
    remove_state(tmp_path, router_id)
    assert not path.exists()
    with pytest.raises(InvalidInput):
        read_state(tmp_path, "../../etc/passwd")
