"""What the iptables backend owns in the `raw` table, as values: one chain per direction, and
what `iptables-save` showed of them (shared by iptables_render and iptables_parse).

    cthm-PREROUTING   jumped to from PREROUTING   ingress assignments; kept (possibly empty)
                                                  while cthm manages the router, like nftables'
                                                  table, so a router with no bindings reads back
                                                  as one and not as "nothing of ours"
    cthm-OUTPUT       jumped to from OUTPUT       output assignments; exists, with its jump,
                                                  only while output has assignments

Each chain's first rule marks whose it is (the deployment identity, as nftables' table comment):
`-A cthm-PREROUTING -m comment --comment "cthm:<deployment id>"`, a rule with no target (it
changes nothing for a packet); the jumps are not touched to mark them, so a jump's place in
PREROUTING/OUTPUT, which decides precedence, never moves for it.
"""

from __future__ import annotations

from dataclasses import dataclass

from cthm.domain import Assignment, Direction
from cthm.netfilter.model import owner_comment

TABLE = "raw"


@dataclass(frozen=True, slots=True)
class IptablesChain:
    """One of cthm's chains in `raw`, and the built-in chain that jumps to it."""

    direction: Direction
    name: str
    hook: str
    anchor: bool  # kept while the router is managed, even with no assignments

    @property
    def jump(self) -> str:
        """The one jump rule to this chain, as `iptables-save` prints it without `-A`."""
        return f"{self.hook} -j {self.name}"

    def marker(self, owner: str) -> str:
        """The identity rule heading this chain, as `iptables-save` prints it without `-A`."""
        return f'{self.name} -m comment --comment "{owner_comment(owner)}"'


INGRESS_CHAIN = IptablesChain(Direction.INGRESS, "cthm-PREROUTING", "PREROUTING", anchor=True)
OUTPUT_CHAIN = IptablesChain(Direction.OUTPUT, "cthm-OUTPUT", "OUTPUT", anchor=False)
CHAINS = (INGRESS_CHAIN, OUTPUT_CHAIN)
CHAIN_BY_NAME = {chain.name: chain for chain in CHAINS}
CHAIN_BY_DIRECTION = {chain.direction: chain for chain in CHAINS}


@dataclass(frozen=True, slots=True)
class SavedChain:
    """One of cthm's chains in one family's `raw` table, as iptables-save printed it.

    `assignments` are its rules' (sorted by protocol and port); `jumps` are the specs (save
    lines without `-A`) of all rules outside our chains that jump or go to it, in order; `owner`
    the deployment id its first rule marks it with (None: unmarked).
    """

    chain: IptablesChain
    present: bool
    assignments: tuple[Assignment, ...]
    jumps: tuple[str, ...]
    garbage: tuple[str, ...]
    owner: str | None = None

    @property
    def empty(self) -> bool:
        """Nothing of this chain's: neither the chain nor a jump to it."""
        return not self.present and not self.jumps

    def holds_exactly(self, assignments: tuple[Assignment, ...], owner: str | None = None) -> bool:
        """Whether the chain is exactly what rendering `assignments` (marked with `owner`)
        into it writes."""
        return (
            self.present
            and not self.garbage
            and self.owner == owner
            and self.jumps == (self.chain.jump,)
            and self.assignments == assignments
        )


@dataclass(frozen=True, slots=True)
class SavedTable:
    """cthm's chains in one family's `raw` table.

    `chains` follow CHAINS' order; `assignments` are all of theirs, sorted by (protocol, port,
    direction) as `desired_table` sorts them; `garbage` is every chain's.
    """

    chains: tuple[SavedChain, ...]
    assignments: tuple[Assignment, ...]
    garbage: tuple[str, ...]

    def chain(self, direction: Direction) -> SavedChain:
        for saved in self.chains:
            if saved.chain.direction is direction:
                return saved
        raise KeyError(direction)

    @property
    def present(self) -> bool:
        """The anchor chain (cthm-PREROUTING) exists."""
        return self.chains[0].present

    @property
    def empty(self) -> bool:
        """Nothing of cthm's in this family."""
        return all(saved.empty for saved in self.chains)

    @property
    def owners(self) -> frozenset[str | None]:
        """The identities its existing chains carry (None: a chain without a marker)."""
        return frozenset(saved.owner for saved in self.chains if saved.present)
