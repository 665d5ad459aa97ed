"""Extra names under /run/netns for a test (bind mounts of namespace files, symlinks), each
made with the test's NamespaceFactory prefix and removed by its exact path: the `names`
fixture (tests/conftest.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from cthm.netfilter.netns import NETNS_DIR
from cthm.testing import NamespaceFactory


class Names:
    """Bind mounts and symlinks under /run/netns with the test's prefix; removed exactly."""

    def __init__(self, netns: NamespaceFactory) -> None:
        self._netns = netns
        self._paths: set[Path] = set()

    def bind(self, label: str, source: str | Path) -> str:
        """`label` becomes another name of the namespace file `source` (`ip netns attach`)."""
        name = self._netns.name(label)
        path = NETNS_DIR / name
        path.touch(exist_ok=False)
        self._paths.add(path)
        subprocess.run(["mount", "--bind", str(source), str(path)], check=True, timeout=10)
        return name

    def symlink(self, label: str, target: str | Path) -> str:
        name = self._netns.name(label)
        path = NETNS_DIR / name
        path.symlink_to(target)
        self._paths.add(path)
        return name

    def remove(self, name: str) -> None:
        path = NETNS_DIR / name
        assert path in self._paths, f"{name} is not this test's"
        if not path.is_symlink():
            # Not lazily: nothing of the runner may hold the bind mount busy.
            done = subprocess.run(["umount", str(path)], capture_output=True, text=True, timeout=10)
            assert done.returncode == 0, done.stderr
        path.unlink(missing_ok=True)

    def cleanup(self) -> None:
        for path in self._paths:
            if path.is_symlink():
                path.unlink()
            elif path.exists():
                subprocess.run(["umount", str(path)], check=False, capture_output=True, timeout=10)
                path.unlink(missing_ok=True)
