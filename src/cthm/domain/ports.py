"""What the API is given by the agent of its host, as callables (create_app's arguments).

`cthm serve` wires them when its agent runs in the same process, so on the namespaces' host;
without an agent there (`--no-agent`, or the API on another host) the API goes without: the
kernel side is unknown, no agent is listed, and a namespace is checked only by the agent that
applies it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from cthm.domain.agent_status import AgentReport, RouterKernelState
from cthm.domain.models import Router

# Called on every request: the agents of this server, as they are now.
AgentsProvider = Callable[[], Sequence[AgentReport]]

# router id -> the agent's record, or None when the agent has not looked at the router yet.
KernelStateProvider = Callable[[str], RouterKernelState | None]

# How many connections and expectations a (kernel helper, protocol, port) has right now.
HelperUsageCounts = Callable[[str, str, int], dict[str, int]]
# namespace -> (counts, None) read now from the kernel, or (None, why they could not be read).
HelperUsageProvider = Callable[[str], tuple[HelperUsageCounts | None, str | None]]

# router id -> None: the agent reconciles the router in full soon (reads the whole table and the
# raw tables again), even though nothing desired changed.
ResyncRequester = Callable[[str], None]

# (namespace, the registered routers) -> None, or NamespaceRefused when the name leads to a
# kernel namespace the agent would refuse: a symlink, the host's or cthm's own namespace, or
# one another router has under another name. The routers are read only when needed (the
# namespace exists). A namespace that does not exist yet passes: it may be made later.
NamespaceCheck = Callable[[str, Callable[[], Iterable[Router]]], None]
