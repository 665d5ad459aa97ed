"""cthm's Neutron-compatible REST API: `create_app(settings, store)` builds it; nothing is
created at import time."""

from cthm.api.app import create_app
from cthm.api.principal import Principal

__all__ = ["Principal", "create_app"]
