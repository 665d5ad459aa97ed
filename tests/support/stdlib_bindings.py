"""Undo what importing Neutron does to the standard library's package attributes.

Neutron's modules import eventlet's green copies of stdlib modules (eventlet.green.BaseHTTPServer
and friends). eventlet builds them by re-importing the stdlib module under its real name, which
leaves the real package's attribute bound to the green copy: after `import neutron.objects...`,
`http.server` (the attribute of the `http` package) is eventlet's module while
sys.modules["http.server"] is still the real one. A test that says `http.server.ThreadingHTTPServer`
then gets an eventlet lock in a real thread and hangs in `shutdown()` (seen in CI: a worker that
had collected tests/neutron hung in tests/cli). Every test worker collects tests/neutron, so the
suite puts the attributes back before each test.
"""

from __future__ import annotations

import sys
import sysconfig
from types import ModuleType

_STDLIB = sysconfig.get_paths()["stdlib"]


def restore_stdlib_bindings() -> list[str]:
    """Rebinds every stdlib package attribute naming a submodule to sys.modules' module of that
    name; returns the names it rebound."""
    if "eventlet" not in sys.modules:
        return []  # nothing can have done it
    rebound = []
    for name, module in list(sys.modules.items()):
        parent_name, _, child = name.rpartition(".")
        if not parent_name or not isinstance(module, ModuleType):
            continue
        parent = sys.modules.get(parent_name)
        bound = getattr(parent, child, None)
        if (
            isinstance(bound, ModuleType)
            and bound is not module
            and str(getattr(parent, "__file__", "") or "").startswith(_STDLIB)
        ):
            setattr(parent, child, module)
            rebound.append(name)
    return rebound
