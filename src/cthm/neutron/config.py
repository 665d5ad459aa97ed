"""The `[cthm]` section of the L3 agent's configuration (oslo.config).

The operator's whole configuration is `[agent] extensions = cthm_conntrack_helper`; these
options only change the defaults.
"""

from __future__ import annotations

from oslo_config import cfg

GROUP = "cthm"
BACKENDS = ("nftables", "iptables")

OPTS = [
    cfg.StrOpt(
        "backend",
        default="nftables",
        choices=BACKENDS,
        help="How cthm writes each router's helpers: one nftables table `inet cthm` per router "
        "namespace, or chains cthm-PREROUTING/cthm-OUTPUT in the iptables raw table.",
    ),
    cfg.IntOpt(
        "resync_interval",
        default=60,
        min=0,
        help="Seconds between full resyncs of every router (drift repair); 0 turns them off.",
    ),
    cfg.StrOpt(
        "state_path",
        default="$state_path/cthm",
        help="Directory of the per-router state files `cthm status --neutron` reads.",
    ),
    cfg.BoolOpt(
        "remove_neutron_rules",
        default=True,
        help="Once cthm's rules for a router are verified, remove Neutron's own "
        "neutron-l3-agent-cth* chains for the helpers cthm now manages (migration).",
    ),
    cfg.ListOpt(
        "takeover_namespaces",
        default=["qrouter-*", "snat-*"],
        help="At start, before any router is processed, the namespaces of this host (patterns "
        "over /run/netns) whose Neutron conntrack helper chains cthm copies into its own rules, "
        "so that no port is left without its helper when the L3 agent's first sync drops "
        "Neutron's chains. Empty: none.",
    ),
    cfg.IntOpt(
        "takeover_grace",
        default=600,
        min=0,
        help="Seconds after start after which cthm's rules are removed from a taken-over "
        "namespace whose router this agent was never given; 0: never removed.",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    """Registers `[cthm]` on `conf`; a second call is harmless."""
    conf.register_opts(OPTS, group=GROUP)


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """For oslo-config-generator."""
    return [(GROUP, list(OPTS))]
