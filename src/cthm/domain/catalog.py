"""The catalog of conntrack helpers the Linux kernel really has.

Names are the kernel's (`nf_conntrack_helper.name`), which nftables' `ct helper` objects and
iptables' `CT --helper` take verbatim. Neutron's `h323` is accepted as an alias that resolves
per protocol to the H.323 pair (RAS over udp, Q.931 over tcp).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from cthm.domain.errors import InvalidInput
from cthm.domain.types import Protocol


@dataclass(frozen=True, slots=True)
class HelperSpec:
    """One kernel helper: its name, the protocols it handles and what it needs to know."""

    name: str
    protocols: frozenset[Protocol]
    module: str
    default_port: int
    ipv6: bool
    high_risk: bool
    description: str


def _spec(
    name: str,
    protocols: str,
    module: str,
    port: int,
    description: str,
    *,
    ipv6: bool = True,
    high_risk: bool = False,
) -> HelperSpec:
    return HelperSpec(
        name=name,
        protocols=frozenset(Protocol(p) for p in protocols.split("+")),
        module=module,
        default_port=port,
        ipv6=ipv6,
        high_risk=high_risk,
        description=description,
    )


KERNEL_HELPERS: tuple[HelperSpec, ...] = (
    _spec("amanda", "udp", "nf_conntrack_amanda", 10080, "Amanda backup"),
    _spec("ftp", "tcp", "nf_conntrack_ftp", 21, "FTP (active and passive data connections)"),
    _spec("irc", "tcp", "nf_conntrack_irc", 6667, "IRC DCC", ipv6=False, high_risk=True),
    _spec("netbios-ns", "udp", "nf_conntrack_netbios_ns", 137, "NetBIOS name service", ipv6=False),
    _spec("pptp", "tcp", "nf_conntrack_pptp", 1723, "PPTP VPN (GRE)", ipv6=False),
    _spec("Q.931", "tcp", "nf_conntrack_h323", 1720, "H.323 call signalling", high_risk=True),
    _spec("RAS", "udp", "nf_conntrack_h323", 1719, "H.323 gatekeeper RAS", high_risk=True),
    _spec("sane", "tcp", "nf_conntrack_sane", 6566, "SANE network scanner"),
    _spec("sip", "tcp+udp", "nf_conntrack_sip", 5060, "SIP VoIP signalling", high_risk=True),
    _spec("snmp", "udp", "nf_conntrack_snmp", 161, "SNMP", ipv6=False),
    _spec("tftp", "udp", "nf_conntrack_tftp", 69, "TFTP"),
)

# Neutron's spelling: one name for the H.323 pair, resolved by protocol.
ALIASES: Mapping[str, Mapping[Protocol, str]] = {
    "h323": {Protocol.UDP: "RAS", Protocol.TCP: "Q.931"},
}

# What Neutron's default allow-list offers that the kernel does not have.
_KNOWN_IMPOSSIBLE: Mapping[tuple[str, Protocol], str] = {
    ("amanda", Protocol.TCP): "the kernel's amanda helper handles only udp",
}


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """One (helper, protocol) pair that may be bound, as the catalog endpoint shows it."""

    helper: str
    protocol: Protocol
    kernel_helper: str
    spec: HelperSpec


class HelperCatalog:
    """The helpers that may be bound on this deployment: the kernel's, narrowed by the operator."""

    def __init__(self, allowed: Iterable[str] | None = None) -> None:
        self._specs = {spec.name: spec for spec in KERNEL_HELPERS}
        self._allowed: frozenset[tuple[str, Protocol]] | None = None
        if allowed is not None:
            self._allowed = frozenset(self._parse_allow_entries(allowed))

    def _parse_allow_entries(self, entries: Iterable[str]) -> Iterator[tuple[str, Protocol]]:
        """Entries are `helper` (every protocol it supports) or `helper:protocol`."""
        for raw in entries:
            name, _, proto_text = raw.strip().partition(":")
            protocols: list[Protocol]
            if proto_text:
                protocols = [parse_protocol(proto_text, field="allowed_helpers")]
            elif name in ALIASES:
                protocols = list(ALIASES[name])
            elif name in self._specs:
                protocols = sorted(self._specs[name].protocols)
            else:
                raise InvalidInput(f"unknown helper {_shown(name)}", field="allowed_helpers")
            for protocol in protocols:
                self._resolve_kernel(name, protocol)  # refuses what the kernel lacks
                yield name, protocol

    def _resolve_kernel(self, helper: str, protocol: Protocol) -> HelperSpec:
        if helper in ALIASES:
            target = ALIASES[helper].get(protocol)
            if target is None:
                raise InvalidInput(f"helper {helper} does not support {protocol}", field="helper")
            return self._specs[target]
        spec = self._specs.get(helper)
        if spec is None:
            known = ", ".join(sorted([*self._specs, *ALIASES]))
            raise InvalidInput(
                f"unknown helper {_shown(helper)}; the kernel has: {known}", field="helper"
            )
        if protocol not in spec.protocols:
            reason = _KNOWN_IMPOSSIBLE.get((helper, protocol))
            supported = "+".join(sorted(spec.protocols))
            raise InvalidInput(
                reason or f"helper {helper} does not support {protocol} (only {supported})",
                field="helper",
            )
        return spec

    def resolve(self, helper: str, protocol: Protocol) -> HelperSpec:
        """The kernel helper a binding of (helper, protocol) uses; InvalidInput if none may."""
        spec = self._resolve_kernel(helper, protocol)
        if self._allowed is not None and (helper, protocol) not in self._allowed:
            allowed = ", ".join(f"{h}/{p}" for h, p in sorted(self._allowed))
            raise InvalidInput(
                f"helper {helper} over {protocol} is not allowed on this deployment "
                f"(allowed: {allowed or 'none'})",
                field="helper",
            )
        return spec

    def entries(self) -> list[CatalogEntry]:
        """Every (helper, protocol) pair that may be bound, aliases included, sorted."""
        pairs: list[tuple[str, Protocol]] = []
        for spec in KERNEL_HELPERS:
            pairs.extend((spec.name, p) for p in spec.protocols)
        for alias, targets in ALIASES.items():
            pairs.extend((alias, p) for p in targets)
        result = []
        for helper, protocol in sorted(pairs, key=lambda hp: (hp[0].lower(), hp[1])):
            if self._allowed is not None and (helper, protocol) not in self._allowed:
                continue
            spec = self._resolve_kernel(helper, protocol)
            result.append(CatalogEntry(helper, protocol, spec.name, spec))
        return result

    @property
    def kernel_helpers(self) -> tuple[HelperSpec, ...]:
        return KERNEL_HELPERS


def parse_protocol(value: str, field: str = "protocol") -> Protocol:
    try:
        return Protocol(value)
    except ValueError:
        raise InvalidInput(
            f"{_shown(value)} is not a supported protocol (tcp or udp)", field=field
        ) from None


def _shown(value: str, limit: int = 40) -> str:
    """A user value quoted for a message: control characters escaped, length capped."""
    text = repr(value[:limit])
    return text + ("..." if len(value) > limit else "")
