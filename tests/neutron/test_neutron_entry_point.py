"""The one line of configuration: Neutron's own extension manager, given `[agent] extensions =
cthm_conntrack_helper`, finds cthm's extension through the installed entry point."""

from __future__ import annotations

import pytest

pytest.importorskip("neutron")

from neutron.agent.l3 import l3_agent_extensions_manager
from neutron_lib.agent import l3_extension
from oslo_config import cfg

from cthm.neutron.extension import CthmConntrackHelperExtension


def _manager(extensions: list[str]) -> l3_agent_extensions_manager.L3AgentExtensionsManager:
    conf = cfg.ConfigOpts()  # not the global CONF: nothing leaks into other tests
    l3_agent_extensions_manager.register_opts(conf)
    conf(args=[], default_config_files=[])
    conf.set_override("extensions", extensions, "agent")
    return l3_agent_extensions_manager.L3AgentExtensionsManager(conf)


def test_the_l3_agent_loads_cthm_conntrack_helper_by_its_name() -> None:
    manager = _manager(["port_forwarding", "cthm_conntrack_helper"])
    assert manager.names() == ["port_forwarding", "cthm_conntrack_helper"]
    loaded = manager["cthm_conntrack_helper"].obj
    assert type(loaded) is CthmConntrackHelperExtension
    assert isinstance(loaded, l3_extension.L3AgentExtension)


def test_an_unknown_extension_name_is_not_ours() -> None:
    manager = _manager(["cthm_conntrack_helpers"])  # a typo loads nothing of cthm's
    assert manager.names() == []
