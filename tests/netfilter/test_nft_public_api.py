"""The public surface of cthm.netfilter is exactly what the rest of cthm codes against (the
agent, the CLI): no module outside the package imports one of its internal modules (also an
import-linter contract, .importlinter)."""

from __future__ import annotations

import ast
import subprocess
import sys
import types
from pathlib import Path

import cthm
import cthm.netfilter

EXPECTED = {
    "IPTABLES_FLAVOURS",
    "NETNS_DIR",
    "RUNNER_KINDS",
    "TABLE_FAMILY",
    "TABLE_NAME",
    "BackendChoice",
    "BackendUnavailable",
    "FakeNftables",
    "SyncProcesses",
    "default_process_count",
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
    "Transaction",
    "UnsafeNamespace",
    "UnsafeValue",
    "check_owner",
    "decide",
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
        UnsafeNamespace,
        UnsafeValue,
    )

    for cls in (NftNotFound, NftExists, NftBusy, NftOther, NamespaceNotFound, UnsafeNamespace):
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


def test_nothing_outside_the_package_imports_its_internals() -> None:
    package = Path(cthm.__file__).parent
    found = []
    for path in sorted(package.rglob("*.py")):
        if path.is_relative_to(package / "netfilter"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            found += [
                f"{path.relative_to(package)}:{node.lineno}: {name}"
                for name in names
                if name.startswith("cthm.netfilter.")
            ]
    assert found == []
