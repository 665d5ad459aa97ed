"""cthm's Neutron-compatible REST API: `create_app(settings, store)` builds it; nothing is
created at import time."""

from cthm.api.app import begin_shutdown, create_app
from cthm.api.principal import Principal

__all__ = ["Principal", "begin_shutdown", "create_app"]
