"""cthm inside Neutron: the L3 agent extension `cthm_conntrack_helper` (issue 15).

The operator loads it with `[agent] extensions = cthm_conntrack_helper` in the L3 agent's
configuration: Neutron's API, server plugin and RPC stay as they are, cthm's agent does the
kernel side. The extension needs the `neutron` package (the `cthm[neutron]` extra); its names
are imported on first use, so `cthm status --neutron` reads the state files (state_file.py)
without loading Neutron.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cthm.neutron.config import register_opts
    from cthm.neutron.extension import CthmConntrackHelperExtension

__all__ = ["CthmConntrackHelperExtension", "register_opts"]


def __getattr__(name: str) -> Any:
    if name == "CthmConntrackHelperExtension":
        from cthm.neutron.extension import CthmConntrackHelperExtension

        return CthmConntrackHelperExtension
    if name == "register_opts":
        from cthm.neutron.config import register_opts

        return register_opts
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
