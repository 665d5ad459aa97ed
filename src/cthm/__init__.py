"""cthm: the conntrack helper manager."""

__version__ = "0.1.0"
