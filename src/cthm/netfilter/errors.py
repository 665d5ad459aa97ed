"""Errors of the nftables backend, grouped by what the caller can do about them.

NftError                 nft (or the kernel) refused or could not run a transaction; `.message`
│                        carries nft's own text
├── NftNotFound          something named does not exist (table, chain, object, helper type: ENOENT)
├── NftExists            something already exists (EEXIST), e.g. a duplicate map key
├── NftBusy              something is still in use (EBUSY), e.g. a helper object a rule references
├── NftOther             anything else: syntax, permissions, nft missing, timeout, odd output
├── NamespaceNotFound    the router's network namespace does not exist (yet)
└── NamespaceNotPermitted  it exists, but this process may not open or enter it (setns(2)
                         needs CAP_SYS_ADMIN): the namespace is not "gone", the process lacks
                         a capability

UnsafeValue (a ValueError, not an NftError) is a programming error: a value that must never
reach nft's text or argv (a port out of range, a helper or namespace name outside the safe
character set). Callers do not catch it; they fix the caller.

Every foreign failure (nft's stderr, libnftables' error buffer) is turned into this tree by
`translate_error`, and nowhere else.
"""

from __future__ import annotations

import errno
import re


class NftError(Exception):
    """nft refused or could not run a transaction. `message` is nft's text, unchanged."""

    def __init__(self, message: str, *, namespace: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.namespace = namespace


class NftNotFound(NftError):
    pass


class NftExists(NftError):
    pass


class NftBusy(NftError):
    pass


class NftOther(NftError):
    pass


class NamespaceNotFound(NftError):
    def __init__(self, namespace: str, detail: str = "") -> None:
        text = f"namespace {namespace} not found"
        super().__init__(f"{text} ({detail})" if detail else text, namespace=namespace)


class NamespaceNotPermitted(NftError):
    """EPERM/EACCES opening or entering the namespace: a missing capability, not a missing
    namespace (never taken as "gone": a tombstone is not cleared on it)."""

    def __init__(self, namespace: str, detail: str) -> None:
        super().__init__(
            f"cannot enter namespace {namespace}: {detail} (cthm needs CAP_SYS_ADMIN, "
            "besides CAP_NET_ADMIN, to enter network namespaces)",
            namespace=namespace,
        )


def is_permission(code: int | None) -> bool:
    """An errno that means "not allowed", not "not there"."""
    return code in (errno.EPERM, errno.EACCES)


class UnsafeValue(ValueError):
    """A value that must never reach nft: the caller is wrong, not the kernel."""


# strerror() texts as nft prints them (the runners force the C locale). Earliest one wins.
_ERRNO_CLASSES: tuple[tuple[str, type[NftError]], ...] = (
    ("No such file or directory", NftNotFound),
    ("File exists", NftExists),
    ("Device or resource busy", NftBusy),
)
_NO_NAMESPACE = re.compile(r'Cannot open network namespace "[^"]*": No such file or directory')


def translate_error(message: str, *, namespace: str) -> NftError:
    """The one place nft's failure text becomes an NftError; callers `raise ... from original`."""
    text = message.strip() or "nft failed without a message"
    if _NO_NAMESPACE.search(text):
        # `ip netns exec` lost a race with the namespace's deletion.
        return NamespaceNotFound(namespace)
    found: tuple[int, type[NftError]] | None = None
    for needle, cls in _ERRNO_CLASSES:
        position = text.find(needle)
        if position >= 0 and (found is None or position < found[0]):
            found = (position, cls)
    cls = found[1] if found else NftOther
    return cls(text, namespace=namespace)
