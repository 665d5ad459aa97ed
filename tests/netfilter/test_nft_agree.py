"""The same golden cases against the fake, libnftables and the nft binary: they must agree.

Each case is a list of transactions, each with the outcome it must have (success or an error
class), and the table `parse_table` must read at the end. For the real runners the whole
ruleset (handles aside) must also equal what the fake holds after the same case, so the fake's
JSON stays shaped like nft's.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cthm.domain import KERNEL_HELPERS, Assignment, Direction, Protocol
from cthm.netfilter import (
    FakeNftables,
    HelperObject,
    KernelTable,
    LibNftablesRunner,
    NamespaceNotFound,
    NftablesBackend,
    NftBusy,
    NftError,
    NftExists,
    NftNotFound,
    NftOther,
    NftRunner,
    SubprocessRunner,
    Transaction,
    desired_table,
    parse_table,
    render,
    render_delete,
)
from cthm.netfilter.model import PREVIOUS_LAYOUT
from cthm.testing import NamespaceFactory

from .conftest import FOREIGN_RULESET, normalized_ruleset

TCP, UDP = Protocol.TCP, Protocol.UDP
OWNER_A = "6f1d2c3b-0000-4000-8000-00000000000a"
OWNER_B = "6f1d2c3b-0000-4000-8000-00000000000b"
ALL = [
    Assignment(protocol, spec.default_port + offset, spec.name)
    for spec in KERNEL_HELPERS
    for offset, protocol in enumerate(sorted(spec.protocols))
]
FTP = [Assignment(TCP, 21, "ftp"), Assignment(TCP, 2121, "ftp")]
TFTP = [Assignment(UDP, 69, "tftp")]
OUT = Direction.OUTPUT
MIXED = [*FTP, Assignment(TCP, 21, "irc", OUT), Assignment(UDP, 69, "tftp", OUT)]
OUTPUT_CHAIN = "add chain inet cthm output { type filter hook output priority filter; }\n"
BAD_TYPE = 'add ct helper inet cthm x { type "nosuchhelper" protocol tcp; l3proto inet; }\n'
CHAIN = "add chain inet cthm prerouting { type filter hook prerouting priority filter; }\n"


@dataclass(frozen=True)
class Step:
    commands: str
    error: type[NftError] | None = None
    dry_run: bool = False
    json: bool = False
    absent: bool = False  # run in a namespace that does not exist


@dataclass(frozen=True)
class Case:
    steps: tuple[Step, ...]
    table: KernelTable | None


def rendered(assignments: list[Assignment]) -> Step:
    return Step(str(render(assignments)))


def previous_layout(assignments: list[Assignment]) -> Step:
    """The table a cthm before named sets wrote: one anonymous map rule per protocol and
    direction (rendered by hand here, as the renderer no longer writes it)."""
    tx = Transaction()
    tx.add_table()
    tx.delete_table()
    tx.add_table()
    for helper_type, protocol in sorted({(a.helper, a.protocol) for a in assignments}):
        tx.add_helper(helper_type, protocol)
    for direction in Direction:
        mine = sorted(
            (a.protocol, a.port, a.helper) for a in assignments if a.direction is direction
        )
        if not mine:
            continue
        tx.add_chain(direction)
        for protocol in sorted({p for p, _, _ in mine}):
            entries = [(port, f"{h}-{protocol}") for p, port, h in mine if p is protocol]
            tx.add_helper_map(protocol, entries, direction)
    return Step(str(tx))


FTP_SET = "ingress-ftp-tcp"
FTP_RULE = f'add rule inet cthm prerouting tcp dport @{FTP_SET} ct helper set "ftp-tcp"\n'
FTP_990 = [*FTP, Assignment(TCP, 990, "ftp")]


def garbage_table(assignments: list[Assignment], *garbage: str) -> KernelTable:
    clean = desired_table(assignments)
    return KernelTable(clean.assignments, clean.helpers, garbage)


CASES: dict[str, Case] = {
    "every catalog helper": Case((rendered(ALL),), desired_table(ALL)),
    "no assignments: empty table": Case((rendered(FTP), rendered([])), desired_table([])),
    "replace swaps helpers": Case((rendered(FTP), rendered(TFTP)), desired_table(TFTP)),
    "replace is idempotent": Case((rendered(FTP), rendered(FTP)), desired_table(FTP)),
    "delete table": Case((rendered(FTP), Step(str(render_delete()))), None),
    "delete missing table": Case((Step(str(render_delete()), NftNotFound),), None),
    "list missing table": Case((Step("list table inet cthm", NftNotFound, json=True),), None),
    "missing namespace": Case((Step(str(render(FTP)), NamespaceNotFound, absent=True),), None),
    "EBUSY on referenced helper object": Case(
        (rendered(FTP), Step("delete ct helper inet cthm ftp-tcp\n", NftBusy)),
        desired_table(FTP),
    ),
    "unknown helper type, all or nothing": Case(
        (rendered(FTP), Step(str(render(TFTP)) + BAD_TYPE, NftNotFound)), desired_table(FTP)
    ),
    "helper type on the wrong protocol": Case(
        (
            rendered(FTP),
            Step(
                'add ct helper inet cthm f { type "ftp" protocol udp; l3proto inet; }\n',
                NftNotFound,
            ),
        ),
        desired_table(FTP),
    ),
    "IPv4-only helper refuses ip6": Case(
        (
            rendered(FTP),
            Step(
                'add ct helper inet cthm i { type "irc" protocol tcp; l3proto ip6; }\n', NftNotFound
            ),
        ),
        desired_table(FTP),
    ),
    "create existing table": Case(
        (rendered(FTP), Step("create table inet cthm\n", NftExists)), desired_table(FTP)
    ),
    "add of an existing object is a silent no-op": Case(
        (
            rendered(FTP),
            Step('add ct helper inet cthm ftp-tcp { type "tftp" protocol udp; l3proto inet; }\n'),
        ),
        desired_table(FTP),
    ),
    "duplicate map key": Case(
        (
            rendered([*FTP, Assignment(TCP, 1720, "Q.931")]),
            Step(
                "add rule inet cthm prerouting ct helper set tcp dport map "
                '{ 21 : "ftp-tcp", 21 : "Q.931-tcp" }\n',
                NftExists,
            ),
        ),
        desired_table([*FTP, Assignment(TCP, 1720, "Q.931")]),
    ),
    "map to a missing object": Case(
        (
            rendered(FTP),
            Step(
                'add rule inet cthm prerouting ct helper set tcp dport map { 22 : "nosuch" }\n',
                NftNotFound,
            ),
        ),
        desired_table(FTP),
    ),
    "later failure undoes earlier commands": Case(
        (rendered(FTP), Step("delete table inet cthm\ndelete table inet cthm\n", NftNotFound)),
        desired_table(FTP),
    ),
    "dry run changes nothing": Case((Step(str(render(FTP)), dry_run=True),), None),
    "dry run of an unknown type fails": Case(
        (Step("add table inet cthm\n" + BAD_TYPE, NftNotFound, dry_run=True),), None
    ),
    "hand-made garbage": Case(
        (
            rendered(FTP),
            Step(
                "add chain inet cthm extra\n"
                "add rule inet cthm prerouting counter\n"
                'add rule inet cthm prerouting tcp dport 21 ct helper set "ftp-tcp"\n'
                'add rule inet cthm prerouting drop comment "hi"\n'
            ),
        ),
        garbage_table(
            FTP,
            "chain extra (cthm renders only chains prerouting and output)",
            "rule in chain prerouting that cthm did not render: counter",
            "rule in chain prerouting that cthm did not render: tcp dport == 21, "
            "ct helper set ftp-tcp",
            'rule in chain prerouting that cthm did not render: drop, comment "hi"',
        ),
    ),
    "chain at raw priority": Case(
        (
            Step(
                "add table inet cthm\n"
                'add ct helper inet cthm ftp-tcp { type "ftp" protocol tcp; l3proto inet; }\n'
                "add set inet cthm ingress-ftp-tcp { type inet_service; elements = { 21 }; }\n"
                "add chain inet cthm prerouting { type filter hook prerouting priority raw; }\n"
                + FTP_RULE
            ),
        ),
        garbage_table(
            [Assignment(TCP, 21, "ftp")],
            "chain prerouting is type filter hook prerouting prio -300 policy accept; "
            "cthm renders type filter hook prerouting prio 0 policy accept",
        ),
    ),
    "policy can change, hook cannot": Case(
        (
            rendered(FTP),
            Step(
                "add chain inet cthm prerouting "
                "{ type filter hook prerouting priority filter; policy drop; }\n"
            ),
            Step(
                "add chain inet cthm prerouting { type filter hook input priority filter; }\n",
                NftOther,
            ),
        ),
        garbage_table(
            FTP,
            "chain prerouting is type filter hook prerouting prio 0 policy drop; "
            "cthm renders type filter hook prerouting prio 0 policy accept",
        ),
    ),
    "flush table leaves unused objects and an empty chain": Case(
        (rendered(FTP), Step("flush table inet cthm\n")),
        KernelTable(
            (),
            frozenset({HelperObject("ftp-tcp", "ftp", TCP, "inet")}),
            (
                "chain prerouting is empty (cthm renders no empty chain)",
                "set ingress-ftp-tcp is not used by any cthm rule",
                "ct helper ftp-tcp is not used by any cthm rule",
            ),
        ),
    ),
    "delete chain takes its rules": Case(
        (rendered(FTP), Step("delete chain inet cthm prerouting\n")),
        KernelTable(
            (),
            frozenset({HelperObject("ftp-tcp", "ftp", TCP, "inet")}),
            (
                "set ingress-ftp-tcp is not used by any cthm rule",
                "ct helper ftp-tcp is not used by any cthm rule",
            ),
        ),
    ),
    "both directions share objects": Case((rendered(MIXED),), desired_table(MIXED)),
    "output only": Case((rendered(MIXED[2:]),), desired_table(MIXED[2:])),
    "emptying output drops its chain": Case((rendered(MIXED), rendered(FTP)), desired_table(FTP)),
    "same port, a helper per direction": Case(
        (rendered([*FTP, Assignment(TCP, 21, "ftp", OUT), Assignment(TCP, 2121, "irc", OUT)]),),
        desired_table([*FTP, Assignment(TCP, 21, "ftp", OUT), Assignment(TCP, 2121, "irc", OUT)]),
    ),
    "empty output chain": Case(
        (rendered(FTP), Step(OUTPUT_CHAIN)),
        garbage_table(FTP, "chain output is empty (cthm renders no empty chain)"),
    ),
    "output chain at raw priority": Case(
        (
            rendered(FTP),
            Step(
                "add set inet cthm output-ftp-tcp { type inet_service; elements = { 21 }; }\n"
                "add chain inet cthm output { type filter hook output priority raw; }\n"
                'add rule inet cthm output tcp dport @output-ftp-tcp ct helper set "ftp-tcp"\n'
            ),
        ),
        garbage_table(
            [*FTP, Assignment(TCP, 21, "ftp", OUT)],
            "chain output is type filter hook output prio -300 policy accept; "
            "cthm renders type filter hook output prio 0 policy accept",
        ),
    ),
    "foreign tables beside ours": Case(
        (Step(FOREIGN_RULESET), rendered(FTP), rendered(TFTP)), desired_table(TFTP)
    ),
    "foreign tables after delete": Case(
        (Step(FOREIGN_RULESET), rendered(FTP), Step(str(render_delete()))), None
    ),
    "add element": Case(
        (rendered(FTP), Step(f"add element inet cthm {FTP_SET} {{ 990 }}\n")),
        desired_table(FTP_990),
    ),
    "add of an element the set holds is a silent no-op": Case(
        (rendered(FTP), Step(f"add element inet cthm {FTP_SET} {{ 21, 990, 990 }}\n")),
        desired_table(FTP_990),
    ),
    "create of an element the set holds": Case(
        (rendered(FTP), Step(f"create element inet cthm {FTP_SET} {{ 21 }}\n", NftExists)),
        desired_table(FTP),
    ),
    "delete element": Case(
        (rendered(FTP_990), Step(f"delete element inet cthm {FTP_SET} {{ 21, 990 }}\n")),
        desired_table([FTP[1]]),
    ),
    "delete of a missing element undoes the transaction": Case(
        (
            rendered(FTP),
            Step(
                f"add element inet cthm {FTP_SET} {{ 990 }}\n"
                f"delete element inet cthm {FTP_SET} {{ 2121 }}\n"
                f"delete element inet cthm {FTP_SET} {{ 22 }}\n",
                NftNotFound,
            ),
        ),
        desired_table(FTP),
    ),
    "element of a missing set": Case(
        (rendered(FTP), Step("add element inet cthm output-ftp-tcp { 21 }\n", NftNotFound)),
        desired_table(FTP),
    ),
    "EBUSY on a set a rule references": Case(
        (rendered(FTP), Step(f"delete set inet cthm {FTP_SET}\n", NftBusy)),
        desired_table(FTP),
    ),
    "add set of an existing name adds its elements": Case(
        (
            rendered(FTP),
            Step(f"add set inet cthm {FTP_SET} {{ type inet_service; elements = {{ 990 }}; }}\n"),
        ),
        desired_table(FTP_990),
    ),
    "add set of an existing name and other flags": Case(
        (
            rendered(FTP),
            Step(
                f"add set inet cthm {FTP_SET} {{ type inet_service; flags dynamic; "
                "elements = { 990 }; }\n",
                NftExists,
            ),
        ),
        desired_table(FTP),
    ),
    "add set of an existing name and another type": Case(
        (rendered(FTP), Step(f"add set inet cthm {FTP_SET} {{ type ipv4_addr; }}\n", NftExists)),
        desired_table(FTP),
    ),
    "rule naming a missing set": Case(
        (
            rendered(FTP),
            Step(
                'add rule inet cthm prerouting tcp dport @nosuch ct helper set "ftp-tcp"\n',
                NftNotFound,
            ),
        ),
        desired_table(FTP),
    ),
    "list set": Case(
        (rendered(FTP), Step(f"list set inet cthm {FTP_SET}", json=True)), desired_table(FTP)
    ),
    "list missing set": Case(
        (rendered(FTP), Step("list set inet cthm output-ftp-tcp", NftNotFound, json=True)),
        desired_table(FTP),
    ),
    "emptied set": Case(
        (rendered(FTP), Step(f"delete element inet cthm {FTP_SET} {{ 21, 2121 }}\n")),
        KernelTable(
            (),
            frozenset({HelperObject("ftp-tcp", "ftp", TCP, "inet")}),
            (
                "set ingress-ftp-tcp is empty (cthm renders no empty set)",
                "rule in chain prerouting that cthm did not render: "
                "tcp dport == @ingress-ftp-tcp, ct helper set ftp-tcp",
                "ct helper ftp-tcp is not used by any cthm rule",
            ),
        ),
    ),
    "previous layout reads as its assignments and garbage": Case(
        (previous_layout(MIXED),), garbage_table(MIXED, PREVIOUS_LAYOUT)
    ),
    "previous layout migrated by one full apply": Case(
        (previous_layout(MIXED), rendered(MIXED)), desired_table(MIXED)
    ),
    # nft 1.0.6 leaves a table's comment out of JSON: the owner is read from text (below).
    "a marked table lists as an unmarked one in JSON": Case(
        (Step(str(render(FTP, OWNER_A))),), desired_table(FTP)
    ),
}


@dataclass
class Target:
    runner: NftRunner
    namespace: str
    absent: str


@pytest.fixture(
    params=[
        "fake",
        pytest.param("libnftables", marks=pytest.mark.kernel),
        pytest.param("subprocess", marks=pytest.mark.kernel),
    ]
)
def target(
    request: pytest.FixtureRequest,
    lib_runner: LibNftablesRunner,
    sub_runner: SubprocessRunner,
) -> Iterator[Target]:
    if request.param == "fake":
        fake = FakeNftables()
        fake.add_namespace("main")
        yield Target(fake, "main", "absent")
        return
    netns: NamespaceFactory = request.getfixturevalue("netns")
    runner: NftRunner = lib_runner if request.param == "libnftables" else sub_runner
    yield Target(runner, netns.create("main"), netns.name("absent"))


def play(target: Target, case: Case) -> str:
    """Runs the case's steps, checking each outcome; returns the final ruleset JSON."""
    for number, step in enumerate(case.steps):
        namespace = target.absent if step.absent else target.namespace
        outcome: type[NftError] | None = None
        try:
            target.runner.run(namespace, step.commands, json=step.json, dry_run=step.dry_run)
        except NftError as exc:
            outcome = type(exc)
            message = exc.message
        else:
            message = "ok"
        assert message, "an NftError must carry nft's message"
        assert outcome is step.error, f"step {number}: {step.commands!r}"
    return target.runner.run(target.namespace, "list ruleset", json=True)


@pytest.mark.parametrize("name", CASES)
def test_golden_case(target: Target, name: str) -> None:
    case = CASES[name]
    ruleset = play(target, case)
    assert parse_table(ruleset) == case.table
    if not isinstance(target.runner, FakeNftables):
        fake = FakeNftables()
        fake.add_namespace("main")
        fake_ruleset = play(Target(fake, "main", "absent"), case)
        assert normalized_ruleset(ruleset) == normalized_ruleset(fake_ruleset)


KINDS = [(spec.name, protocol) for spec in KERNEL_HELPERS for protocol in sorted(spec.protocols)]
assignment_lists = st.lists(
    st.builds(
        lambda kind, port, direction: Assignment(kind[1], port, kind[0], direction),
        st.sampled_from(KINDS),
        st.integers(1, 65535),
        st.sampled_from(list(Direction)),
    ),
    max_size=40,
    unique_by=lambda x: (x.protocol, x.port, x.direction),
)


@pytest.mark.kernel
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(assignments=assignment_lists)
def test_parse_render_round_trip_through_real_nft(
    netns: NamespaceFactory, lib_runner: LibNftablesRunner, assignments: list[Assignment]
) -> None:
    # One namespace for every example: each apply replaces the whole table.
    namespace = netns.name("rt")
    if namespace not in netns.created:
        netns.create("rt")
    backend = NftablesBackend(lib_runner)
    backend.apply(namespace, assignments)
    assert backend.read(namespace) == desired_table(assignments)


def test_deployment_identity_lives_and_dies_with_the_table(target: Target) -> None:
    """The table's comment names its deployment; nft never changes it in place (an `add table`
    with another comment is a no-op), so only a new table (the replace every apply does) carries
    another one; an unmarked table reads as owner None and an apply marks it."""
    ns = target.namespace
    mine = NftablesBackend(target.runner, owner=OWNER_A)
    theirs = NftablesBackend(target.runner, owner=OWNER_B)
    unmarked = NftablesBackend(target.runner)

    unmarked.apply(ns, FTP)  # as a cthm before identities wrote it
    assert mine.read(ns) == desired_table(FTP)
    assert mine.read(ns) != mine.desired(FTP), "an unmarked table differs: the next apply marks it"
    mine.apply(ns, FTP)
    assert mine.read(ns) == mine.desired(FTP) == desired_table(FTP, OWNER_A)
    assert theirs.read(ns) == desired_table(FTP, OWNER_A)  # any reader sees whose it is

    target.runner.run(ns, f'add table inet cthm {{ comment "cthm:{OWNER_B}"; }}\n')
    assert theirs.read(ns) == desired_table(FTP, OWNER_A), "nft keeps an existing comment"
    theirs.apply(ns, TFTP)
    assert mine.read(ns) == desired_table(TFTP, OWNER_B)
    text = target.runner.run(ns, "list table inet cthm")
    assert text.startswith(f'table inet cthm {{\n\tcomment "cthm:{OWNER_B}"\n')
    mine.apply(ns, [])
    assert mine.read(ns) == desired_table([], OWNER_A)
    assert mine.delete(ns) is True
    assert mine.read(ns) is None


@pytest.mark.parametrize("name", [FTP_SET, "output-Q.931-tcp"])
def test_list_set_json_is_shaped_as_nfts(target: Target, name: str) -> None:
    """`list set` (the read-back of a partial sync) answers as nft does; elements ascending."""
    q931 = [Assignment(TCP, 1720, "Q.931", OUT), Assignment(TCP, 11720, "Q.931", OUT)]
    target.runner.run(target.namespace, str(render([*FTP_990, *q931])))
    text = target.runner.run(target.namespace, f"list set inet cthm {name}", json=True)
    fake = FakeNftables()
    fake.add_namespace("main")
    fake.run("main", str(render([*FTP_990, *q931])))
    assert normalized_ruleset(text) == normalized_ruleset(
        fake.run("main", f"list set inet cthm {name}", json=True)
    )
    ports = [21, 990, 2121] if name == FTP_SET else [1720, 11720]
    assert json.loads(text)["nftables"][1]["set"]["elem"] == ports
