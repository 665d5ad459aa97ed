"""cthm's kernel backends. nftables: render a router's assignments into one transaction on the
table `inet cthm` (which cthm alone owns in the router's namespace), parse the kernel's state
back, and run transactions inside namespaces (in-process with libnftables, or the nft binary),
plus an honest in-memory fake for tests above this layer. iptables: chains `cthm-PREROUTING` and
`cthm-OUTPUT` in the raw table (iptables.py); `detect.py` chooses between them for `auto`.
Other software's `-j CT` rules in the raw tables, and the assignments of cthm's they shadow:
`read_raw_tables` (raw_tables.py) and `find_shadows` (foreign.py).

Decisions (each checked against nft 1.0.6 on this kernel by tests/netfilter):
- Every apply replaces the table whole in one transaction (add; delete; define).
- The table's comment `cthm:<deployment id>` says whose it is (nft keeps a table's comment for
  its lifetime; nft 1.0.6 leaves it out of JSON, so it is read from the text listing).
- No assignments -> an empty `table inet cthm` (no chain: no per-packet cost);
  `read()` then equals `desired_table([])`. `delete()` removes the table (router gone).
- One anonymous map rule per protocol (`ct helper set tcp dport map { ... }`) in a chain
  hooked at prerouting (ingress bindings) or output (output bindings), priority filter (after
  conntrack lookup); a chain exists only while its direction has assignments.
- Helper objects are named `<kernel type>-<protocol>` verbatim ("Q.931-tcp", "RAS-udp"):
  nft accepts dots and capitals, and the name is a function of the content.
- Objects are defined with `l3proto inet`; helpers without IPv6 read back as `ip`, which
  `desired_table` predicts from the catalog.
"""

from cthm.netfilter.backend import NftablesBackend
from cthm.netfilter.errors import (
    NamespaceNotFound,
    NftBusy,
    NftError,
    NftExists,
    NftNotFound,
    NftOther,
    UnsafeValue,
    translate_error,
)
from cthm.netfilter.factory import RUNNER_KINDS, make_runner
from cthm.netfilter.fake import FakeNftables, FakeRun, FakeUnsupported
from cthm.netfilter.foreign import ForeignRule, RawTable, Shadow, find_shadows
from cthm.netfilter.iptables import IPTABLES_FLAVOURS, IptablesBackend
from cthm.netfilter.libnftables import LibNftablesRunner, LibraryUnavailable
from cthm.netfilter.model import (
    CHAIN_NAME,
    TABLE_FAMILY,
    TABLE_NAME,
    HelperObject,
    KernelTable,
    helper_object_name,
)
from cthm.netfilter.parse import parse_table
from cthm.netfilter.raw_tables import read_raw_tables
from cthm.netfilter.render import desired_table, render, render_delete, render_probe
from cthm.netfilter.runner import NftRunner
from cthm.netfilter.scratch import scratch_namespace
from cthm.netfilter.subprocess_runner import SubprocessRunner
from cthm.netfilter.transaction import Operation, Transaction

__all__ = [
    "CHAIN_NAME",
    "IPTABLES_FLAVOURS",
    "RUNNER_KINDS",
    "TABLE_FAMILY",
    "TABLE_NAME",
    "FakeNftables",
    "FakeRun",
    "FakeUnsupported",
    "ForeignRule",
    "HelperObject",
    "IptablesBackend",
    "KernelTable",
    "LibNftablesRunner",
    "LibraryUnavailable",
    "NamespaceNotFound",
    "NftBusy",
    "NftError",
    "NftExists",
    "NftNotFound",
    "NftOther",
    "NftRunner",
    "NftablesBackend",
    "Operation",
    "RawTable",
    "Shadow",
    "SubprocessRunner",
    "Transaction",
    "UnsafeValue",
    "desired_table",
    "find_shadows",
    "helper_object_name",
    "make_runner",
    "parse_table",
    "read_raw_tables",
    "render",
    "render_delete",
    "render_probe",
    "scratch_namespace",
    "translate_error",
]
