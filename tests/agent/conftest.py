"""Agent fixtures (shared code lives in agent_support)."""

from agent_support import world

__all__ = ["world"]
