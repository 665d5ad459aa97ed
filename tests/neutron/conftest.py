"""Fixtures of tests/neutron: Neutron's L3 agent extension and cthm's, each driven by
cthm.testing.neutron's harness (Neutron's real RouterInfo, extension API, objects and RPC
callbacks; only oslo.messaging's transport is the in-process fake)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from cthm.testing import NamespaceFactory

if TYPE_CHECKING:
    from cthm.testing.neutron import L3AgentHarness


@pytest.fixture
def cthm_extension_class() -> type:
    pytest.importorskip("neutron")
    from cthm.neutron.extension import CthmConntrackHelperExtension

    return CthmConntrackHelperExtension


@pytest.fixture
def neutron_extension_class() -> type:
    pytest.importorskip("neutron")
    from neutron.agent.l3.extensions.conntrack_helper import ConntrackHelperAgentExtension

    extension: type = ConntrackHelperAgentExtension
    return extension


@pytest.fixture
def neutron_harness(
    netns: NamespaceFactory, tmp_path: Path
) -> Iterator[Callable[..., L3AgentHarness]]:
    """`make(extension_class, **kw)`: an L3AgentHarness (its state under tmp_path unless
    state_path is given); all are closed, their namespaces deleted, when the test ends. Depends
    on `netns` for its root check and the `kernel` marker; the harness names its namespaces as
    Neutron does (`qrouter-<uuid4>`) and deletes exactly those."""
    pytest.importorskip("neutron")
    from cthm.testing.neutron import L3AgentHarness

    made: list[L3AgentHarness] = []

    def make(extension_class: type, **kw: Any) -> L3AgentHarness:
        kw.setdefault("state_path", tmp_path / f"agent{len(made)}")
        harness = L3AgentHarness(extension_class, **kw)
        made.append(harness)
        return harness

    try:
        yield make
    finally:
        for harness in reversed(made):
            harness.close()
        left = [name for harness in made for name in harness.namespaces()]
        assert not left, f"the harness left namespaces {left}"
