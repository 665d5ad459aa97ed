"""The registration-time namespace check the agent gives its API (domain.NamespaceCheck).

It looks at this host's /run/netns, so it is given to the API only where the agent runs in the
same process (`cthm serve`): refusing at registration what the agent would refuse anyway
saves a router that could never be applied. The agent checks again at every reconcile
(claims.NamespaceClaims), since namespaces come and go after registration.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from cthm.domain import NamespaceRefused, Router
from cthm.netfilter import NETNS_DIR, UnsafeNamespace, UnsafeValue, namespace_identity


def check_namespace(
    namespace: str, routers: Callable[[], Iterable[Router]], netns_dir: Path = NETNS_DIR
) -> None:
    """NamespaceRefused when `namespace` exists and is a symlink, the host's or cthm's own
    namespace, or the same kernel namespace as another router's under another name (a bind
    mount). A namespace that does not exist yet passes: routers may be registered before it is
    made. `routers` is read only when the namespace exists."""
    try:
        identity = namespace_identity(namespace, netns_dir)
    except UnsafeNamespace as exc:
        raise NamespaceRefused(namespace, exc.reason) from exc
    if identity is None:
        return
    for other in routers():
        try:
            same = namespace_identity(other.namespace, netns_dir) == identity
        except (UnsafeNamespace, UnsafeValue):
            continue
        if same:
            raise NamespaceRefused(
                namespace,
                f"it is the same kernel namespace ({identity}) as namespace {other.namespace} "
                f"of router {other.id}",
                other.id,
            )
