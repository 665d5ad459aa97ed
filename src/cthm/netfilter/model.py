"""What cthm's table holds, as values: helper objects, the kernel table read back, and the
fixed names of the layout, with the checks that keep every value safe to write into nft text.

Layout (one table per router namespace, owned by cthm alone):

    table inet cthm {
        comment "cthm:<deployment id>"
        ct helper ftp-tcp { type "ftp" protocol tcp; l3proto inet; }
        set ingress-ftp-tcp { type inet_service; elements = { 21, 2121 } }
        set output-ftp-tcp { type inet_service; elements = { 21 } }
        chain prerouting {
            type filter hook prerouting priority filter; policy accept;
            tcp dport @ingress-ftp-tcp ct helper set "ftp-tcp"
        }
        chain output {
            type filter hook output priority filter; policy accept;
            tcp dport @output-ftp-tcp ct helper set "ftp-tcp"
        }
    }

One named set of ports and one rule per (direction, helper object) in use (`set_name`), so a
change of bindings is an `add element` / `delete element` on a set (a partial sync) and the
per-packet cost does not grow with the number of bindings. nft 1.0.6 has no named map to `ct
helper` objects (`type inet_service : ct_helper` is an unknown datatype), hence one set per
helper. A set exists only while it has elements; a chain (ingress: prerouting, output: output)
only while its direction has sets; the helper objects are shared by both chains.

The previous layout (one anonymous map rule per protocol and direction,
`ct helper set tcp dport map { 21 : "ftp-tcp" }`) is read back as the same assignments plus
garbage (PREVIOUS_LAYOUT), so the next full apply rewrites it in one transaction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cthm.domain import (
    KERNEL_HELPERS,
    Assignment,
    Direction,
    InvalidInput,
    Protocol,
    validate_namespace,
)
from cthm.netfilter.errors import UnsafeValue

TABLE_FAMILY = "inet"
TABLE_NAME = "cthm"
# `ct helper set` only works after conntrack lookup (priority -200, in both hooks): `filter` (0)
# is after it; a chain at `raw` (-300) is accepted by nft but silently assigns nothing.
CHAIN_TYPE = "filter"
CHAIN_HOOK = "prerouting"
CHAIN_PRIORITY = 0
CHAIN_POLICY = "accept"
# `inet` asks the kernel for both the IPv4 and IPv6 helper; helpers with no IPv6 variant (irc,
# pptp, snmp, netbios-ns) are accepted with it (`ip6` fails) and read back as `ip`.
RENDERED_L3PROTO = "inet"
# The type of every port set: what `tcp dport` / `udp dport` compare with.
SET_TYPE = "inet_service"
# And its flags: none. The kernel then keeps a 2-byte key in its bitmap backend, whose insert
# walks every element already in the set (applying 1000 ports: 5.2 ms, measured; `flags
# dynamic`, a resizable hash, 2.1 ms). The hash was tried and given up: a listing right after
# an apply can race the hash's deferred resize, and a set dump spread over several netlink
# messages resumes by counting elements, so it may repeat or skip some (seen: "lists an element
# twice" in 2 of ~1,700 cold router syncs under load). The bitmap's walk follows a list in
# insertion order: a read-back verifies the kernel, not the timing of its rehash.
# nft 1.0.6 leaves set flags out of JSON: a set of either kind reads back the same.
SET_FLAGS = ""
PREVIOUS_LAYOUT = "map rule of the previous layout (rewritten by the next full sync)"

# The deployment identity every table or chain cthm writes carries: nftables' table comment and
# iptables' marker rule say `cthm:<deployment id>` (a uuid4 kept in the database). Plain words
# only: it goes into nft text and restore input.
OWNER_PREFIX = "cthm:"
_OWNER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# The kernel's helper names are at most 15 characters (NF_CT_HELPER_NAME_LEN 16 with NUL).
_HELPER_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,14}")
_IPV4_ONLY = frozenset(spec.name for spec in KERNEL_HELPERS if not spec.ipv6)


@dataclass(frozen=True, slots=True)
class ChainSpec:
    """One of cthm's base chains: where a direction's map rules live."""

    direction: Direction
    name: str
    hook: str
    type: str = CHAIN_TYPE
    priority: int = CHAIN_PRIORITY
    policy: str = CHAIN_POLICY


# In rendering order: a table with only ingress assignments is exactly the one-chain layout.
CHAINS: dict[Direction, ChainSpec] = {
    Direction.INGRESS: ChainSpec(Direction.INGRESS, "prerouting", CHAIN_HOOK),
    Direction.OUTPUT: ChainSpec(Direction.OUTPUT, "output", "output"),
}
CHAINS_BY_NAME: dict[str, ChainSpec] = {spec.name: spec for spec in CHAINS.values()}


def shown(value: object, limit: int = 40) -> str:
    """A value for an error message: bounded, and never failing (repr of a huge int raises)."""
    if isinstance(value, int) and not -(10**12) < value < 10**12:
        return "a huge integer"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def check_helper_type(value: object) -> str:
    if not isinstance(value, str) or not _HELPER_TYPE.fullmatch(value):
        raise UnsafeValue(
            f"helper type {shown(value)} is not 1-15 characters of letters, digits, '.', '_', "
            "'-' starting with a letter or digit"
        )
    return value


def check_protocol(value: object) -> Protocol:
    if not isinstance(value, Protocol):
        raise UnsafeValue(f"protocol {shown(value)} is not a Protocol")
    return value


def check_direction(value: object) -> Direction:
    if not isinstance(value, Direction) or value not in CHAINS:
        raise UnsafeValue(f"direction {shown(value)} is not a Direction cthm renders")
    return value


def check_port(value: object) -> int:
    # bool is an int; a port is not.
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise UnsafeValue(f"port {shown(value)} is not an integer in 1-65535")
    return value


def check_namespace(value: object) -> str:
    """A namespace name safe as a file name under /run/netns and as an argv word."""
    try:
        return validate_namespace(value)
    except InvalidInput as exc:
        raise UnsafeValue(f"namespace name {shown(value)} refused: {exc.reason}") from exc


def check_assignment(value: object) -> Assignment:
    if not isinstance(value, Assignment):
        raise UnsafeValue(f"{shown(value)} is not an Assignment")
    check_protocol(value.protocol)
    check_port(value.port)
    check_helper_type(value.helper)
    check_direction(value.direction)
    return value


# Assignments as tables hold them, one object per value (they are immutable), shared by the
# desired tables and every read-back: a read builds none it has seen (a dict lookup, not a
# frozen dataclass's __init__: ~0.7 us each), and comparing a read-back with the desired table
# finds the same objects (identity, not __eq__: ~0.4 us each). Emptied past its bound (then
# equal objects simply are not the same ones).
_SHARED: dict[tuple[Protocol, int, str, Direction], Assignment] = {}
_MAX_SHARED = 1 << 16


def shared_assignment(
    protocol: Protocol, port: int, helper: str, direction: Direction
) -> Assignment:
    """The one shared Assignment of these checked values (of exactly these types)."""
    key = (protocol, port, helper, direction)
    found = _SHARED.get(key)
    if found is None:
        if len(_SHARED) >= _MAX_SHARED:
            _SHARED.clear()
        found = _SHARED.setdefault(key, Assignment(protocol, port, helper, direction))
    return found


def shared_assignments(
    protocol: Protocol, ports: list[int], helper: str, direction: Direction
) -> list[Assignment]:
    """shared_assignment() of each port (a read-back's set of a thousand: no call a port)."""
    if len(_SHARED) + len(ports) > _MAX_SHARED:
        _SHARED.clear()
    get, setdefault = _SHARED.get, _SHARED.setdefault
    # (An Assignment is always true: `or` makes one only for a key not shared yet.)
    return [
        get(key := (protocol, port, helper, direction)) or setdefault(key, Assignment(*key))
        for port in ports
    ]


def share(assignment: Assignment) -> Assignment:
    """The shared Assignment equal to this checked one (it becomes that one if none is); one
    not exactly of the types a read-back holds (a subclass, a str for an enum) is not shared."""
    protocol, direction = assignment.protocol, assignment.direction
    if (
        type(assignment) is not Assignment
        or type(protocol) is not Protocol
        or type(direction) is not Direction
        or type(assignment.port) is not int
        or type(assignment.helper) is not str
    ):
        return assignment
    key = (protocol, assignment.port, assignment.helper, direction)
    found = _SHARED.get(key)
    if found is None:
        if len(_SHARED) >= _MAX_SHARED:
            _SHARED.clear()
        found = _SHARED.setdefault(key, assignment)
    return found


# Helper objects likewise, shared by desired tables and read-backs (a handful of values in any
# deployment): comparing a read-back's helpers with the desired ones finds the same objects.
_SHARED_HELPERS: dict[tuple[str, str, Protocol, str], HelperObject] = {}


def shared_helper(name: str, helper_type: str, protocol: Protocol, l3proto: str) -> HelperObject:
    """The one shared HelperObject of these values."""
    key = (name, helper_type, protocol, l3proto)
    found = _SHARED_HELPERS.get(key)
    if found is None:
        if len(_SHARED_HELPERS) >= 4096:
            _SHARED_HELPERS.clear()
        found = _SHARED_HELPERS.setdefault(key, HelperObject(*key))
    return found


def share_all(assignments: list[Assignment]) -> tuple[Assignment, ...]:
    """share() of each (a desired table's thousand: no call an assignment)."""
    if len(_SHARED) + len(assignments) > _MAX_SHARED:
        _SHARED.clear()
    get, setdefault = _SHARED.get, _SHARED.setdefault
    shared = []
    for a in assignments:
        protocol, port, helper, direction = a.protocol, a.port, a.helper, a.direction
        if (
            type(a) is Assignment
            and type(protocol) is Protocol
            and type(direction) is Direction
            and type(port) is int
            and type(helper) is str
        ):
            # (An Assignment is always true: `or` keeps `a` only for a key not shared yet.)
            key = (protocol, port, helper, direction)
            a = get(key) or setdefault(key, a)
        shared.append(a)
    return tuple(shared)


def check_owner(value: object) -> str:
    """A deployment id safe inside a quoted nft comment and an iptables comment match."""
    if not isinstance(value, str) or not _OWNER.fullmatch(value):
        raise UnsafeValue(
            f"deployment id {shown(value)} is not 1-64 letters, digits, '.', '_', '-' starting "
            "with a letter or digit"
        )
    return value


def owner_comment(owner: str) -> str:
    """The comment that marks kernel state as this deployment's: `cthm:<deployment id>`."""
    return OWNER_PREFIX + check_owner(owner)


def owner_from_comment(comment: object) -> str | None:
    """The deployment id a comment names; None for any other comment (not cthm's mark)."""
    if not isinstance(comment, str) or not comment.startswith(OWNER_PREFIX):
        return None
    owner = comment[len(OWNER_PREFIX) :]
    return owner if _OWNER.fullmatch(owner) else None


def helper_object_name(helper_type: str, protocol: Protocol) -> str:
    """The object's name, from its content: `add` of an existing name is a silent no-op in nft,
    so a name must never stand for two definitions.

    The kernel's name is kept verbatim ("Q.931-tcp", "RAS-udp"): nft 1.0.6 accepts dots and
    capitals in object names, and a verbatim name cannot collide the way a sanitized one could.
    """
    return f"{check_helper_type(helper_type)}-{check_protocol(protocol)}"


def set_name(direction: Direction, object_name: str) -> str:
    """The port set of one (direction, helper object): `ingress-ftp-tcp`, `output-Q.931-tcp`.

    Verbatim, like the object's name: nft 1.0.6 accepts these characters in set names and in
    `@name` references (checked on the kernel with `ingress-Q.931-tcp`, `output-netbios-ns-udp`,
    `ingress-RAS-udp`). Injective: a direction value has no '-', so the first '-' splits the
    name back into (direction, object name).
    """
    return f"{check_direction(direction).value}-{object_name}"


def expected_l3proto(helper_type: str) -> str:
    """What the kernel reports for an object cthm rendered with `l3proto inet`."""
    return "ip" if helper_type in _IPV4_ONLY else RENDERED_L3PROTO


@dataclass(frozen=True, slots=True, order=True)
class HelperObject:
    """A `ct helper` object: `name` refers to it from rules, `type` is the kernel helper."""

    name: str
    type: str
    protocol: Protocol
    l3proto: str


@dataclass(frozen=True, slots=True)
class KernelTable:
    """cthm's table as the kernel holds it (or as it must hold it after an apply).

    `garbage` describes, for people, anything in the table that cthm would not render (an
    extra rule or chain, a chain with the wrong hook/priority/policy, an empty chain, an
    unknown object); the next apply removes it. Two tables are equal when the kernel behaves
    the same for cthm and they carry the same deployment identity.

    `owner`: the deployment id the state is marked with (`cthm:<id>`), None when it carries none
    (written by a cthm before identities, or by hand): the orphan sweep deletes only state
    marked with its own deployment's id, and an apply marks (rewrites) a table that lacks it.
    """

    assignments: tuple[Assignment, ...]
    helpers: frozenset[HelperObject]
    garbage: tuple[str, ...] = ()
    owner: str | None = None

    @property
    def clean(self) -> bool:
        return not self.garbage
