"""Errors of the domain, grouped by what the caller can do about them.

CthmError
├── InvalidInput        the request is wrong: fix the input (HTTP 400)
│   └── MarkerNotFound  a list marker names no item the caller's listing holds
├── NotFound            the object does not exist, or is not visible to the caller (404)
│   ├── RouterNotFound
│   └── BindingNotFound
├── Conflict            the request clashes with stored state (409)
│   ├── OverQuota       a binding quota would be exceeded (cthm.domain.quota)
│   ├── BindingConflict
│   ├── RouterExists
│   ├── NamespaceInUse
│   └── NamespaceRefused
├── PreconditionFailed  the caller's view is stale (412)
└── Unavailable         a dependency is down; try again later (503)
"""

from __future__ import annotations


class CthmError(Exception):
    """Base of every error cthm reports to a user. `kind` is the Neutron-style type name."""

    kind = "CthmError"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(CthmError):
    kind = "InvalidInput"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(f"Invalid input for {field}: {message}" if field else message)
        self.field = field
        self.reason = message


class MarkerNotFound(InvalidInput):
    """A list marker that names no item of the listing the caller may see. The message does not
    repeat the id: every such id, unknown or another project's, gets the same answer."""

    def __init__(self, marker: str) -> None:
        super().__init__("does not match any item", field="marker")
        self.marker = marker


class NotFound(CthmError):
    kind = "NotFound"


class RouterNotFound(NotFound):
    kind = "RouterNotFound"

    def __init__(self, router_id: str) -> None:
        super().__init__(f"Router {router_id} could not be found")
        self.router_id = router_id


class BindingNotFound(NotFound):
    kind = "ConntrackHelperNotFound"

    def __init__(self, binding_id: str, router_id: str | None = None) -> None:
        where = f" on router {router_id}" if router_id else ""
        super().__init__(f"Conntrack helper {binding_id} could not be found{where}")
        self.binding_id = binding_id


class Conflict(CthmError):
    kind = "Conflict"


class BindingConflict(Conflict):
    kind = "ConntrackHelperConflict"

    def __init__(self, router_id: str, protocol: str, port: int, existing_id: str) -> None:
        super().__init__(
            f"Router {router_id} already has conntrack helper {existing_id} for "
            f"{protocol}/{port}: a connection gets one helper"
        )
        self.existing_id = existing_id


class RouterExists(Conflict):
    """A create naming the id of a router that exists (an id given by an admin, e.g. Neutron's
    own when adopting its routers)."""

    kind = "RouterExists"

    def __init__(self, router_id: str) -> None:
        super().__init__(f"Router {router_id} already exists")
        self.router_id = router_id


class NamespaceInUse(Conflict):
    kind = "NamespaceInUse"

    def __init__(self, namespace: str, router_id: str) -> None:
        super().__init__(f"Namespace {namespace} is already used by router {router_id}")
        self.router_id = router_id


class NamespaceRefused(Conflict):
    """The namespace name leads to a kernel namespace cthm must not use for this router (a
    symlink, the host's own, one another router already has under another name)."""

    def __init__(self, namespace: str, reason: str, router_id: str | None = None) -> None:
        super().__init__(f"Namespace {namespace} refused: {reason}")
        self.namespace = namespace
        self.router_id = router_id


class PreconditionFailed(CthmError):
    kind = "PreconditionFailed"


class Unavailable(CthmError):
    kind = "ServiceUnavailable"
