"""Small enumerations shared by every layer."""

from __future__ import annotations

from enum import StrEnum


class Protocol(StrEnum):
    TCP = "tcp"
    UDP = "udp"


class Status(StrEnum):
    """What the kernel holds: PENDING until an agent has verified it, then ACTIVE or ERROR."""

    PENDING = "PENDING"
    ACTIVE = "ACTIVE"
    ERROR = "ERROR"
