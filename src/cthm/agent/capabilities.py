"""Which kernel helpers this host really has, probed by dry-run transactions and cached.

Helper modules are kernel-wide, so one probe in any router namespace speaks for all of them.
A dry run changes nothing; it fails exactly when the kernel cannot create such a helper object.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from cthm.agent.ports import KernelBackend
from cthm.domain import Protocol

Kind = tuple[str, Protocol]  # (kernel helper name, protocol)


class HelperCapabilities:
    def __init__(
        self,
        backend: KernelBackend,
        *,
        ttl: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._backend = backend
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._known: dict[Kind, tuple[bool, float]] = {}

    def unavailable(self, namespace: str, kinds: Iterable[Kind]) -> set[Kind]:
        """The kinds the kernel lacks; probes (in `namespace`) those not known or stale."""
        wanted = set(kinds)
        now = self._clock()
        with self._lock:
            stale = {k for k in wanted if k not in self._known or self._known[k][1] <= now}
        if stale:
            probed = self._backend.available_helpers(namespace, sorted(stale))
            with self._lock:
                for kind in stale:
                    self._known[kind] = (probed.get(kind, False), now + self._ttl)
        with self._lock:
            return {k for k in wanted if not self._known[k][0]}

    def snapshot(self) -> dict[Kind, bool]:
        """What is known now (no probe); kinds never probed are absent."""
        with self._lock:
            return {kind: available for kind, (available, _) in self._known.items()}

    def invalidate(self) -> None:
        with self._lock:
            self._known.clear()
