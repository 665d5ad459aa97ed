#!/usr/bin/env python3
"""Which ports the `inet cthm` table's sets hold, transaction by transaction, as the kernel
announces them (the benchmarks' witness of "the kernel holds the rule", issue 14).

Run inside a network namespace (`ip netns exec NS python3 netlink_watch.py`). It joins the
nf_tables multicast group on a netlink socket, as `nft monitor` does, and reads the kernel's
notifications directly: nf_tables sends a transaction's notifications only once it committed,
ending with NEWGEN. For every transaction that changed what the table's sets hold it prints one
line: the CLOCK_MONOTONIC time (ns, time.perf_counter_ns() in the bench, the same clock) of the
read that brought the transaction's first notification, the generation, and the ports it added
and removed: `<ns> <generation> +30000,30001 -29999` ("-" alone: none). Ports removed with their
set or table (a full sync replacing the table) count as removed unless the same transaction
added them back. On a lost notification (ENOBUFS) it prints `<ns> overrun` and exits 1: the
bench's figure would be wrong.

Why not `nft monitor`: it is another process that decodes every notification through
libnftables and prints text, read by a thread of the bench competing with its HTTP client for
the GIL: ~0.5-0.8 ms after the kernel's commit. Here the time is taken at the socket read, in a
process that does nothing else. Standard library only: it runs under any python3.
"""

from __future__ import annotations

import errno
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NFNLGRP_NFTABLES = 7
SO_RCVBUFFORCE = 33
NFNL_SUBSYS_NFTABLES = 10
# nf_tables message types (linux/netfilter/nf_tables.h)
NEWTABLE, DELTABLE = 0, 2
NEWSET, DELSET = 9, 11
NEWSETELEM, DELSETELEM = 12, 14
NEWGEN = 15
NFPROTO_INET = 1
# attributes
TABLE_NAME = 1  # NFTA_TABLE_NAME
SET_TABLE, SET_NAME = 1, 2  # NFTA_SET_TABLE, NFTA_SET_NAME
ELEM_LIST_TABLE, ELEM_LIST_SET, ELEM_LIST_ELEMENTS = 1, 2, 3
LIST_ELEM = 1  # NFTA_LIST_ELEM
ELEM_KEY = 1  # NFTA_SET_ELEM_KEY
DATA_VALUE = 1  # NFTA_DATA_VALUE
GEN_ID = 1  # NFTA_GEN_ID
NLA_TYPE_MASK = 0x3FFF
NLMSG_HDR = struct.Struct("=IHHII")
NFGEN_HDR = struct.Struct("=BBH")
NLA_HDR = struct.Struct("=HH")

TABLE = b"cthm"


def attributes(data: bytes, start: int, end: int) -> dict[int, bytes]:
    """The netlink attributes in data[start:end] by type (the last of a repeated type wins)."""
    found: dict[int, bytes] = {}
    at = start
    while at + 4 <= end:
        length, kind = NLA_HDR.unpack_from(data, at)
        if length < 4:
            break
        found[kind & NLA_TYPE_MASK] = data[at + 4 : at + length]
        at += (length + 3) & ~3
    return found


def repeated(data: bytes) -> list[bytes]:
    """Every attribute's payload in `data` (a nested list such as NFTA_SET_ELEM_LIST_ELEMENTS)."""
    found = []
    at = 0
    while at + 4 <= len(data):
        length, _kind = NLA_HDR.unpack_from(data, at)
        if length < 4:
            break
        found.append(data[at + 4 : at + length])
        at += (length + 3) & ~3
    return found


def name(raw: bytes | None) -> bytes:
    return (raw or b"").rstrip(b"\0")


def element_ports(elements: bytes) -> list[int]:
    """The 2-byte keys (inet_service, network order) of a NFTA_SET_ELEM_LIST_ELEMENTS."""
    ports = []
    for element in repeated(elements):
        key = attributes(element, 0, len(element)).get(ELEM_KEY)
        if key is None:
            continue
        value = attributes(key, 0, len(key)).get(DATA_VALUE)
        if value is not None and len(value) == 2:
            ports.append(struct.unpack("!H", value)[0])
    return ports


class Sets:
    """What each set of the watched table holds, as far as the notifications told."""

    def __init__(self) -> None:
        self.held: dict[bytes, set[int]] = {}
        self.before: set[int] | None = None  # the ports held when the transaction began
        self.began_ns = 0

    def ports(self) -> set[int]:
        return set().union(*self.held.values()) if self.held else set()

    def begin(self, now_ns: int) -> None:
        if self.before is None:
            self.before = self.ports()
            self.began_ns = now_ns

    def message(
        self, kind: int, family: int, data: bytes, start: int, end: int, now_ns: int
    ) -> None:
        if family != NFPROTO_INET or kind not in (DELTABLE, NEWSET, DELSET, NEWSETELEM, DELSETELEM):
            return
        attrs = attributes(data, start, end)
        if kind == DELTABLE:
            if name(attrs.get(TABLE_NAME)) == TABLE:
                self.begin(now_ns)
                self.held.clear()
            return
        if kind in (NEWSET, DELSET):
            if name(attrs.get(SET_TABLE)) == TABLE:
                self.begin(now_ns)
                if kind == DELSET:
                    self.held.pop(name(attrs.get(SET_NAME)), None)
                else:
                    self.held.setdefault(name(attrs.get(SET_NAME)), set())
            return
        if name(attrs.get(ELEM_LIST_TABLE)) != TABLE:
            return
        self.begin(now_ns)
        ports = element_ports(attrs.get(ELEM_LIST_ELEMENTS, b""))
        held = self.held.setdefault(name(attrs.get(ELEM_LIST_SET)), set())
        if kind == NEWSETELEM:
            held.update(ports)
        else:
            held.difference_update(ports)

    def commit(self, generation: int) -> str | None:
        """The line for the transaction that just ended (None: it changed nothing here)."""
        if self.before is None:
            return None
        now = self.ports()
        added = sorted(now - self.before)
        removed = sorted(self.before - now)
        line = (
            f"{self.began_ns} {generation} "
            f"+{','.join(map(str, added))} -{','.join(map(str, removed))}"
        )
        self.before = None
        return line


def main() -> int:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)  # a full sync's burst
    sock.bind((0, 0))
    sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
    print("ready", flush=True)
    sets = Sets()
    while True:
        try:
            data = sock.recv(1 << 20)
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                print(f"{time.perf_counter_ns()} overrun", flush=True)
                return 1
            raise
        now_ns = time.perf_counter_ns()
        at = 0
        while at + NLMSG_HDR.size <= len(data):
            length, msg_type, _flags, _seq, _pid = NLMSG_HDR.unpack_from(data, at)
            if length < NLMSG_HDR.size:
                break
            if msg_type >> 8 == NFNL_SUBSYS_NFTABLES:
                family = NFGEN_HDR.unpack_from(data, at + NLMSG_HDR.size)[0]
                body = at + NLMSG_HDR.size + NFGEN_HDR.size
                kind = msg_type & 0xFF
                if kind == NEWGEN:
                    gen = attributes(data, body, at + length).get(GEN_ID, b"\0\0\0\0")
                    line = sets.commit(struct.unpack("!I", gen[:4])[0])
                    if line is not None:
                        print(line, flush=True)
                else:
                    sets.message(kind, family, data, body, at + length, now_ns)
            at += (length + 3) & ~3


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(0)
