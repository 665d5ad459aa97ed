"""What the agent needs from the outside: a kernel backend and a source of desired state."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol as TypingProtocol

from cthm.domain import Assignment, HelperBinding, Protocol, Router, Status


class KernelState(TypingProtocol):
    """What a backend reads back; compared with `==` against the backend's desired form."""

    @property
    def assignments(self) -> tuple[Assignment, ...]: ...

    @property
    def garbage(self) -> tuple[str, ...]: ...

    @property
    def owner(self) -> str | None:
        """The deployment id the state is marked with; None: unmarked."""
        ...


class KernelBackend(TypingProtocol):
    @property
    def label(self) -> str:
        """Which backend this is, for logs and the operator ("nftables", "iptables-nft")."""
        ...

    @property
    def owner(self) -> str | None:
        """The deployment id everything this backend writes is marked with (None: unmarked)."""
        ...

    def read(self, namespace: str) -> KernelState | None: ...

    def desired(self, assignments: Sequence[Assignment]) -> KernelState | None: ...

    def apply(self, namespace: str, assignments: Sequence[Assignment]) -> None: ...

    def update(
        self, namespace: str, verified: KernelState, assignments: Sequence[Assignment]
    ) -> KernelState | None:
        """Partial sync: changes the table last verified (`verified`, as read() or update()
        returned it) to hold `assignments` without rewriting it, then reads back only what it
        touched; returns `verified` with that part replaced (compare it with desired()). None:
        the change needs a full apply (nothing written)."""
        ...

    def delete(self, namespace: str) -> bool: ...

    def available_helpers(
        self, namespace: str, kinds: Iterable[tuple[str, Protocol]]
    ) -> dict[tuple[str, Protocol], bool]: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class BindingReport:
    binding_id: str
    revision_number: int
    status: Status
    reason: str = ""


@dataclass(frozen=True, slots=True)
class BindingEdit:
    """How a reloaded state's bindings came from those of the state reload() was given (`base`,
    that very tuple): the bindings of `changed` ids taken out, `fresh` (read again, still
    there) put in. Lets the reconciler edit what it derived from `base` by the few changes
    instead of going over a thousand bindings."""

    base: tuple[HelperBinding, ...]
    changed: frozenset[str]
    fresh: tuple[HelperBinding, ...]


@dataclass(frozen=True, slots=True)
class DesiredRouter:
    router: Router
    bindings: tuple[HelperBinding, ...]
    # Rows that failed validation on the way out of the database: never rendered, marked ERROR.
    rejected: tuple[BindingReport, ...] = ()
    # Set by a reload that edited its `last` state (None: not known how the bindings came).
    edit: BindingEdit | None = field(default=None, compare=False, repr=False)


class InvalidDesiredState(Exception):
    """The stored router itself fails validation (e.g. a namespace edited in the database):
    the agent must not touch any namespace on its behalf."""

    def __init__(self, router_id: str, revision_number: int | None, reason: str) -> None:
        super().__init__(reason)
        self.router_id = router_id
        self.revision_number = revision_number
        self.reason = reason


@dataclass(frozen=True, slots=True)
class RouterReport:
    router_id: str
    revision_number: int
    status: Status
    reason: str = ""
    bindings: tuple[BindingReport, ...] = field(default=())
    # False: the router's status and reason are the ones its desired state was read with (only
    # bindings changed); a source may then leave the router's row unwritten.
    router_changed: bool = True


class DesiredStateSource(TypingProtocol):
    def load(self, router_id: str) -> DesiredRouter | None: ...

    def reload(self, router_id: str, last: DesiredRouter) -> DesiredRouter | None:
        """load(), where the source may reuse what `last` (a load() of the same router) holds
        of rows its store says have not changed since (a router of a thousand bindings is not
        read again for one change). Rows changed behind the store's back are seen by load()."""
        ...

    def load_all(self) -> dict[str, DesiredRouter | InvalidDesiredState]:
        """Every router's desired state (its refusal, for one that fails validation), read at
        once: the cold sync and the periodic resync, not a load() per router."""
        ...

    def router_ids(self) -> list[str]: ...

    def tombstones(self) -> dict[str, str]: ...

    def clear_tombstone(self, router_id: str) -> None: ...

    def report(self, report: RouterReport) -> None: ...
