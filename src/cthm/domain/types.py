"""Small enumerations shared by every layer."""

from __future__ import annotations

from enum import StrEnum


class Protocol(StrEnum):
    TCP = "tcp"
    UDP = "udp"


class Direction(StrEnum):
    """Which traffic a binding's helper watches, named for the netfilter hook it runs in.

    INGRESS (PREROUTING, Neutron's only choice): connections arriving at the router, forwarded
    or addressed to it. OUTPUT: connections the router namespace itself originates.
    """

    INGRESS = "ingress"
    OUTPUT = "output"


class Status(StrEnum):
    """What the kernel holds: PENDING until an agent has verified it, then ACTIVE or ERROR."""

    PENDING = "PENDING"
    ACTIVE = "ACTIVE"
    ERROR = "ERROR"
