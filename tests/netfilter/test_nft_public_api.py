"""The public surface of cthm.netfilter is exactly what the agent codes against."""

from __future__ import annotations

import subprocess
import sys
import types

import cthm.netfilter

EXPECTED = {
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
}


def test_exported_members() -> None:
    assert set(cthm.netfilter.__all__) == EXPECTED
    public = {
        name
        for name, value in vars(cthm.netfilter).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == EXPECTED


def test_error_tree() -> None:
    from cthm.netfilter import (
        NamespaceNotFound,
        NftBusy,
        NftError,
        NftExists,
        NftNotFound,
        NftOther,
        UnsafeValue,
    )

    for cls in (NftNotFound, NftExists, NftBusy, NftOther, NamespaceNotFound):
        assert issubclass(cls, NftError)
    assert not issubclass(UnsafeValue, NftError)
    assert issubclass(UnsafeValue, ValueError)


def test_importing_creates_nothing() -> None:
    """No library loaded, no thread started at import: only when a runner is made."""
    code = (
        "import threading, cthm.netfilter\n"
        "maps = open('/proc/self/maps').read()\n"
        "assert 'libnftables' not in maps, 'loaded at import'\n"
        "assert threading.active_count() == 1, threading.enumerate()\n"
        "runner = cthm.netfilter.make_runner('libnftables')\n"
        "assert 'libnftables' in open('/proc/self/maps').read()\n"
        "runner.close()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
