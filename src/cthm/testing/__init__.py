"""Test harness shipped with cthm: real network namespaces that a test owns and cleans up."""

from cthm.testing.netns import NamespaceFactory, netns_exists, run_in_namespace

__all__ = ["NamespaceFactory", "netns_exists", "run_in_namespace"]
