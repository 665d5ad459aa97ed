"""Namespace discovery with real inotify, on a temporary directory standing for /run/netns."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cthm.agent.discovery import NamespaceWatcher, list_namespaces

QUICK = 0.5  # seconds a change may take to be reported (the poll is slowed far beyond it)


class Seen:
    """Every list on_change was called with, and a way to wait for one."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self._cond = threading.Condition()

    def __call__(self, names: list[str]) -> None:
        with self._cond:
            self.calls.append(names)
            self._cond.notify_all()

    def wait_for(self, expected: list[str], timeout: float = QUICK) -> float:
        """Seconds it took until the last report was `expected`; fails after `timeout`."""
        start = time.monotonic()
        with self._cond:
            ok = self._cond.wait_for(
                lambda: bool(self.calls) and self.calls[-1] == expected, timeout
            )
        assert ok, f"expected {expected} within {timeout}s, saw {self.calls}"
        return time.monotonic() - start


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[tuple[Path, Seen, NamespaceWatcher]]:
    netns = tmp_path / "netns"
    netns.mkdir()
    seen = Seen()
    # The safety-net look is an hour away: whatever arrives in time came from inotify.
    watcher = NamespaceWatcher(netns, seen, poll_interval=3600)
    watcher.start()
    try:
        yield netns, seen, watcher
    finally:
        assert watcher.stop(2.0)


def test_list_namespaces_keeps_valid_names_sorted(tmp_path: Path) -> None:
    for name in ("qrouter-b", "qrouter-a", "snat-1", ".hidden", "-dash", "bad name", "x" * 70):
        (tmp_path / name).touch()
    (tmp_path / "a-directory").mkdir()
    assert list_namespaces(tmp_path) == ["qrouter-a", "qrouter-b", "snat-1"]
    assert list_namespaces(tmp_path / "missing") == []


def test_create_delete_rename_are_reported_quickly(
    watched: tuple[Path, Seen, NamespaceWatcher],
) -> None:
    netns, seen, watcher = watched
    assert watcher.inotify
    (netns / "qrouter-1").touch()
    seen.wait_for(["qrouter-1"])
    (netns / "qrouter-2").touch()
    seen.wait_for(["qrouter-1", "qrouter-2"])
    (netns / "qrouter-1").unlink()
    seen.wait_for(["qrouter-2"])
    (netns / "qrouter-2").rename(netns / "qrouter-3")
    seen.wait_for(["qrouter-3"])
    # Moved out of, and into, the directory.
    (netns / "qrouter-3").rename(netns.parent / "elsewhere")
    seen.wait_for([])
    (netns.parent / "elsewhere").rename(netns / "snat-9")
    seen.wait_for(["snat-9"])
    assert watcher.namespaces == ["snat-9"]


def test_a_burst_is_one_report(watched: tuple[Path, Seen, NamespaceWatcher]) -> None:
    netns, seen, _ = watched
    names = [f"qrouter-{i:03d}" for i in range(50)]
    for name in names:
        (netns / name).touch()
    seen.wait_for(names)
    assert len(seen.calls) <= 3  # debounced, not one report per file


def test_invalid_names_are_ignored(watched: tuple[Path, Seen, NamespaceWatcher]) -> None:
    netns, seen, _ = watched
    (netns / ".tmp-file").touch()
    (netns / "bad name").touch()
    (netns / "subdir").mkdir()
    (netns / "qrouter-ok").touch()
    seen.wait_for(["qrouter-ok"])
    assert all(call in ([], ["qrouter-ok"]) for call in seen.calls)


def test_missing_directory_then_created(tmp_path: Path) -> None:
    netns = tmp_path / "run" / "netns"
    netns.parent.mkdir()
    seen = Seen()
    watcher = NamespaceWatcher(netns, seen, poll_interval=3600)
    assert watcher.start() == []
    try:
        netns.mkdir()
        (netns / "qrouter-late").touch()
        seen.wait_for(["qrouter-late"])
        # Deleted with everything in it, then made again: still followed.
        (netns / "qrouter-late").unlink()
        netns.rmdir()
        seen.wait_for([])
        netns.mkdir()
        (netns / "qrouter-again").touch()
        seen.wait_for(["qrouter-again"])
    finally:
        assert watcher.stop(2.0)


def test_replaced_directory_is_found_by_the_periodic_look(tmp_path: Path) -> None:
    """A directory swapped under the watch (as a mount over /run/netns would hide it) is seen
    again at the next look, and followed by inotify from then on."""
    netns = tmp_path / "netns"
    netns.mkdir()
    seen = Seen()
    watcher = NamespaceWatcher(netns, seen, poll_interval=0.2)
    watcher.start()
    try:
        replacement = tmp_path / "replacement"
        replacement.mkdir()
        (replacement / "qrouter-r").touch()
        os.rename(netns, tmp_path / "old")
        os.rename(replacement, netns)
        seen.wait_for(["qrouter-r"], timeout=2.0)
        (netns / "qrouter-s").touch()
        seen.wait_for(["qrouter-r", "qrouter-s"])
    finally:
        assert watcher.stop(2.0)


def test_stop_is_prompt_and_leaves_no_thread(tmp_path: Path) -> None:
    watcher = NamespaceWatcher(tmp_path, lambda names: None, poll_interval=3600)
    watcher.start()
    start = time.monotonic()
    assert watcher.stop(5.0)
    assert time.monotonic() - start < 0.5
    assert not [t for t in threading.enumerate() if t.name == "cthm-agent-netns"]
