"""Which backend programs this node's kernel, and building it: one decision shared by the agent
inside `cthm serve` and a node agent (`cthm agent run`).

The decision looks (read-only) at the node only where the configuration leaves something to
decide: the backend (auto), or the iptables flavour ("default"). The namespaces it looks at are
the routers' that exist here: the store's for `cthm serve`, the ones discovered on the host for
a node agent. Everything the backends write is marked with the deployment's identity.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cthm.agent import KernelBackend
from cthm.cli.errors import ServiceError, ServiceSettingError
from cthm.netfilter import (
    NETNS_DIR,
    BackendChoice,
    BackendUnavailable,
    IptablesBackend,
    LegacyGuard,
    LibNftablesRunner,
    NftablesBackend,
    NftRunner,
    SyncProcesses,
    UnsafeValue,
    check_owner,
    decide,
    default_process_count,
    make_usable_runner,
    namespaces_to_observe,
    observe,
)


@dataclass(frozen=True)
class BackendSettings:
    """The three settings the choice depends on (Settings' fields of the same names)."""

    backend: str = "nftables"
    iptables_flavour: str = "default"
    nft_backend: str = "auto"
    # Kernel-worker processes for the nftables backend's full syncs (None: the machine's
    # default, sync_processes.default_process_count(); 0: none).
    kernel_processes: int | None = None


@dataclass
class PreparedBackends:
    """The backend in use, the retired ones (their rules go once ours are verified: a switch
    migrates the node's routers), the choice, and the nftables runner the backend in use keeps
    open (None unless it is nftables), for reading iptables-nft's raw tables in-process."""

    choice: BackendChoice
    backend: KernelBackend
    retired: tuple[KernelBackend, ...] = ()
    nft: NftRunner | None = field(default=None, repr=False)

    def close(self) -> None:
        """Closes every backend (the runner with the nftables one). Idempotent."""
        for backend in (self.backend, *self.retired):
            backend.close()


def nftables_runner(nft_backend: str) -> tuple[NftRunner | None, str]:
    """The nftables runner, or None and why when nftables cannot be used here."""
    try:
        return make_usable_runner(nft_backend), ""
    except OSError as exc:  # LibraryUnavailable, NftablesUnavailable
        return None, str(exc)


def choose_backend(
    settings: BackendSettings,
    runner: NftRunner | None,
    claimed: Callable[[], Iterable[str]],
    *,
    netns_dir: Path = NETNS_DIR,
) -> BackendChoice:
    """The backend for `settings` on this node. claimed: the routers' namespaces, read only
    when the node must be looked at (a generator is closed after use: the caller's store read
    ends). ServiceSettingError when the configured backend cannot be used."""
    namespaces: tuple[str, ...] = ()
    scope = "router namespaces"
    if settings.backend == "auto" or (
        settings.backend == "iptables" and settings.iptables_flavour == "default"
    ):
        names = claimed()
        try:
            namespaces, scope = namespaces_to_observe(names, netns_dir=netns_dir)
        finally:
            if isinstance(names, Generator):
                names.close()
    observation = observe(namespaces, nft=runner, scope=scope, netns_dir=netns_dir)
    try:
        return decide(observation, backend=settings.backend, flavour=settings.iptables_flavour)
    except BackendUnavailable as exc:
        raise ServiceSettingError(exc.message) from exc


def build_backends(
    choice: BackendChoice,
    runner: NftRunner | None,
    owner: str,
    *,
    nft_backend: str,
    kernel_processes: int | None = 0,
    netns_dir: Path = NETNS_DIR,
) -> tuple[KernelBackend, tuple[KernelBackend, ...]]:
    """The backend in use, and the retired ones. The runner goes to the nftables backend, or is
    closed when nothing needs it. The caller checked that nftables has a runner when chosen.
    kernel_processes: worker processes for the nftables backend in use (with the libnftables
    runner; None: the machine's default)."""

    def iptables(flavour: str) -> KernelBackend:
        backend = IptablesBackend(nft_backend, flavour=flavour, owner=owner)
        return LegacyGuard(backend) if choice.uses_legacy_tables(flavour) else backend

    nftables = NftablesBackend(runner, owner=owner) if runner is not None else None
    retired = [iptables(flavour) for flavour in choice.retired_flavours]
    if choice.backend == "nftables":
        assert nftables is not None  # checked by the caller
        count = default_process_count() if kernel_processes is None else kernel_processes
        if count and isinstance(nftables.runner, LibNftablesRunner):
            processes = SyncProcesses(count, owner=owner, netns_dir=netns_dir)
            nftables = NftablesBackend(nftables.runner, owner=owner, processes=processes)
        return nftables, tuple(retired)
    if nftables is not None:
        if choice.retire_nftables:
            retired.insert(0, nftables)
        else:
            nftables.close()
    return iptables(choice.flavour), tuple(retired)


def prepare_backends(
    settings: BackendSettings,
    claimed: Callable[[], Iterable[str]],
    owner: Callable[[], str],
    *,
    netns_dir: Path = NETNS_DIR,
) -> PreparedBackends:
    """Chooses and builds the backends; nothing is written to the kernel. owner: the
    deployment identity, asked for once the choice is made (ServiceError if unusable).
    ServiceSettingError / ServiceError when it cannot be done; nothing is left open then."""
    runner, problem = nftables_runner(settings.nft_backend)
    built = False
    try:
        choice = choose_backend(settings, runner, claimed, netns_dir=netns_dir)
        if choice.backend == "nftables" and runner is None:
            raise ServiceError(f"cannot program nftables: {problem}")
        backend, retired = build_backends(
            choice,
            runner,
            owner(),
            nft_backend=settings.nft_backend,
            kernel_processes=settings.kernel_processes,
            netns_dir=netns_dir,
        )
        built = True
    finally:
        if runner is not None and not built:
            runner.close()
    # Only while the nftables backend keeps the runner open (iptables reads with iptables-save).
    nft = runner if choice.backend == "nftables" else None
    return PreparedBackends(choice, backend, retired, nft)


def check_identity(deployment: str, *, whose: str = "the database's") -> str:
    """The deployment identity, checked before anything is marked with it in the kernel."""
    try:
        return check_owner(deployment)
    except UnsafeValue as exc:  # the row edited by hand: never written into the kernel
        raise ServiceError(f"{whose} deployment identity is unusable: {exc}") from exc


def choice_info(choice: BackendChoice) -> dict[str, Any]:
    """The choice as an agent reports it (GET /v2.0/agents configurations)."""
    iptables = choice.backend == "iptables"
    return {
        "backend": choice.backend,
        "chosen_by": "auto" if choice.auto else "configuration",
        "reason": choice.reason,
        "iptables_flavour": choice.flavour if iptables else None,
        "iptables_flavour_reason": (choice.flavour_reason or None) if iptables else None,
        "retired_backends": list(choice.retired_labels),
    }
