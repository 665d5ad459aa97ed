"""The text `nft list table inet cthm` shows for a table cthm rendered (issue 14): a full sync's
read-back compares the kernel's listing with it, and when they are equal the table read back IS
the desired one, without nft's JSON output and its parse (a router of 10: the text listing
~0.13 ms of nft's CPU, the JSON one ~0.27 plus ~0.12 of Python to parse it, measured).

The text is nft 1.0.6's (tables, objects, sets and chains as nft's table_print writes them;
set elements five to a line, as its calculate_delim does for port types), for exactly what
render() writes: helper objects, sets and chains each in render's order, which is the order the
kernel lists them in. Anything else in the table, any other nft version's layout, or a state
this text does not show makes the two differ: the caller then reads the JSON listing and parses
it as before (NftablesBackend._sync_here), and stops trying this when that parse finds the
desired table after all (the text was not this nft's)."""

from __future__ import annotations

from cthm.domain import Direction, Protocol
from cthm.netfilter.model import (
    CHAINS,
    SET_FLAGS,
    SET_TYPE,
    TABLE_FAMILY,
    TABLE_NAME,
    KernelTable,
    helper_object_name,
    owner_comment,
    set_name,
)

_PER_LINE = 5  # elements on a line of a port set's listing
_WRAP = ",\n\t\t\t     "


def _name_order(name: str) -> tuple[str, str]:
    return (name.casefold(), name)  # render's order of objects and sets (render._name_order)


def expected_listing(table: KernelTable) -> str | None:
    """What nft lists for `table` (a desired table: render's output for its assignments), or
    None when this module does not know (garbage, or a layout it does not cover)."""
    if table.garbage or SET_FLAGS:
        return None
    grouped: dict[tuple[Direction, str, Protocol], list[int]] = {}  # render's sets' ports
    for a in table.assignments:
        key = (a.direction, a.helper, a.protocol)
        ports = grouped.get(key)
        if ports is None:
            grouped[key] = [a.port]
        else:
            ports.append(a.port)
    by_set = {
        (direction, helper_object_name(helper, protocol), protocol): ports
        for (direction, helper, protocol), ports in grouped.items()
    }
    used = {key[1] for key in by_set}
    helpers = sorted(table.helpers, key=lambda h: _name_order(h.name))
    if {h.name for h in helpers} != used or len(helpers) != len(used):
        return None  # not a table render writes (a helper no rule uses, or one missing)
    blocks = [
        f'\tct helper {h.name} {{\n\t\ttype "{h.type}" protocol {h.protocol.value}\n'
        f"\t\tl3proto {h.l3proto}\n\t}}\n"
        for h in helpers
    ]
    sets = sorted(
        (
            (set_name(direction, helper), protocol, helper, direction, ports)
            for (direction, helper, protocol), ports in by_set.items()
        ),
        key=lambda item: _name_order(item[0]),
    )
    for name, _, _, _, ports in sets:
        ports.sort()  # the kernel lists a port set in order (nft sorts what it lists)
        lines = [
            ", ".join(map(str, ports[start : start + _PER_LINE]))
            for start in range(0, len(ports), _PER_LINE)
        ]
        elements = _WRAP.join(lines)
        blocks.append(
            f"\tset {name} {{\n\t\ttype {SET_TYPE}\n\t\telements = {{ {elements} }}\n\t}}\n"
        )
    for direction, spec in CHAINS.items():
        rules = "".join(
            f'\t\t{protocol.value} dport @{name} ct helper set "{helper}"\n'
            for name, protocol, helper, of, _ in sets
            if of is direction
        )
        if not rules:
            continue  # a chain only for a direction in use
        if spec.priority != 0:
            return None  # nft names other priorities in ways not covered here
        blocks.append(
            f"\tchain {spec.name} {{\n\t\ttype {spec.type} hook {spec.hook} priority filter; "
            f"policy {spec.policy};\n{rules}\t}}\n"
        )
    comment = f'\tcomment "{owner_comment(table.owner)}"\n' if table.owner is not None else ""
    return f"table {TABLE_FAMILY} {TABLE_NAME} {{\n{comment}" + "\n".join(blocks) + "}\n"
