"""cthm's kernel backends. nftables: render a router's assignments into one transaction on the
table `inet cthm` (which cthm alone owns in the router's namespace), parse the kernel's state
back, and run transactions inside namespaces (in-process with libnftables, or the nft binary),
plus an honest in-memory fake for tests above this layer. iptables: chains `cthm-PREROUTING` and
`cthm-OUTPUT` in the raw table (iptables.py; the legacy flavour behind `LegacyGuard`). For
`auto`, `observe` looks at the node (observation.py) and `decide` chooses, purely (detect.py).
Reading a namespace without changing it (inspect.py): `read_cthm` (cthm's table or chains),
`read_raw_tables` (every flavour's raw table, both families) and `find_shadows_in` (other
software's `-j CT` rules that shadow cthm's assignments; the judgement is foreign.py's).
Namespaces are entered only through netns.py (`namespace_identity`, `UnsafeNamespace`).

This module's names are the package's whole surface: the rest of cthm imports nothing else
from it (an import-linter contract, .importlinter).

Decisions (each checked against nft 1.0.6 on this kernel by tests/netfilter):
- Every apply (a full sync) replaces the table whole in one transaction (add; delete; define);
  `update` (a partial sync) adds and deletes set elements in one transaction and reads back
  only the sets it touched, or declines (None) when a set would appear or go.
- The table's comment `cthm:<deployment id>` says whose it is (nft keeps a table's comment for
  its lifetime; nft 1.0.6 leaves it out of JSON, so it is read from the text listing).
- No assignments -> an empty `table inet cthm` (no chain: no per-packet cost);
  `read()` then equals `desired_table([])`. `delete()` removes the table (router gone).
- One named port set and one rule per (direction, helper object) in use
  (`set ingress-ftp-tcp`, `tcp dport @ingress-ftp-tcp ct helper set "ftp-tcp"`) in a chain
  hooked at prerouting (ingress bindings) or output (output bindings), priority filter (after
  conntrack lookup); a set exists only while it has ports, a chain only while its direction
  has sets. A table of the previous layout (anonymous map rules) reads back with garbage, so
  the next full sync rewrites it atomically.
- Helper objects are named `<kernel type>-<protocol>` verbatim ("Q.931-tcp", "RAS-udp"):
  nft accepts dots and capitals, and the name is a function of the content.
- Objects are defined with `l3proto inet`; helpers without IPv6 read back as `ip`, which
  `desired_table` predicts from the catalog.
"""

from cthm.netfilter.backend import NftablesBackend
from cthm.netfilter.conntrack_usage import HelperUsage, read_usage
from cthm.netfilter.detect import BackendChoice, BackendUnavailable, Observation, decide
from cthm.netfilter.errors import (
    NamespaceNotFound,
    NamespaceNotPermitted,
    NftBusy,
    NftError,
    NftExists,
    NftNotFound,
    NftOther,
    UnsafeValue,
    translate_error,
)
from cthm.netfilter.factory import (
    RUNNER_KINDS,
    NftablesUnavailable,
    make_runner,
    make_usable_runner,
)
from cthm.netfilter.fake import FakeNftables, FakeRun, FakeUnsupported
from cthm.netfilter.foreign import ForeignRule, RawTable, Shadow, find_shadows
from cthm.netfilter.inspect import find_shadows_in, read_cthm, read_iptables, read_raw_tables
from cthm.netfilter.iptables import IPTABLES_FLAVOURS, IptablesBackend, LegacyGuard
from cthm.netfilter.libnftables import LibNftablesRunner, LibraryUnavailable
from cthm.netfilter.model import (
    TABLE_FAMILY,
    TABLE_NAME,
    HelperObject,
    KernelTable,
    check_owner,
    helper_object_name,
)
from cthm.netfilter.netns import NETNS_DIR, NamespaceId, UnsafeNamespace, namespace_identity
from cthm.netfilter.observation import namespaces_to_observe, observe
from cthm.netfilter.parse import parse_table
from cthm.netfilter.render import desired_table, render, render_delete, render_probe
from cthm.netfilter.runner import NftRunner
from cthm.netfilter.scratch import scratch_namespace
from cthm.netfilter.subprocess_runner import SubprocessRunner, run_in_namespace
from cthm.netfilter.sync_processes import SyncProcesses, default_process_count
from cthm.netfilter.transaction import Operation, Transaction

__all__ = [
    "IPTABLES_FLAVOURS",
    "NETNS_DIR",
    "RUNNER_KINDS",
    "TABLE_FAMILY",
    "TABLE_NAME",
    "BackendChoice",
    "BackendUnavailable",
    "FakeNftables",
    "FakeRun",
    "FakeUnsupported",
    "ForeignRule",
    "HelperObject",
    "HelperUsage",
    "IptablesBackend",
    "KernelTable",
    "LegacyGuard",
    "LibNftablesRunner",
    "LibraryUnavailable",
    "NamespaceId",
    "NamespaceNotFound",
    "NamespaceNotPermitted",
    "NftBusy",
    "NftError",
    "NftExists",
    "NftNotFound",
    "NftOther",
    "NftRunner",
    "NftablesBackend",
    "NftablesUnavailable",
    "Observation",
    "Operation",
    "RawTable",
    "Shadow",
    "SubprocessRunner",
    "SyncProcesses",
    "Transaction",
    "UnsafeNamespace",
    "UnsafeValue",
    "check_owner",
    "decide",
    "default_process_count",
    "desired_table",
    "find_shadows",
    "find_shadows_in",
    "helper_object_name",
    "make_runner",
    "make_usable_runner",
    "namespace_identity",
    "namespaces_to_observe",
    "observe",
    "parse_table",
    "read_cthm",
    "read_iptables",
    "read_raw_tables",
    "read_usage",
    "render",
    "render_delete",
    "render_probe",
    "run_in_namespace",
    "scratch_namespace",
    "translate_error",
]
